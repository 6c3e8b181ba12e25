"""AIR from other settings (the guide's first z_pres, the z_pres prior): do they avoid the runs that stall?

    python benchmarks/air_init_probe.py --epochs 5 --seed S [--set NAME=VALUE ...] [--present P]
                                        [--backend torch] --out FILE.jsonl

The `air` preset starts the guide's z_pres probability at 0.95
(`z_pres_init`): every step present, so the decoder sees objects
from the first step. Runs from it first go through a phase with three
windows stacked on each digit; some leave it in three or four epochs, others
settle with a share of the one-digit images explained by two windows and
stall at 90-95% count accuracy (benchmarks/results/README.md, AIR). This
trains the preset with the settings `--set` names changed (nothing else;
default `z_pres_init=0.5`, the present-head's bias at its logit) through the
training loop,
and writes each epoch's train and test ELBO, count accuracy, box IoU and the
test confusion of counts, one JSON line each after a header line, to compare
epoch by epoch with the same seeds of the default preset's sweep.
"""

import argparse
import json
import sys

import torch

from probe_loop import train_logged
from vaelab.config import resolve
from vaelab.train import build_state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="+", default=[], help="NAME=VALUE: settings of the preset to change")
    parser.add_argument("--present", type=float, help="--set z_pres_init=P; 0.5 when no --set is given")
    parser.add_argument("--backend", choices=("torch", "pyro"), default="torch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = [item.partition("=") for item in args.set]
    if any(not sep for _, sep, _ in pairs):
        parser.error("--set takes NAME=VALUE")
    changed = {name: json.loads(value) for name, _, value in pairs}  # 5 an int, 1e-4 a float
    if args.present is not None or not changed:
        changed["z_pres_init"] = 0.5 if args.present is None else args.present
    overrides = {"backend": args.backend, "seed": args.seed, "device": "cpu", **changed}
    state = build_state(resolve(preset="air", overrides=overrides))
    train_logged(
        state,
        args.epochs,
        args.out,
        "air_init_probe.py",
        lambda model, test, size: model.evaluation_scores(test, "test", size),
        changed=changed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
