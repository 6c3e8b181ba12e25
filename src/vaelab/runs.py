"""What a run directory holds, read without loading its model: one row per run.

``describe`` is what ``vaelab runs`` lists and what ``vaelab sweep`` sums
over seeds: the settings that tell runs apart, how far training got (from the
checkpoint's epoch, so metrics written past a checkpoint that never came are
not counted), the last epoch's numbers, eval.json's, and a status:

- ``finished``: the checkpoint is at the config's last epoch;
- ``interrupted``: a checkpoint before that (``vaelab train --resume`` continues);
- ``training``: a process holds the run's lock now;
- ``broken``: a file the run needs is missing or unreadable; ``problem`` says
  which, in the one line any other command would have raised.

>>> describe("runs/demo")["status"], describe("runs/demo")["test_elbo"]
('finished', -101.3)
"""

from pathlib import Path

from vaelab import checkpoint
from vaelab.config import read_run_config
from vaelab.errors import VaelabError
from vaelab.fileio import read_json, read_jsonl
from vaelab.runlock import training_now

# metrics.jsonl's fields every run has; the others are the model's own scores
STANDARD = ("epoch", "train_elbo", "test_elbo", "train_seconds", "train_objective")
# eval.json's fields that describe the evaluation rather than score the model
_EVAL_SETTINGS = ("test_elbo", "test_log_likelihood", "iw_samples", "split", "binarize", "backend")
_EVAL_SETTINGS += ("num_images", "seconds", "count_confusion")


def is_run_dir(path) -> bool:
    """Whether `path` looks like a run directory (training wrote its config there)."""
    return (Path(path) / "config.json").is_file()


def find(roots) -> list[Path]:
    """Returns the run directories at or under each of `roots`, sorted, each once."""
    found = set()
    for root in map(Path, roots):
        if is_run_dir(root):
            found.add(root)
        if root.is_dir():
            found.update(p.parent for p in root.rglob("config.json") if p.is_file())
    return sorted(found)


def _scores(line: dict) -> dict:
    return {
        k: v
        for k, v in line.items()
        if k not in STANDARD and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def describe(run_dir) -> dict:
    """Returns a run's row: settings, progress, numbers and status (see the module's docstring)."""
    run_dir = Path(run_dir)
    row = {"run": str(run_dir), "status": "broken", "problem": None}
    try:
        config = read_run_config(run_dir)
    except VaelabError as e:
        row["problem"] = str(e)
        return row
    row.update(
        model=config.model,
        backend=config.backend,
        objective=config.elbo or "default",
        particles=config.particles,
        dataset=config.dataset,
        seed=config.seed,
        epochs_planned=config.epochs,
        epochs_done=0,
    )
    training = training_now(run_dir)
    try:
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        ckpt_path = run_dir / "checkpoint.pt"
        if ckpt_path.exists() or not training:
            ckpt = checkpoint.load(ckpt_path)
            row["epochs_done"] = ckpt["epoch"]
        metrics = [m for m in metrics if m.get("epoch", 0) <= row["epochs_done"]]
        evaluation = read_json(run_dir / "eval.json", default=None)
    except VaelabError as e:
        row["problem"] = str(e)
        if training:
            row["status"] = "training"
        return row
    last = metrics[-1] if metrics else {}
    row["test_elbo"] = last.get("test_elbo")
    row["train_seconds"] = sum(m.get("train_seconds", 0.0) for m in metrics)
    scores = _scores(last)
    if evaluation is not None:
        row["test_log_likelihood"] = evaluation.get("test_log_likelihood")
        row["iw_samples"] = evaluation.get("iw_samples")
        row["eval_split"] = evaluation.get("split")
        scores.update({k: v for k, v in _scores(evaluation).items() if k not in _EVAL_SETTINGS})
    row["scores"] = scores
    if training:
        row["status"] = "training"
    elif row["epochs_done"] >= config.epochs:
        row["status"] = "finished"
    else:
        row["status"] = "interrupted"
    return row
