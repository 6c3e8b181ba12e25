"""A training step with --hand-gradients against vaelab's autograd step, for each preset it serves.

    python benchmarks/hand_step.py [--steps 200] [--rounds 5] [--threads 1] [--only NAME,...] [--out FILE]

For each preset it serves (Burda et al.'s batch-20 networks, one and two
stochastic layers, with their objectives, and the two batch-128/256
tutorial networks; `--only` picks some), two
states of the same config and seed on the same MNIST images, one with
`hand_gradients` (vaelab.handgrad), are timed in alternating rounds of
`--steps` steps (fewer for IWAE K = 50, whose steps are longer); prints the
median ms a step of each and the ratio autograd/hand, and writes a JSON record.
"""

import argparse
import json
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

from common import seconds_per_step

PRESETS = {  # preset: (extra settings, steps as a fraction of --steps)
    "iwae-paper": ({}, 1.0),
    "burda-1layer-vae-k1": ({}, 1.0),
    "burda-1layer-iwae-k5": ({}, 0.5),
    "burda-1layer-iwae-k50": ({}, 0.1),
    "burda-1layer-iwae-k5 --elbo dreg": ({"elbo": "dreg"}, 0.5),
    "pytorch-examples": ({}, 0.25),
    "pyro-tutorial": ({}, 0.1),
    "burda-2layer-vae-k1": ({}, 0.5),
    "burda-2layer-iwae-k5": ({}, 0.25),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="comma-separated presets of the list (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "hand_step.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vaelab.config import resolve
    from vaelab.train import build_state, datasets

    rows = {}
    unknown = sorted(set(args.only.split(",")) - set(PRESETS)) if args.only else []
    if unknown:
        parser.error(f"--only: {', '.join(unknown)} not among {', '.join(PRESETS)}")
    chosen = PRESETS if not args.only else {name: PRESETS[name] for name in args.only.split(",")}
    for name, (extra, share) in chosen.items():
        preset = name.split()[0]
        overrides = {"device": "cpu", **extra}
        autograd = build_state(resolve(preset, None, overrides))
        data = datasets(autograd)
        hand = build_state(resolve(preset, None, {**overrides, "hand_gradients": True}), data=data)
        steps, batch_size = max(5, round(args.steps * share)), autograd.config.batch_size
        times = {"autograd": [], "hand": []}
        for _ in range(args.rounds):
            for label, state in (("autograd", autograd), ("hand", hand)):
                times[label].append(1000 * seconds_per_step(state, state.train_data, batch_size, steps))
        ms = {label: statistics.median(t) for label, t in times.items()}
        rows[name] = {
            "batch_size": batch_size,
            "steps_per_round": steps,
            "ms_per_step": ms,
            "autograd_over_hand": ms["autograd"] / ms["hand"],
            "rounds_ms": times,
        }
        print(
            f"{name:36s} batch {batch_size:4d}  autograd {ms['autograd']:8.3f} ms  "
            f"hand {ms['hand']:8.3f} ms  autograd/hand {ms['autograd'] / ms['hand']:.2f}x",
            flush=True,
        )
    record = {
        "benchmark": "hand_step",
        "date": date.today().isoformat(),
        "command": " ".join(["python benchmarks/hand_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "presets": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
