"""Seeds stacked in one process against one seed alone: an epoch's training time, interleaved.

    python benchmarks/stacked_sweep.py [--preset pytorch-examples] [--seeds 4] [--rounds 2] [--threads 1]
                                       [--batch-size N] [--train-images N]

Each round trains one epoch of the preset, fresh, into temporary run
directories: seed 0 alone (`vaelab.train.train`), then `--seeds` seeds
stacked (`vaelab.stacked.train_stacked`), timed end to end (data loading,
per-epoch test ELBO and checkpoints included, as a sweep pays them). The
issue's target: `--seeds 4` stacked in at most twice the time of one seed.
`--train-images` trains on the first N training images (an npz copy), to
keep small-batch presets' epochs short. Prints a JSON record with the ratio.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pytorch-examples")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--train-images", type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vaelab.config import resolve
    from vaelab.data import load_all
    from vaelab.stacked import train_stacked
    from vaelab.train import train

    overrides = {"epochs": 1, "device": "cpu"}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        if args.train_images:
            base = resolve(args.preset, None, overrides)
            splits = load_all(base.dataset)
            (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
            path = Path(tmp) / "subset.npz"
            n = args.train_images
            np.savez(path, train_images=train_x[:n, 0], train_labels=train_y[:n], test_images=test_x[:, 0],
                     test_labels=test_y)  # fmt: skip
            overrides["dataset"] = f"npz:{path}"
        configs = [resolve(args.preset, None, {**overrides, "seed": s}) for s in range(args.seeds)]
        times = {"alone": [], "stacked": []}
        for r in range(args.rounds):
            start = time.perf_counter()
            train(configs[0], Path(tmp) / f"alone-{r}", progress=False, echo=lambda line: None)
            times["alone"].append(time.perf_counter() - start)
            start = time.perf_counter()
            dirs = [Path(tmp) / f"stacked-{r}-{s}" for s in range(args.seeds)]
            train_stacked(configs, dirs, echo=lambda line: None)
            times["stacked"].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    record = {
        "benchmark": "stacked_sweep",
        "date": date.today().isoformat(),
        "command": " ".join(
            ["python benchmarks/stacked_sweep.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "preset": args.preset,
        "seeds": args.seeds,
        "threads": args.threads,
        "seconds": times,
        "median_seconds": medians,
        "stacked_over_alone": medians["stacked"] / medians["alone"],
        "target": f"{args.seeds} seeds stacked at most 2x one seed alone",
    }
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
