"""Helpers the benchmark scripts share."""

import math
import time

import torch


def matmul_peak(n=2048, repeats=5) -> float:
    """Returns the best GFLOP/s of an n×n float32 matrix product on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def seconds_per_step(state, images, batch_size: int, steps: int, warmup: int = 5) -> float:
    """Returns seconds per `train_step` over `steps` random batches, after `warmup` untimed ones."""
    from vaelab.train import train_step

    generator = torch.Generator().manual_seed(0)
    batches = [
        images.batch(torch.randint(len(images), (batch_size,), generator=generator))
        for _ in range(steps + warmup)
    ]
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        train_step(state, batch)
    return (time.perf_counter() - start) / steps
