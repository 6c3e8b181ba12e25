"""AIR from another start of the guide's z_pres: does it avoid the runs that stall under 95%?

    python benchmarks/air_init_probe.py --epochs 5 --seed S [--present 0.5] [--backend torch] --out FILE.jsonl

The `air` preset starts the guide's z_pres probability at 0.95
(`INITIAL_PRESENT_LOGIT`): every step present, so the decoder sees objects
from the first step. Runs from it first go through a phase with three
windows stacked on each digit; some leave it in three or four epochs, others
settle with a share of the one-digit images explained by two windows and
stall at 90-95% count accuracy (benchmarks/results/README.md, AIR). This
trains the preset with the present-head's bias set to logit(`--present`)
after the model is built (nothing else changed) through the training loop,
and writes each epoch's train and test ELBO, count accuracy, box IoU and the
test confusion of counts, one JSON line each after a header line, to compare
epoch by epoch with the same seeds of the default preset's sweep.
"""

import argparse
import json
import math
import sys
import time

import torch

from vaelab.config import resolve
from vaelab.models.base import dataset_elbo, evaluating
from vaelab.train import build_state, start_epoch, train_epoch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--present", type=float, default=0.5, help="the guide's first z_pres probability")
    parser.add_argument("--backend", choices=("torch", "pyro"), default="torch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = resolve(preset="air", overrides={"backend": args.backend, "seed": args.seed, "device": "cpu"})
    state = build_state(config)
    with torch.no_grad():
        state.model.predict[-1].bias[0] = math.log(args.present / (1 - args.present))
    header = {
        "header": True,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/air_init_probe.py " + " ".join(sys.argv[1:]),
        "present": args.present,
        "torch": torch.__version__,
    }
    lines = [header]
    for epoch in range(1, args.epochs + 1):
        start_epoch(state, epoch)
        result = train_epoch(state, epoch, progress=False)
        test_elbo = dataset_elbo(state.model, state.test_data, config.eval_batch_size, seed=config.seed)
        with evaluating(state.model):
            scores = state.model.evaluation_scores(state.test_data, "test", config.eval_batch_size)
        line = {"epoch": epoch, "train_elbo": result.train_elbo, "test_elbo": test_elbo, **scores}
        line["train_seconds"] = result.seconds
        lines.append(line)
        print(json.dumps(line), flush=True)
        with open(args.out, "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
