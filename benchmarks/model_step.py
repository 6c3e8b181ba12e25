"""What a training step of each new model of issue 14 costs, by hand and in Pyro, and M2's enumeration.

Times full steps (loss, backward, Adam) on MNIST, the two backends
interleaved so drifts in machine load hit both, and prints the median
milliseconds per step and the ratio pyro/torch:

- ``m2``: the ``m2-pyro`` preset (784-500-50 softplus, batch 200), 5% of each
  batch labelled (as ``--labelled-per-batch 10``), Pyro's ``TraceEnum_ELBO``;
- ``vampprior``: Burda et al.'s network (784-200-200-50 tanh, batch 20), 500 pseudo-inputs;
- ``vae --net conv`` and ``cvae --net conv``: the ``pytorch-examples`` preset (batch 128) with
  convolutions, beside the MLP VAE.

Then M2's enumeration against the ten decoder passes it stands for: an M2
step on 200 unlabelled images (each run through encoder and decoder once per
class) against a CVAE step of the same networks on 2,000 labelled images
(each once), by hand. Writes a JSON record.

    python benchmarks/model_step.py [--steps 30] [--repeats 3] [--threads 1] [--out FILE]
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import seconds_per_step_of
from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches

CASES = {
    "m2": ("m2-pyro", {"labelled_per_batch": 10}, "enum"),
    "vampprior": ("burda-1layer-vae-k1", {"model": "vampprior", "elbo": None, "particles": 1}, "trace"),
    "vae mlp": ("pytorch-examples", {}, "trace"),
    "vae conv": ("pytorch-examples", {"net": "conv"}, "trace"),
    "cvae conv": ("pytorch-examples", {"model": "cvae", "net": "conv"}, "trace"),
}


def images_for(name: str, pixels, labels) -> ImageBatches:
    """The first 10,000 training images; for M2, 5% of them labelled and the rest -1."""
    binarize = "dynamic" if name == "vampprior" else "none"
    if name == "m2":
        rng = np.random.default_rng(0)
        labels = np.where(rng.random(len(labels)) < 0.05, labels, -1)
    return ImageBatches(pixels, binarize=binarize, labels=labels, label_kind="classes")


def time_steps(preset, overrides, backend, elbo, images, steps, batch_size=None) -> float:
    """Returns seconds per step of `steps` steps after 5 warm-up steps."""
    config = resolve(preset=preset, overrides={**overrides, "backend": backend, "elbo": elbo})
    return seconds_per_step_of(config, images, steps, batch_size, spec=images.spec._replace(num_classes=10))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results/model_step.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pixels, labels = data.load("mnist", "train")
    pixels, labels = pixels[:10000], labels[:10000]
    images = {name: images_for(name, pixels, labels) for name in CASES}
    labelled = ImageBatches(pixels, labels=labels, label_kind="classes")
    unlabelled = ImageBatches(pixels, labels=np.full(len(labels), -1), label_kind="classes")
    times = {(name, backend): [] for name in CASES for backend in ("torch", "pyro")}
    enumeration = {"m2 unlabelled, batch 200": [], "cvae, batch 2000": []}
    m2_nets = {"z_dim": 50, "hidden": (500,), "activation": "softplus", "lr": 4.2e-4}
    for _ in range(args.repeats):
        for name, backend in times:  # interleaved
            preset, overrides, elbo = CASES[name]
            elbo = None if backend == "torch" else elbo
            times[name, backend].append(
                time_steps(preset, overrides, backend, elbo, images[name], args.steps)
            )
        enumeration["m2 unlabelled, batch 200"].append(
            time_steps("m2-pyro", {}, "torch", None, unlabelled, args.steps)
        )
        enumeration["cvae, batch 2000"].append(
            time_steps(
                "pytorch-examples", {"model": "cvae", **m2_nets}, "torch", None, labelled, args.steps, 2000
            )
        )
    print(f"{torch.get_num_threads()} thread(s): ms per training step (median of {args.repeats})")
    rows = []
    for name in CASES:
        hand, pyro_ = (statistics.median(times[name, b]) for b in ("torch", "pyro"))
        runs = {b: [t * 1000 for t in times[name, b]] for b in ("torch", "pyro")}
        rows.append(
            {"model": name, "torch_ms": hand * 1000, "pyro_ms": pyro_ * 1000, "pyro_over_torch": pyro_ / hand}
            | {"runs_ms": runs}
        )
        print(
            f"  {name:10s} torch {hand * 1000:7.2f}  pyro {pyro_ * 1000:7.2f}  pyro/torch {pyro_ / hand:.2f}x"
        )
    m2_ms, cvae_ms = (statistics.median(v) * 1000 for v in enumeration.values())
    print(
        f"  M2's enumeration: an unlabelled batch of 200 {m2_ms:.1f} ms; the CVAE on 2,000 labelled "
        f"images (the ten passes) {cvae_ms:.1f} ms: ratio {m2_ms / cvae_ms:.2f}"
    )
    record = {
        "benchmark": "model_step",
        "command": "python benchmarks/model_step.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "out"),
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "m2_enumeration": {
            "m2_unlabelled_batch200_ms": m2_ms,
            "cvae_batch2000_ms": cvae_ms,
            "ratio": m2_ms / cvae_ms,
            "runs_ms": {k: [t * 1000 for t in v] for k, v in enumeration.items()},
        },
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
