"""Speed of the importance-sampled log-likelihood: K=5000 over MNIST's test set.

    python benchmarks/iwae_eval.py [--run RUN] [--images 10000] [--iw-samples 5000]

The network is `pyro-tutorial`'s (784-400-50, softplus), from RUN if given,
else freshly initialised (the cost does not depend on the weights). In the
same run it measures a matrix-product peak and a baseline: the straightforward
evaluation (all K samples of as many images as fit 2 GiB, each op on every
core) on a subset. Prints seconds, GFLOP/s, the fraction of the peak and the
speed-up, and writes benchmarks/results/iwae_eval.json.
"""

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

import vaelab
from common import matmul_peak
from vaelab.config import resolve
from vaelab.data import DataSpec, evaluation_split
from vaelab.evaluate import log_likelihood, plan_chunks
from vaelab.fileio import write_json
from vaelab.models import build_model


def decoder_flop(model) -> int:
    """Returns the FLOPs of one decoder pass for one sample (multiply-adds × 2)."""
    return 2 * sum(
        layer.in_features * layer.out_features
        for layer in model.decoder.modules()
        if isinstance(layer, torch.nn.Linear)
    )


@torch.no_grad()
def baseline(model, pixels, k, image_batch) -> torch.Tensor:
    """The straightforward loop: all K samples of `image_batch` images at once, ops on every core."""
    out = []
    for start in range(0, len(pixels), image_batch):
        x = pixels[start : start + image_batch].float() / 255
        out.append(torch.logsumexp(model.log_importance_weights(x, k), dim=0) - math.log(k))
    return torch.cat(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run directory (default: a fresh pyro-tutorial network)")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--baseline-images", type=int, default=200)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    if args.run:
        run = vaelab.load_run(args.run)
        model, config = run.model, run.config
    else:
        config = resolve(preset="pyro-tutorial", overrides={"device": "cpu"})
        torch.manual_seed(0)
        model = build_model("vae", **config.model_args(DataSpec((28, 28)))).eval()
    images = evaluation_split(config.dataset, "test", config.binarize, torch.device("cpu"))
    images.pixels = images.pixels[: args.images]
    k = args.iw_samples
    per_image = k * decoder_flop(model)
    peak = matmul_peak(n=4096, repeats=3)  # as in the recorded results
    print(f"matrix-product peak: {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")

    subset = images.pixels[: args.baseline_images]
    baseline_batch = plan_chunks(model, len(subset), k, 2**31)[0]
    start = time.perf_counter()
    baseline_ll = baseline(model, subset, k, baseline_batch)
    baseline_seconds = time.perf_counter() - start

    start = time.perf_counter()
    ll = log_likelihood(model, images, k)
    seconds = time.perf_counter() - start
    achieved = per_image * len(images) / seconds / 1e9
    baseline_rate = per_image * len(subset) / baseline_seconds / 1e9
    record = {
        "command": "python " + " ".join(sys.argv),
        "images": len(images),
        "iw_samples": k,
        "seconds": seconds,
        "mean_log_likelihood": ll.mean().item(),
        "decoder_tflop": per_image * len(images) / 1e12,
        "gflops": achieved,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": achieved / peak,
        "baseline": {
            "what": "all K samples of a 2 GiB batch of images at once, each op on every core",
            "images_per_batch": baseline_batch,
            "images": len(subset),
            "gflops": baseline_rate,
            "mean_log_likelihood": baseline_ll.mean().item(),
        },
        "speedup_vs_baseline": achieved / baseline_rate,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    print(
        f"K={k} over {len(images)} images: {seconds:.1f} s ({seconds / 60:.2f} min), "
        f"{achieved:.1f} GFLOP/s = {achieved / peak:.0%} of peak; baseline {baseline_rate:.1f} GFLOP/s; "
        f"speed-up {achieved / baseline_rate:.2f}×; mean log p(x) {ll.mean():.3f}"
    )
    write_json(Path(args.results) / "iwae_eval.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
