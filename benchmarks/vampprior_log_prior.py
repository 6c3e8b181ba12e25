"""The VampPrior's log p(z) at evaluation's size: two matrix products against the direct form.

Times `VampPrior.log_prior` (z² and z against each component's precision,
summed in float64) against logsumexp of the per-component Normal
log-densities, (rows, K, z_dim), on Burda et al.'s network with 500
pseudo-inputs and 2,500 draws (one evaluation chunk); prints both times,
their ratio and the largest difference. Writes a JSON record.

    python benchmarks/vampprior_log_prior.py [--rows 2500] [--repeats 5]
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from vaelab.models.vae import _normal_log_prob
from vaelab.models.vampprior import VampPrior


def best_seconds(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/vampprior_log_prior.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VampPrior(784, 50, (200, 200), "tanh", 500)
    z = torch.randn(args.rows, 50)
    with torch.no_grad():
        loc, scale = model.components()

        def direct():
            per_component = _normal_log_prob(z.unsqueeze(-2), loc, scale)
            return torch.logsumexp(per_component, -1) - math.log(model.num_pseudo_inputs)

        matmul_s = best_seconds(lambda: model.log_prior(z), args.repeats)  # includes the 500 encoder passes
        direct_s = best_seconds(direct, args.repeats)
        difference = (model.log_prior(z) - direct()).abs().max().item()
    record = {
        "benchmark": "vampprior_log_prior",
        "command": f"python benchmarks/vampprior_log_prior.py --rows {args.rows} --repeats {args.repeats}",
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "matmul_ms": matmul_s * 1000,
        "direct_ms": direct_s * 1000,
        "direct_over_matmul": direct_s / matmul_s,
        "max_abs_difference": difference,
    }
    print(json.dumps(record, indent=2))
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
