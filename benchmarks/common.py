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
