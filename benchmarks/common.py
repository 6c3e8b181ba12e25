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


def seconds_per_step_of(config, images, steps: int, batch_size=None, spec=None) -> float:
    """Returns seconds per `train_step` of a fresh model of `config` (seeded 0) on `images`.

    `spec`: the data the model is built for, when not `images.spec` (labels
    the images do not show all of); `batch_size`: other than the config's.
    """
    from vaelab.models import build_model
    from vaelab.objectives import clear_param_store
    from vaelab.train import init_state

    torch.manual_seed(0)
    clear_param_store()
    model = build_model(config.model, **config.model_args(spec or images.spec))
    state = init_state(config, model, images)
    return seconds_per_step(state, images, batch_size or config.batch_size, steps)
