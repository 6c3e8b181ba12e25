"""What flushing denormal floats is worth to the importance-sampled log-likelihood.

    python benchmarks/denormals.py --run RUN [--images 1000] [--iw-samples 5000]

Times `vaelab.evaluate.log_likelihood`'s inner work on the first test images
of a trained VAE run and of a fresh network of the same shape, with
``torch.set_flush_denormal`` off and on (the evaluation itself now always
flushes; here the flag is set around the call to compare).
"""

import argparse
import time
from unittest import mock

import torch

import vaelab
from vaelab import evaluate
from vaelab.data import evaluation_split
from vaelab.models import build_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained VAE run directory")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--iw-samples", type=int, default=5000)
    args = parser.parse_args()
    run = vaelab.load_run(args.run)
    images = evaluation_split(run.config.dataset, "test", run.config.binarize, torch.device("cpu"))
    images.pixels = images.pixels[: args.images]
    fresh = build_model(run.config.model, **run.config.model_args(images.spec))
    for name, model in (("trained", run.model), ("fresh", fresh)):
        for flush in (False, True):
            # The evaluation's own flushing is replaced by the setting under test.
            with mock.patch.object(evaluate, "_flushing_denormals", _fixed(flush)):
                start = time.perf_counter()
                ll = evaluate.log_likelihood(model, images, args.iw_samples, progress=False)
                seconds = time.perf_counter() - start
            print(f"{name:8s} flush_denormal={flush!s:5s} {seconds:6.1f} s  mean log p(x) {ll.mean():.3f}")


def _fixed(flush: bool):
    import contextlib

    @contextlib.contextmanager
    def setting():
        torch.set_flush_denormal(flush)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)

    return setting


if __name__ == "__main__":
    main()
