"""The amortisation gap of a trained run against the number of SVI steps per image, both backends.

For each `--steps` value, fits a Normal per image to the first `--images` test
images (decoder fixed, from the encoder's output) and records the amortised
and optimised ELBOs and their gap, with the wall time; writes a JSON record.

    python benchmarks/amortization_gap.py --run RUN [--images 1000] [--steps 100,500,2000]
        [--backends torch,pyro] [--out FILE]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from vaelab.amortization import amortization_gap
from vaelab.data import evaluation_split
from vaelab.run import load_run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--steps", default="100,500,2000")
    parser.add_argument("--backends", default="torch,pyro")
    parser.add_argument("--out", default="benchmarks/results/amortization_gap.json")
    args = parser.parse_args()
    run = load_run(args.run)
    config = run.config
    images = evaluation_split(config.dataset, "test", config.binarize)
    record = {
        "benchmark": "amortization_gap",
        "command": "python benchmarks/amortization_gap.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "run": args.run,
        "config": config.to_dict(),
        "rows": [],
    }
    for backend in args.backends.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            start = time.perf_counter()
            row = amortization_gap(run.model, images, args.images, steps, backend=backend, seed=config.seed)
            row["seconds"] = time.perf_counter() - start
            record["rows"].append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
