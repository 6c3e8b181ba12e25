"""Burda et al.'s Table 1 on a schedule a CPU can run: test NLL against epochs for one preset.

Trains `--preset` (a burda-* preset) under the `iwae-short` schedule (the
paper's eight learning rates for 1,1,1,1,1,3,9,27 epochs: 44 in all, against
the paper's 3,280), stopping at each milestone epoch to estimate the test NLL
with K = 5000 on the first `--subset` test images (the fixed binarisation
evaluation uses); after the last, `vaelab evaluate` scores the whole test set
with K = 5000, as the paper does. Writes the run directory and a JSON record.

    python benchmarks/burda_short.py --preset burda-1layer-iwae-k50 --run runs/burda-1l-iwae-k50 \\
        [--milestones 5,17,44] [--subset 1000] [--threads 1] [--hand-gradients] [--out FILE]

`--hand-gradients` trains with `vaelab train --hand-gradients` (the same
run to float rounding, faster); its record's default name ends in `-hand`.

`--model vampprior` trains another model on the preset's protocol and
networks (the VampPrior against the VAE), `--activation relu` another
nonlinearity; `--no-final` skips the full
test set's K = 5000 estimate (the milestones' subset is then the comparison).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from vaelab.config import resolve
from vaelab.data import evaluation_split
from vaelab.data.batches import ImageBatches
from vaelab.evaluate import log_likelihood
from vaelab.run import load_run
from vaelab.train import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--milestones", default="5,17,44")
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", help="another model on the preset's protocol (e.g. vampprior)")
    parser.add_argument("--activation", help="another nonlinearity than the preset's tanh (e.g. relu)")
    parser.add_argument("--warmup-epochs", type=int, help="the VampPrior's KL warm-up")
    parser.add_argument("--no-final", action="store_true", help="skip the full test set's estimate")
    parser.add_argument(
        "--hand-gradients", action="store_true", help="train with vaelab train --hand-gradients (faster)"
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    milestones = [int(m) for m in args.milestones.split(",")]
    run = Path(args.run)
    record = {
        "benchmark": "burda_short",
        "command": "python benchmarks/burda_short.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "preset": args.preset,
        "model": args.model,
        "activation": args.activation,
        "warmup_epochs": args.warmup_epochs,
        "hand_gradients": args.hand_gradients,
        "schedule": "iwae-short (1,1,1,1,1,3,9,27 epochs at 1e-3·10^(-i/7))",
        "seed": args.seed,
        "threads": args.threads,
        "milestones": [],
    }
    started = time.perf_counter()
    for epochs in milestones:
        overrides = {"lr_schedule": "iwae-short", "epochs": epochs, "seed": args.seed, "device": "cpu"}
        if args.model:
            overrides["model"] = args.model
        if args.activation:
            overrides["activation"] = args.activation
        if args.warmup_epochs:
            overrides["warmup_epochs"] = args.warmup_epochs
        if args.hand_gradients:
            overrides["hand_gradients"] = True
        config = resolve(preset=args.preset, overrides=overrides)
        train(config, run, resume=(run / "checkpoint.pt").exists(), progress=False)
        seconds = time.perf_counter() - started
        loaded = load_run(run)
        test = evaluation_split(loaded.config.dataset, "test", loaded.config.binarize)
        images = _first(test, args.subset)
        nll = -log_likelihood(loaded.model, images, iw_samples=5000, progress=False).mean().item()
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        row = {
            "epoch": epochs,
            "train_seconds_so_far": seconds,
            "test_elbo": metrics[-1]["test_elbo"],
            f"test_nll_k5000_first_{args.subset}": nll,
        }
        record["milestones"].append(row)
        print(json.dumps(row), flush=True)
    if not args.no_final:
        subprocess.run(
            [sys.executable, "-m", "vaelab", "evaluate", str(run), "--iw-samples", "5000", "--no-progress"],
            check=True,
        )
        record["final"] = json.loads((run / "eval.json").read_text())
    record["curve"] = curve(run)
    record["wall_seconds"] = time.perf_counter() - started
    name = args.preset + "".join(f"-{v}" for v in (args.model, args.activation) if v)
    name += "-hand" if args.hand_gradients else ""  # not the autograd run's record
    out = Path(args.out or f"benchmarks/results/{name}-short-seed{args.seed}.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


def curve(run: Path) -> list:
    """The run's per-epoch ELBOs (and bound, when trained on one) and seconds, from metrics.jsonl."""
    keys = ("epoch", "train_elbo", "test_elbo", "train_objective", "train_seconds")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: line[k] for k in keys if k in line} for line in lines]


def _first(images: ImageBatches, n: int) -> ImageBatches:
    """The first `n` images, as drawn (a binarised split's pixels are already 0 or 255)."""
    return ImageBatches(images.pixels[:n].cpu().numpy().reshape(n, *images.image_shape))


if __name__ == "__main__":
    main()
