"""What a run directory holds, read without loading its model: one row per run.

``describe`` is what ``vaelab runs`` lists and what ``vaelab sweep`` sums
over seeds: the settings that tell runs apart, how far training got (from the
checkpoint's epoch, so metrics written past a checkpoint that never came are
not counted), the last epoch's numbers, eval.json's, and a status:

- ``finished``: the checkpoint is at the config's last epoch;
- ``interrupted``: a checkpoint before that, or a ``--restarts`` run still in its
  starts (``vaelab train --resume`` continues);
- ``training``: a process holds the run's lock now;
- ``broken``: a file the run needs is missing or unreadable; ``problem`` says
  which, in the one line any other command would have raised.

A run trained with ``--restarts`` counts in its ``train_seconds`` the starts
it passed over, not only the chosen one's epochs, and its starts
(RUN/starts/start-I) are listed inside it, not as runs of their own, unless
asked for (``vaelab runs RUN/starts``).

>>> describe("runs/demo")["status"], describe("runs/demo")["test_elbo"]
('finished', -101.3)
"""

from pathlib import Path

from vaelab import checkpoint
from vaelab.config import read_run_config
from vaelab.errors import ConfigError, VaelabError
from vaelab.records import METRICS_FIELDS, is_number, read_evaluation, read_metrics
from vaelab.restarts import passed_over_seconds
from vaelab.runlock import training_now

# metrics.jsonl's fields every run has; the others are the model's own scores
STANDARD = (*METRICS_FIELDS, "train_objective")
# eval.json's fields that describe the evaluation rather than score the model
_EVAL_SETTINGS = ("test_elbo", "test_log_likelihood", "iw_samples", "split", "binarize", "backend")
_EVAL_SETTINGS += ("num_images", "seconds", "count_confusion")


def is_run_dir(path) -> bool:
    """Whether `path` looks like a run directory (training wrote its config there)."""
    return (Path(path) / "config.json").is_file()


def _run_of_start(path: Path) -> Path | None:
    """The --restarts run whose start `path` is (RUN/starts/start-I), or None."""
    run = path.parent.parent
    return run if path.parent.name == "starts" and is_run_dir(run) else None


def find(roots) -> list[Path]:
    """Returns the run directories at or under each of `roots`, sorted, each once.

    A restarted run's starts are left out where the run itself is found
    under the same root (its row counts them); a root named is always listed.
    """
    found = set()
    for root in map(Path, roots):
        under = {p.parent for p in root.rglob("config.json") if p.is_file()} if root.is_dir() else set()
        found.update(p for p in under if _run_of_start(p) not in under)
        if is_run_dir(root):
            found.add(root)
    return sorted(found)


def _scores(line: dict) -> dict:
    return {k: v for k, v in line.items() if k not in STANDARD and is_number(v)}


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
    if config.restarts > 1 and not (run_dir / "checkpoint.pt").exists() and (run_dir / "starts").is_dir():
        row["status"] = "training" if training else "interrupted"  # in its starts: --resume goes on
        return row
    if config.restarts > 1:  # the start that went on
        row["start"] = config.start
    try:
        metrics = read_metrics(run_dir / "metrics.jsonl")
        ckpt_path = run_dir / "checkpoint.pt"
        if ckpt_path.exists() or not training:
            ckpt = checkpoint.load(ckpt_path, mmap=True)  # the epoch alone: the weights stay on disk
            row["epochs_done"] = ckpt["epoch"]
        metrics = [m for m in metrics if m["epoch"] <= row["epochs_done"]]
        evaluation = read_evaluation(run_dir / "eval.json")
        passed_over = passed_over_seconds(run_dir)
    except VaelabError as e:
        row["problem"] = str(e)
        if training:
            row["status"] = "training"
        return row
    last = metrics[-1] if metrics else {}
    row["test_elbo"] = last.get("test_elbo")
    row["train_seconds"] = sum(m["train_seconds"] for m in metrics) + passed_over
    scores = _scores(last)
    if evaluation is not None:
        row["test_log_likelihood"] = evaluation.get("test_log_likelihood")
        row["iw_samples"] = evaluation.get("iw_samples")
        row["eval_split"] = evaluation.get("split")
        scores.update(
            {
                k: v
                for k, v in _scores(evaluation).items()
                if k not in _EVAL_SETTINGS and not k.startswith("gap_")
            }
        )
    row["scores"] = scores
    if training:
        row["status"] = "training"
    elif row["epochs_done"] >= config.epochs:
        row["status"] = "finished"
    else:
        row["status"] = "interrupted"
    return row


# --- the table of runs --------------------------------------------------------------------
COLUMNS = (
    "run", "model", "backend", "objective", "dataset", "epochs", "test ELBO", "log p(x)", "scores", "time",
    "status",
)  # fmt: skip


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    minutes = seconds / 60
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{minutes:.0f} min"
        if minutes < 120
        else f"{minutes / 60:.1f} h"
    )


def _fixed(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cells(row: dict) -> list[str]:
    """Returns a run's row as the strings of COLUMNS."""
    if "model" not in row:  # not even a config: only the problem can be said
        return [row["run"], "", "", "", "", "", "", "", "", "", f"broken: {row['problem']}"]
    ll = _fixed(row.get("test_log_likelihood"))
    if ll and row.get("iw_samples"):
        ll += f" (K={row['iw_samples']})"
    scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(row.get("scores", {}).items()))
    objective = row["objective"] + (f" K={row['particles']}" if row.get("particles", 1) > 1 else "")
    status = row["status"] + (f": {row['problem']}" if row.get("problem") else "")
    return [
        row["run"],
        row["model"],
        row["backend"],
        objective,
        row["dataset"],
        f"{row['epochs_done']}/{row['epochs_planned']}",
        _fixed(row.get("test_elbo")),
        ll,
        scores,
        _duration(row.get("train_seconds")),
        status,
    ]


def sort_rows(rows: list, field: str) -> list:
    """Returns `rows` sorted by `field` (a row's key or one of its scores); rows without it last."""

    def key(row):
        value = row.get("scores", {}).get(field, row.get(field))
        if value is None:
            return (2, 0, "")
        if isinstance(value, (int, float)):
            return (0, value, "")
        return (1, 0, str(value))

    known = set().union(*(set(r) | set(r.get("scores", {})) for r in rows)) if rows else set()
    if rows and field not in known:
        fields = ", ".join(sorted(k for k in known if k not in ("scores", "problem")))
        raise ConfigError(f"--sort {field!r}: no run has that field; the fields are {fields}")
    return sorted(rows, key=key)


def text_table(rows: list) -> str:
    """Returns the rows as an aligned plain-text table, COLUMNS as its header."""
    table = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    )


# --- the comparison page of existing runs -----------------------------------------------------
PICTURES = ("reconstructions.png", "samples.png", "elbo_curves.png")


def compare_runs(run_dirs, out) -> dict:
    """Writes OUT/compare.html, compare.md and compare.json for existing runs: nothing is trained.

    The page overlays the runs' test ELBO curves, tables them (:func:`cells`)
    and sets each run's pictures (RUN/plots/, drawn by ``vaelab plot``) side by
    side. A broken run is listed as broken, not dropped.
    """
    from vaelab import plots
    from vaelab.fileio import write_bytes, write_json

    out = Path(out)
    dirs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such run directory")
    rows = [describe(d) for d in dirs]
    if not any((d / "config.json").exists() for d in dirs):  # no run at all; a damaged run is a row
        raise ConfigError(f"{dirs[0]} is not a run directory (no config.json); compare takes run directories")
    names = _short_names(dirs)
    curves = {}
    for name, d, row in zip(names, dirs, rows, strict=True):
        if row["status"] != "broken" or "model" in row:
            try:
                metrics = read_metrics(d / "metrics.jsonl")
            except VaelabError:
                metrics = []
            curves[name] = [m for m in metrics if m["epoch"] <= row.get("epochs_done", 0)]
    out.mkdir(parents=True, exist_ok=True)
    plots.compare_curves(
        {k: v for k, v in curves.items() if v}, out / "compare_curves.png", "Test ELBO per epoch"
    )
    summary = {"runs": rows, "names": names}
    write_json(out / "compare.json", summary)
    write_bytes(out / "compare.md", _compare_markdown(rows, names).encode())
    write_bytes(out / "compare.html", _compare_html(rows, names, dirs, out / "compare_curves.png").encode())
    return summary


def _short_names(dirs) -> list[str]:
    """The runs' folder names, with as much of the path as tells them apart."""
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    return names


def _compare_markdown(rows, names) -> str:
    lines = ["# Runs side by side", "", "![test ELBO per epoch](compare_curves.png)", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, row in zip(names, rows, strict=True):
        lines.append("| " + " | ".join([name, *cells(row)[1:]]).replace("\n", " ") + " |")
    return "\n".join(lines) + "\n"


def _compare_html(rows, names, dirs, curves_png) -> str:
    import html

    from vaelab.report import STYLE, html_image, html_table

    table = html_table(COLUMNS, [[name, *cells(row)[1:]] for name, row in zip(names, rows, strict=True)])
    pictures = []
    for picture in PICTURES:
        found = [(name, d / "plots" / picture) for name, d in zip(names, dirs, strict=True)]
        if not any(path.is_file() for _, path in found):
            continue
        figures = "".join(
            f'<figure class="side">{html_image(path) if path.is_file() else "<p>(none: vaelab plot RUN)</p>"}'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
            for name, path in found
        )
        title = picture.removesuffix(".png").replace("_", " ")
        pictures.append(f"<h2>{html.escape(title.capitalize())}</h2><div class='row'>{figures}</div>")
    style = STYLE + ".row { display: flex; gap: 1em; flex-wrap: wrap; } .side { flex: 1 1 280px; margin: 0; }"
    body = (
        "<h1>Runs side by side</h1>"
        + table
        + f"<figure>{html_image(curves_png)}<figcaption>Test ELBO per epoch.</figcaption></figure>"
        + "".join(pictures)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vaelab: runs side by side</title>'
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )
