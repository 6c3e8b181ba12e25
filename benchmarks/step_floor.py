"""The floor under a small-batch step: its matrix products and Adam alone, against the bare loop, interleaved.

    python benchmarks/step_floor.py [--preset iwae-paper] [--batch-size 20] [--seeds 4]
                                    [--steps 300] [--rounds 5] [--threads 1]

Issue 15's CPU targets are a batch-20 step at most 0.8× a bare eager loop's,
and `--seeds` seeds stacked in at most 2× one seed. This measures what no
implementation of the same arithmetic can avoid, on the preset's network
(default 784-200-200-50 tanh), timed alternately, median per step:

- `bare`: the bare eager loop of `small_batch.py` (loss, backward, fused Adam);
- `products`: the same network's matrix products alone, as raw `addmm`/`mm`
  on fixed tensors (no autograd, no activations, no likelihood): per layer the
  forward product, the weight gradient, and the input gradient (not for the
  first layer, whose input is the data);
- `adam`: the fused Adam step alone over the network's parameters;
- `products-stacked`: the products of `--seeds` seeds at once, as one batched
  product (`baddbmm`/`bmm`) per layer: each seed has its own weights, so the
  seeds share no product;
- `adam-stacked`: one fused Adam over the seeds' stacked parameters.

floor = products + adam is what one seed's step cannot go under. The
stack's floor takes the cheaper way to each: the batched products or
`--seeds` times one seed's, one stacked Adam or `--seeds` small ones. The
record gives each floor over the bare step beside the targets (0.8 and 2).
"""

import argparse
import json
import statistics
import sys
import time
from datetime import date

import torch

from small_batch import _bare


def _products(layers, batch, seeds=None):
    """A function running every layer's forward and backward products on fixed tensors."""
    lead = () if seeds is None else (seeds,)
    tensors = []
    for i, (n_in, n_out) in enumerate(layers):
        x, g = torch.randn(*lead, batch, n_in), torch.randn(*lead, batch, n_out)
        w, b = torch.randn(*lead, n_out, n_in), torch.randn(*lead, 1, n_out)
        tensors.append((i == 0, x, g, w, b))

    def run():
        for first, x, g, w, b in tensors:
            if seeds is None:
                torch.addmm(b, x, w.t())  # forward
                torch.mm(g.t(), x)  # weight gradient
                if not first:
                    torch.mm(g, w)  # input gradient
            else:
                torch.baddbmm(b, x, w.transpose(1, 2))
                torch.bmm(g.transpose(1, 2), x)
                if not first:
                    torch.bmm(g, w)

    return run


def _adam(shapes, lr, betas, eps):
    """A function taking one fused Adam step over parameters of `shapes`, their gradients fixed."""
    params = [torch.zeros(shape, requires_grad=True) for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape) * 1e-3
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    return optimizer.step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="iwae-paper")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vaelab.config import resolve

    config = resolve(args.preset, None, {"device": "cpu", "batch_size": args.batch_size})
    s, x_dim = config.settings, 784  # MNIST's pixels, as the presets train on
    betas, eps = tuple(config.adam_betas), config.adam_eps
    loss, optimizer = _bare(x_dim, s.z_dim, tuple(s.hidden), s.activation, config.lr, betas, eps)
    shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
    # The linear layers' (in, out), encoder then decoder: each weight is (out, in).
    layers = [(shape[1], shape[0]) for shape in shapes if len(shape) == 2]
    generator = torch.Generator().manual_seed(0)
    binary = torch.rand(20 * args.batch_size, x_dim, generator=generator).bernoulli(generator=generator)
    batches = [binary[torch.randint(len(binary), (args.batch_size,), generator=generator)] for _ in range(8)]

    def bare():
        x = batches[bare.i % len(batches)]
        bare.i += 1
        value = loss(x)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    bare.i = 0
    variants = {
        "bare": bare,
        "products": _products(layers, args.batch_size),
        "adam": _adam(shapes, config.lr, betas, eps),
        "products-stacked": _products(layers, args.batch_size, args.seeds),
        "adam-stacked": _adam([(args.seeds, *shape) for shape in shapes], config.lr, betas, eps),
    }
    for run in variants.values():  # warm up
        for _ in range(20):
            run()
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    ms = {name: statistics.median(t) for name, t in times.items()}
    floor = ms["products"] + ms["adam"]
    n = args.seeds
    floor_stacked = min(ms["products-stacked"], n * ms["products"]) + min(ms["adam-stacked"], n * ms["adam"])
    record = {
        "benchmark": "step_floor",
        "date": date.today().isoformat(),
        "command": " ".join(["python benchmarks/step_floor.py", *(sys.argv[1:] if argv is None else argv)]),
        "preset": args.preset,
        "batch_size": args.batch_size,
        "seeds": args.seeds,
        "threads": args.threads,
        "layers": layers,
        "ms_per_step": ms,
        "floor_ms": floor,
        "floor_over_bare": floor / ms["bare"],
        "step_target_over_bare": 0.8,
        "floor_stacked_ms": floor_stacked,
        "floor_stacked_over_bare": floor_stacked / ms["bare"],
        "stacked_target_over_one_seed": 2.0,
        "rounds_ms": times,
    }
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
