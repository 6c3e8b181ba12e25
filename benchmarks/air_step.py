"""What one AIR training step costs: the hand-written surrogate against Pyro's TraceGraph_ELBO.

Times a full step (loss, backward, Adam) of the `air` preset's network on a
batch of Multi-MNIST canvases, interleaved: the torch backend; the Pyro
backend as vaelab runs it (TraceGraph_ELBO's estimator with AIR's declared
dependencies, `DeclaredTraceGraph_ELBO`); and `pyro-tracked`, Pyro's
TraceGraph_ELBO as it comes, tracking provenance through every operation.
Prints the median milliseconds per step and the ratios. Writes a JSON record.

    python benchmarks/air_step.py [--steps 30] [--repeats 3] [--threads N] [--out FILE.json]
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from common import seconds_per_step_of
from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches
from vaelab.models.air import AIR


def time_steps(kind: str, steps: int, images: ImageBatches) -> float:
    """Returns seconds per step of `steps` steps after 5 warm-up steps."""
    config = resolve(preset="air", overrides={"backend": kind.split("-")[0]})
    if kind != "pyro-tracked":
        return seconds_per_step_of(config, images, steps)
    declared, AIR.discrete_upstream = AIR.discrete_upstream, None  # Pyro's own tracking
    try:
        return seconds_per_step_of(config, images, steps)
    finally:
        AIR.discrete_upstream = declared


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results/air_step.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = ImageBatches(data.load("multi-mnist", "train")[0][:10000])
    times = {"torch": [], "pyro": [], "pyro-tracked": []}
    for _ in range(args.repeats):
        for backend in times:  # interleaved, so drifts in machine load hit both
            times[backend].append(time_steps(backend, args.steps, images))
    median = {k: statistics.median(v) for k, v in times.items()}
    for backend, seconds in median.items():
        runs = ", ".join(f"{t * 1000:.1f}" for t in times[backend])
        print(f"{backend:12s} {seconds * 1000:7.1f} ms/step  (runs: {runs})")
    ratio = median["pyro"] / median["torch"]
    tracking = median["pyro-tracked"] / median["pyro"]
    print(f"pyro/torch {ratio:.2f}x; pyro-tracked/pyro {tracking:.2f}x")
    record = {
        "benchmark": "air_step",
        "batch_size": resolve(preset="air").batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "ms_per_step": {k: v * 1000 for k, v in median.items()},
        "runs_ms": {k: [t * 1000 for t in v] for k, v in times.items()},
        "pyro_over_torch": ratio,
        "pyro_tracked_over_pyro": tracking,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/air_step.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
