"""Pyro's CVAE baseline, stopped early as Pyro's example stops it, but on held-out training images.

Pyro's example (examples/cvae/main.py: up to 101 epochs, patience 3) stops
the baseline once its loss on the *test* set has not improved for 3 epochs
and keeps its best test epoch's weights; its table (100.4 / 61.9 / 25.4
nats for 1 / 2 / 3 quadrants) is that epoch's test loss. Here the same rule
reads a validation split instead, the training split's last 10,000 images
(``--validation 10000 --baseline-patience 3 --baseline-epochs 101``), and
the number recorded is the test NLL of the epoch the validation split chose.

Each (quadrants, seed) trains through vaelab's own loop into a normal run
directory, stopping once the baseline has stopped (the CVAE has not begun):
``vaelab train --resume --out RUN --epochs E`` would go on to train the CVAE.

    python benchmarks/cvae_early_stop.py --quadrants 1,2,3 --seeds 0,1,2 \\
        --out benchmarks/results/cvae_baseline_early_stop.json
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

PYRO = {1: 100.4, 2: 61.9, 3: 25.4}  # Pyro's tutorial's baseline row


def train_until_stopped(config, run_dir: Path) -> dict:
    """Trains the baseline of `config` into `run_dir` until it stops; returns its curve and choice."""
    from vaelab.runlock import RunLock
    from vaelab.train import build_state, finish_epoch, open_run, start_epoch, train_epoch

    state = build_state(config)
    lines = []
    with RunLock(run_dir):
        open_run(state, run_dir, None)
        for epoch in range(1, config.epochs + 1):
            start_epoch(state, epoch)
            result = train_epoch(state, epoch, progress=False)
            line = finish_epoch(state, run_dir, epoch, result, None)
            lines.append(line)
            print(
                f"  epoch {epoch}: val NLL {-line['val_elbo']:.3f}  test NLL {line['baseline_nll']:.3f}",
                flush=True,
            )
            if int(state.model.baseline_stopped):
                break
    best = int(state.model.baseline_best_epoch)
    return {
        "val_nll": [round(-line["val_elbo"], 4) for line in lines],
        "test_baseline_nll": [round(line["baseline_nll"], 4) for line in lines],
        "best_epoch": best,
        "stopped": int(state.model.baseline_stopped),
        "test_nll_at_best": round(lines[best - 1]["baseline_nll"], 4),
        "best_test_epoch": min(range(len(lines)), key=lambda i: lines[i]["baseline_nll"]) + 1,
        "train_seconds": round(sum(line["train_seconds"] for line in lines), 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quadrants", default="1,2,3", help="comma-separated: 1, 2, 3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--validation", type=int, default=10_000)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=101, help="Pyro's --num-epochs")
    parser.add_argument("--runs", default="runs", help="where the run directories go")
    parser.add_argument("--out", required=True, help="the JSON record (rewritten after each run)")
    args = parser.parse_args(argv)

    from vaelab.config import resolve

    torch.set_num_threads(1)
    record = {
        "benchmark": "cvae_early_stop",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/cvae_early_stop.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "Pyro's CVAE baseline stopped early on a validation split (the training split's last "
        f"{args.validation} images, patience {args.patience}, at most {args.max_epochs} epochs), its best "
        "validation epoch's weights kept; test NLL of the hidden pixels per image. Pyro's table, whose "
        "early stopping reads the test set: " + " / ".join(str(PYRO[q]) for q in (1, 2, 3)),
        "machine": f"{platform.machine()} CPU, one thread, other runs on the cores",
        "torch": torch.__version__,
        "runs": {},
    }
    out = Path(args.out)
    for q in (int(q) for q in args.quadrants.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = Path(args.runs) / f"cvae-early-stop-q{q}-seed{seed}"
            overrides = {
                "seed": seed,
                "device": "cpu",
                "validation": args.validation,
                "baseline_epochs": args.max_epochs,
                "baseline_patience": args.patience,
                "epochs": args.max_epochs + 20,  # room for the preset's 20 CVAE epochs on --resume
            }
            config = resolve(preset=f"pyro-cvae-q{q}", overrides=overrides)
            print(f"q{q} seed {seed} -> {run_dir}", flush=True)
            found = train_until_stopped(config, run_dir)
            command = (
                f"vaelab train --preset pyro-cvae-q{q} --validation {args.validation} --baseline-epochs "
                f"{args.max_epochs} --baseline-patience {args.patience} --epochs {args.max_epochs + 20} "
                f"--seed {seed} --device cpu --out {run_dir} (stopped once the baseline stopped)"
            )
            record["runs"][f"q{q}-seed{seed}"] = {"command": command, **found}
            record["summary"] = _summary(record["runs"])
            out.write_text(json.dumps(record, indent=1) + "\n")
            print(f"  best epoch {found['best_epoch']}, test NLL {found['test_nll_at_best']}", flush=True)
    return 0


def _summary(runs: dict) -> dict:
    """Per quadrant count: the test NLL at the validation's choice, mean ± sd over the seeds, and Pyro's."""
    summary = {}
    for q in (1, 2, 3):
        values = [r["test_nll_at_best"] for k, r in runs.items() if k.startswith(f"q{q}-")]
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else None
            summary[f"q{q}"] = {
                "test_nll": values,
                "mean": round(statistics.mean(values), 3),
                "sd": None if sd is None else round(sd, 3),
                "pyro": PYRO[q],
            }
    return summary


if __name__ == "__main__":
    sys.exit(main())
