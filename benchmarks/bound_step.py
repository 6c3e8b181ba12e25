"""What a training step costs for each objective, K = 1, 5, 50, by hand and in Pyro.

Times full steps (loss, backward, Adam) of the `iwae-paper` network (784-200-200-50,
tanh, batch 20, dynamically binarised MNIST) for every objective and K, the two
backends interleaved so drifts in machine load hit both; prints the median
milliseconds per step and the ratio pyro/torch for each. Writes a JSON record.

    python benchmarks/bound_step.py [--steps 100] [--repeats 3] [--model vae|two-layer-vae] [--out FILE]
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from common import seconds_per_step_of
from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches

CASES = [(elbo, k) for elbo in ("trace", "iwae", "dreg") for k in (1, 5, 50)]


def time_steps(model_name, backend, elbo, particles, steps, images) -> float:
    """Returns seconds per step of `steps` steps after 5 warm-up steps."""
    overrides = {"model": model_name, "backend": backend, "elbo": elbo, "particles": particles}
    config = resolve(preset="iwae-paper", overrides=overrides)
    return seconds_per_step_of(config, images, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="vae", choices=["vae", "two-layer-vae"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results/bound_step.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pixels, _ = data.load("mnist", "train")
    images = ImageBatches(pixels[:10000], binarize="dynamic")
    times = {(elbo, k, backend): [] for elbo, k in CASES for backend in ("torch", "pyro")}
    for _ in range(args.repeats):
        for elbo, k, backend in times:  # interleaved
            times[elbo, k, backend].append(time_steps(args.model, backend, elbo, k, args.steps, images))
    rows = []
    print(
        f"{args.model}, batch 20, {torch.get_num_threads()} threads: ms per step (median of {args.repeats})"
    )
    for elbo, k in CASES:
        hand = statistics.median(times[elbo, k, "torch"])
        pyro_ = statistics.median(times[elbo, k, "pyro"])
        rows.append(
            {
                "elbo": elbo,
                "K": k,
                "torch_ms": hand * 1000,
                "pyro_ms": pyro_ * 1000,
                "pyro_over_torch": pyro_ / hand,
                "runs_ms": {b: [t * 1000 for t in times[elbo, k, b]] for b in ("torch", "pyro")},
            }
        )
        ms = f"torch {hand * 1000:6.2f}  pyro {pyro_ * 1000:6.2f}"
        print(f"  {elbo:6s} K={k:<3d} {ms}  pyro/torch {pyro_ / hand:.2f}x")
    record = {
        "benchmark": "bound_step",
        "model": args.model,
        "command": "python benchmarks/bound_step.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "date": time.strftime("%Y-%m-%d"),
        "batch_size": 20,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
