"""Records a finished run directory in benchmarks/results/: its config, curve, evaluation and times.

For runs trained with the plain command line (`vaelab train ...`, then `vaelab
evaluate RUN ... --json > RUN/EVAL`): writes one JSON file with the commands
given, the run's config.json, every epoch's metrics line, the evaluation and
the summed training seconds, and can copy one of the run's pictures beside it.

    python benchmarks/record_run.py runs/pyro-cvae-q1 --eval eval-k1000.json \\
        --commands "vaelab train --preset pyro-cvae-q1 --out runs/pyro-cvae-q1" \\
        --out benchmarks/results/pyro-cvae-q1.json [--picture completions]
"""

import argparse
import json
import shutil
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--eval", help="the run's evaluation file (JSON), if any")
    parser.add_argument("--commands", action="append", default=[], help="a command that made the run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--picture", help="a picture of RUN/plots to copy beside the record (name, no .png)")
    args = parser.parse_args()
    run = Path(args.run)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    record = {
        "benchmark": "record_run",
        "date": time.strftime("%Y-%m-%d"),
        "run": str(run),
        "commands": args.commands,
        "config": json.loads((run / "config.json").read_text()),
        "epochs": len(lines),
        "train_seconds": sum(line["train_seconds"] for line in lines),
        "final": lines[-1],
        "evaluation": json.loads((run / args.eval).read_text()) if args.eval else None,
        "curve": lines,
    }
    out = Path(args.out)
    out.write_text(json.dumps(record, indent=2) + "\n")
    if args.picture:
        shutil.copy(run / "plots" / f"{args.picture}.png", out.with_name(f"{out.stem}-{args.picture}.png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
