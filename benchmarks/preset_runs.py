"""Trains a preset with several backends from one seed and records the curves.

    python benchmarks/preset_runs.py --preset pyro-tutorial --backends torch,pyro:trace

Writes benchmarks/results/<preset>.json: the command, each backend's per-epoch
metrics, wall time and final test ELBO, and the gap between backends. Runs
already in that file and already complete are kept as they were, so a later
invocation can add a backend without losing the earlier wall times.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pyro
import torch

from vaelab.config import resolve
from vaelab.fileio import read_jsonl, write_json
from vaelab.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--backends", default="torch,pyro:trace", help="torch and/or pyro:ELBO")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/benchmarks", help="parent of the run directories")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    out = Path(args.results) / f"{args.preset}.json"
    previous = json.loads(out.read_text())["runs"] if out.exists() else {}
    record = {
        "preset": args.preset,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "cpu_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "runs": {},
    }
    for spec in args.backends.split(","):
        backend, _, elbo = spec.partition(":")
        overrides = {"backend": backend, "seed": args.seed, "device": "cpu"}
        if elbo:
            overrides["elbo"] = elbo
        if args.epochs:
            overrides["epochs"] = args.epochs
        config = resolve(preset=args.preset, overrides=overrides)
        run_dir = Path(args.runs) / f"{args.preset}-{spec.replace(':', '-')}-seed{args.seed}"
        done = read_jsonl(run_dir / "metrics.jsonl")
        if spec in previous and done and done[-1]["epoch"] >= config.epochs:
            record["runs"][spec] = previous[spec]
            continue
        start = time.perf_counter()
        train(config, run_dir, resume=(run_dir / "checkpoint.pt").exists(), progress=False)
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        record["runs"][spec] = {
            "run_dir": str(run_dir),
            "command": "python " + " ".join(sys.argv),
            "wall_seconds": time.perf_counter() - start,
            "train_seconds_total": sum(m["train_seconds"] for m in metrics),
            "final_test_elbo": metrics[-1]["test_elbo"],
            "best_test_elbo": max(m["test_elbo"] for m in metrics),
            "metrics": metrics,
        }
        print(f"{spec}: final test ELBO {metrics[-1]['test_elbo']:.3f}", flush=True)
    finals = [r["final_test_elbo"] for r in record["runs"].values()]
    record["max_gap_between_backends_nats"] = max(finals) - min(finals)
    write_json(out, record)
    print(f"gap between backends: {record['max_gap_between_backends_nats']:.3f} nats; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
