"""Does the posterior collapse? The first steps of a model on Burda et al.'s protocol, with a fixed KL weight.

Trains `--model` on the `burda-1layer-vae-k1` preset (784-200-200-50, batch 20,
dynamically binarised MNIST) for `--steps` steps on rec - w·KL with the KL
weight w held at each of `--weights`, and prints every `--every` steps the
mean ELBO of those steps and the variance across 500 training images of the
posterior means (averaged over dimensions): near 0, the encoder ignores its
input. `--frozen-pseudo-inputs` keeps the VampPrior's pseudo-inputs fixed.
Writes a JSON record.

    python benchmarks/vampprior_collapse.py --model vampprior --activation tanh --weights 1,0.05,0.01,0
"""

import argparse
import json
import time
from pathlib import Path

import torch

from vaelab.config import resolve
from vaelab.train import build_state


def trace(model: str, activation: str, weight: float, steps: int, every: int, frozen: bool) -> list:
    config = resolve(preset="burda-1layer-vae-k1", overrides={"model": model, "activation": activation})
    state = build_state(config)
    net, optimizer, images = state.model, state.optimizer, state.train_data
    if frozen:
        net.pseudo["logits"].requires_grad_(False)
    order = images.epoch_order(config.seed, 1)
    fixed = images.batch(order[:500])
    rows, total = [], 0.0
    for step in range(steps):
        batch = images.batch(order[step * 20 : (step + 1) * 20])
        log_px, kl = net.elbo_terms(batch)
        optimizer.zero_grad()
        (-(log_px - weight * kl).sum()).backward()
        optimizer.step()
        total += (log_px - kl).sum().item()
        if (step + 1) % every == 0:
            with torch.no_grad():
                loc, _ = net.encode(fixed)
            rows.append(
                {
                    "step": step + 1,
                    "elbo": total / 20 / every,
                    "posterior_mean_variance": loc.var(0).mean().item(),
                }
            )
            total = 0.0
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vampprior")
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--weights", default="1,0.05,0.01,0")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--frozen-pseudo-inputs", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {
        "benchmark": "vampprior_collapse",
        "command": "python benchmarks/vampprior_collapse.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False, True)
        )
        + (" --frozen-pseudo-inputs" if args.frozen_pseudo_inputs else ""),
        "date": time.strftime("%Y-%m-%d"),
        "runs": [],
    }
    for weight in (float(w) for w in args.weights.split(",")):
        rows = trace(args.model, args.activation, weight, args.steps, args.every, args.frozen_pseudo_inputs)
        record["runs"].append({"kl_weight": weight, "rows": rows})
        shown = "  ".join(
            f"step {r['step']}: ELBO {r['elbo']:.1f}, var {r['posterior_mean_variance']:.4f}" for r in rows
        )
        print(f"{args.model} {args.activation} w={weight:g}: {shown}", flush=True)
    name = f"{args.model}-{args.activation}" + ("-frozen" if args.frozen_pseudo_inputs else "")
    out = Path(args.out or f"benchmarks/results/collapse-{name}.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
