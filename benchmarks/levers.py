"""The speed levers of issue 4, each against its alternative in one interleaved run.

    python benchmarks/levers.py [--repeats 7] [--only NAME ...] [--out FILE]

The `pyro-tutorial` network (784-400-50, softplus) at batch 128 on MNIST.
Each lever is a pair (or more) of callables timed alternately, median of
--repeats rounds; the JSON record goes to benchmarks/results/levers.json.

- batch: `pixels[index]` (an element-wise gather) against `index_select`;
- binarise: a dynamic binarisation of a batch of 20 and of 128 images,
  `torch.bernoulli(x)` against uniforms compared in place, `rand_like(x).lt_(x)`;
- optimiser: `Adam(fused=True).step()` against its kernel called directly
  (the most a leaner step could save);
- likelihood: `binary_cross_entropy_with_logits` against `x·l − softplus(l)`
  and `x·l − logaddexp(0, l)`, forward and backward;
- heads: the encoder's two 400→50 layers against one product of their
  concatenated weights, forward and backward;
- torch loss: eager against `torch.jit.trace` and `torch.compile`, a whole step;
- denormals: a training epoch on 20,000 images with and without flushing;
- objectives: a training epoch on 20,000 images for the torch backend, Pyro
  TraceMeanField_ELBO and its compiled form (jit-meanfield).
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import DataSpec, ImageBatches
from vaelab.fileio import write_json
from vaelab.models import build_model
from vaelab.train import init_state, make_optimizer, train_epoch

MNIST = DataSpec((28, 28))

BATCH = 128


def interleaved(candidates: dict, repeats: int, calls: int) -> dict:
    """Returns each candidate's median time per call in microseconds, timed alternately."""
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            for _ in range(max(1, calls // 10)):  # warm-up
                fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append(1e6 * (time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def config(backend="torch", elbo=None):
    overrides = {"batch_size": BATCH, "backend": backend, "elbo": elbo, "device": "cpu"}
    return resolve(preset="pyro-tutorial", overrides=overrides)


def batch_lever(pixels: torch.Tensor) -> dict:
    index = torch.randperm(len(pixels))[:BATCH]
    return {
        "pixels[index].float().div_(255)": lambda: pixels[index].float().div_(255),
        "pixels.index_select(0, index).float().div_(255)": lambda: (
            pixels.index_select(0, index).float().div_(255)
        ),
    }


def binarise_lever(pixels: torch.Tensor, size: int) -> dict:
    x = pixels[:size].float().div_(255)
    return {
        f"torch.bernoulli(x), batch {size}": lambda: torch.bernoulli(x),
        f"torch.rand_like(x).lt_(x), batch {size}": lambda: torch.rand_like(x).lt_(x),
    }


def optimiser_lever() -> dict:
    model = build_model("vae", **config().model_args(MNIST))
    params = list(model.parameters())
    grads = [torch.randn_like(p) for p in params]
    optimizer = make_optimizer(model, config())
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()  # creates the state the direct call uses
    states = [optimizer.state[p] for p in params]
    avgs, sqs, steps = ([s[k] for s in states] for k in ("exp_avg", "exp_avg_sq", "step"))

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()

    def kernel_only():
        for p, g in zip(params, grads, strict=True):
            p.grad = None
            p.grad = g
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params, grads, avgs, sqs, [], steps, amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999,
            weight_decay=0.0, eps=1e-8, maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip

    return {"zero_grad + Adam(fused).step()": torch_step, "zero_grad + the fused kernel alone": kernel_only}


def likelihood_lever() -> dict:
    logits, x = torch.randn(BATCH, 784) * 4, torch.rand(BATCH, 784)
    zero = torch.zeros(())

    def run(loglik):
        def fn():
            leaf = logits.clone().requires_grad_()
            loglik(leaf).sum().backward()

        return fn

    return {
        "-binary_cross_entropy_with_logits": run(
            lambda lg: -F.binary_cross_entropy_with_logits(lg, x, reduction="none").sum(-1)
        ),
        "x·l - softplus(l)": run(lambda lg: (x * lg).sum(-1) - F.softplus(lg).sum(-1)),
        "x·l - logaddexp(0, l)": run(lambda lg: (x * lg).sum(-1) - torch.logaddexp(zero, lg).sum(-1)),
    }


def heads_lever() -> dict:
    h0 = torch.randn(BATCH, 400)
    loc, log_scale = torch.nn.Linear(400, 50), torch.nn.Linear(400, 50)

    def separate():
        h = h0.clone().requires_grad_()
        (loc(h).sum() + log_scale(h).exp().sum()).backward()

    def concatenated():
        h = h0.clone().requires_grad_()
        weight = torch.cat((loc.weight, log_scale.weight))
        both = F.linear(h, weight, torch.cat((loc.bias, log_scale.bias)))
        a, b = both.split(50, -1)
        (a.sum() + b.exp().sum()).backward()

    return {"two heads": separate, "one product, weights concatenated": concatenated}


def torch_loss_lever(x: torch.Tensor) -> dict:
    class Loss(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return -self.model.elbo(x).sum()

    def step_of(kind):
        model = build_model("vae", **config().model_args(MNIST))
        optimizer = make_optimizer(model, config())
        loss_fn = Loss(model)
        if kind == "jit":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss_fn = torch.jit.trace(loss_fn, (x,), check_trace=False)
        elif kind == "compile":
            loss_fn = torch.compile(loss_fn)

        def step():
            loss = loss_fn(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    return {"eager": step_of("eager"), "torch.jit.trace": step_of("jit"), "torch.compile": step_of("compile")}


def epoch_of(images, backend="torch", elbo=None, flush=False):
    cfg = config(backend, elbo)
    model = build_model("vae", **cfg.model_args(MNIST))
    state = init_state(cfg, model, images)
    epochs = iter(range(1, 10**6))

    def epoch():
        pyro.clear_param_store()
        torch.set_flush_denormal(flush)
        try:
            train_epoch(state, next(epochs), progress=False)
        finally:
            torch.set_flush_denormal(False)

    return epoch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds per lever (median)")
    parser.add_argument("--only", nargs="+", help="levers whose title contains one of these words")
    parser.add_argument("--out", help="the record (default results/levers.json; needed with --only)")
    args = parser.parse_args()
    torch.manual_seed(0)
    train_images, _ = data.load("mnist", "train")
    images = ImageBatches(train_images[:20000], "none")
    x = images.images(torch.arange(BATCH))  # a float tensor: torch.jit.trace takes no Batch
    # Each lever is built only when it runs (--only): (a function making its candidates, calls per round).
    levers = {
        "batch of 128 images, us": (lambda: batch_lever(images.pixels), 300),
        "binarise a batch of 20, us": (lambda: binarise_lever(images.pixels, 20), 1000),
        "binarise a batch of 128, us": (lambda: binarise_lever(images.pixels, 128), 300),
        "optimiser step, us": (optimiser_lever, 300),
        "likelihood forward + backward, us": (likelihood_lever, 100),
        "encoder heads forward + backward, us": (heads_lever, 200),
        "torch backend step, us": (lambda: torch_loss_lever(x), 50),
        "epoch of 20,000 images (denormals), s": (
            lambda: {"default": epoch_of(images), "flush denormals": epoch_of(images, flush=True)},
            1,
        ),
        "epoch of 20,000 images (objectives), s": (
            lambda: {
                "torch": epoch_of(images),
                "pyro meanfield": epoch_of(images, "pyro", "meanfield"),
                "pyro jit-meanfield": epoch_of(images, "pyro", "jit-meanfield"),
            },
            1,
        ),
    }
    if args.only and not args.out:
        parser.error("--only needs --out: a partial record must not replace results/levers.json")
    args.out = args.out or str(Path(__file__).parent / "results" / "levers.json")
    if args.only:
        levers = {title: lever for title, lever in levers.items() if any(w in title for w in args.only)}
    results = {}
    for title, (make, calls) in levers.items():
        candidates = make()
        scale = 1e-6 if title.endswith(", s") else 1.0  # epochs in seconds, the rest in us
        medians = interleaved(candidates, args.repeats, calls)
        results[title] = {name: value * scale for name, value in medians.items()}
        print(title)
        for name, micros in results[title].items():
            print(f"  {name:52s} {micros:12.3f}" if scale < 1 else f"  {name:52s} {micros:12.1f}")
    write_json(
        Path(args.out),
        {"command": "python " + " ".join(sys.argv), "threads": torch.get_num_threads(), "median": results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
