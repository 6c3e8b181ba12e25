"""What evaluation pays to recompute the VampPrior's components for each chunk.

    python benchmarks/vampprior_components.py [--threads 1] [--repeats 3]

A VampPrior of Burda's one-layer shape with ReLU (784-300-300-40, 500
pseudo-inputs): the time of `components()` (the encoder at the pseudo-inputs,
which `log_prior` recomputes on every call) against `log_weights` of 100
images × 100 samples (10,000 rows, the chunk the share is quoted for), and the
chunk `evaluate`'s planner picks for all 10,000 test images at K = 5000 within
the default 2G. Prints a JSON record.
"""

import argparse
import json
import statistics
import time
from datetime import date

import torch

from vaelab.data.batches import Batch
from vaelab.evaluate import plan_chunks
from vaelab.models.vampprior import VampPrior


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VampPrior(784, 40, (300, 300), "relu", 500).eval()
    x = torch.rand(100, 784).bernoulli()
    components, weights = [], []
    with torch.no_grad():
        for _ in range(args.repeats):  # interleaved
            start = time.perf_counter()
            model.components()
            components.append(time.perf_counter() - start)
            start = time.perf_counter()
            model.log_weights(Batch(x, None), 100)
            weights.append(time.perf_counter() - start)
    images, samples = plan_chunks(model, 10000, 5000, 2 * 2**30)
    c, w = statistics.median(components), statistics.median(weights)
    record = {
        "benchmark": "vampprior_components",
        "date": date.today().isoformat(),
        "command": "python benchmarks/vampprior_components.py",
        "threads": args.threads,
        "components_ms": 1000 * c,
        "log_weights_100x100_ms": 1000 * w,
        "share_of_a_10000_row_chunk": c / w,
        "evaluate_chunk_at_k5000": {"images": images, "samples": samples},
        "share_of_that_chunk_estimated": c / (w * images * samples / 10000),
    }
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
