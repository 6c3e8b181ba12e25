"""Where a Pyro AIR step's time goes: the share of Pyro's provenance tracking, tracked against declared.

    python benchmarks/air_profile.py [--steps 20] [--out FILE.json]

Runs `--steps` training steps (after 5 warm-up steps) of the `air` preset's
Pyro backend on Multi-MNIST batches of 64, one thread, under cProfile, twice:
with Pyro's `TraceGraph_ELBO` as it comes (provenance tracked through every
operation) and with AIR's declared dependencies (`DeclaredTraceGraph_ELBO`,
what vaelab uses). Prints each profile's total seconds and the share spent
in `ProvenanceTensor.__torch_function__` (its cumulative time: every
tracked operation and what it calls), and writes a JSON record.
"""

import argparse
import cProfile
import json
import pstats
import sys
import time

import torch

from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches
from vaelab.models import build_model
from vaelab.models.air import AIR
from vaelab.objectives import clear_param_store
from vaelab.train import init_state, train_step


def provenance_seconds(stats: pstats.Stats) -> float:
    """Cumulative seconds in ProvenanceTensor.__torch_function__ (cProfile counts a recursion once)."""
    return sum(
        row[3]
        for (file, _, name), row in stats.stats.items()
        if file.endswith("pyro/ops/provenance.py") and name == "__torch_function__"
    )


def profile(images: ImageBatches, steps: int, tracked: bool) -> dict:
    config = resolve(preset="air", overrides={"backend": "pyro", "device": "cpu"})
    torch.manual_seed(0)
    clear_param_store()
    declared = AIR.discrete_upstream
    if tracked:
        AIR.discrete_upstream = None
    try:
        model = build_model("air", **config.model_args(images.spec))
        state = init_state(config, model, images)
        generator = torch.Generator().manual_seed(0)
        draws = [torch.randint(len(images), (64,), generator=generator) for _ in range(steps + 5)]
        batches = [images.batch(index) for index in draws]
        for batch in batches[:5]:
            train_step(state, batch)
        profiler = cProfile.Profile()
        profiler.enable()
        for batch in batches[5:]:
            train_step(state, batch)
        profiler.disable()
    finally:
        AIR.discrete_upstream = declared
    stats = pstats.Stats(profiler)
    spent = provenance_seconds(stats)
    total = stats.total_tt
    return {"seconds": total, "provenance_seconds": spent, "provenance_share": spent / total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/air_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pixels, counts = data.load("multi-mnist", "train")
    images = ImageBatches(pixels[:2000], "none", labels=counts[:2000], label_kind="counts")
    record = {
        "benchmark": "air_profile",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/air_profile.py " + " ".join(sys.argv[1:]),
        "steps": args.steps,
        "threads": 1,
        "torch": torch.__version__,
    }
    for name, tracked in (("tracked", True), ("declared", False)):
        record[name] = profile(images, args.steps, tracked)
        r = record[name]
        print(f"{name:9s} {r['seconds']:6.2f} s under cProfile, provenance {r['provenance_share']:.0%}")
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
