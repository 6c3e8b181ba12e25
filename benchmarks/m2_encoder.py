"""M2's q(z|x, y) with the images' first-layer product taken once against once per class, interleaved.

    python benchmarks/m2_encoder.py [--steps 20] [--repeats 3] [--threads 1] [--out FILE]
    python benchmarks/m2_encoder.py --profile [--steps 10] [--threads 1] --out FILE

In the unlabelled sum M2 encodes each image under each of the ten classes.
Joined, the encoder's input is cat([x, y]) for every (class, image) pair, so
its first layer (784 → 500 for ``m2-pyro``; the convolutions too with
``--net conv``) runs ten times on the same pixels. Split
(:func:`vaelab.nets.joined_layer`, what vaelab does), the images' product is
taken once and each class adds its own column. Times, for the ``m2-pyro``
preset (batch 200, 5% of the images labelled, as ``--labelled-per-batch 10``)
with each network and backend: full training steps (loss, backward, Adam),
and the evaluation's importance weights (100 samples of 100 images), the
joined form put back on the same model for the baseline. Prints medians and
the ratio joined/split (above 1: the split form is faster) and writes a JSON
record.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import seconds_per_step
from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches
from vaelab.models import build_model
from vaelab.objectives import clear_param_store
from vaelab.train import init_state


def joined(model):
    """Puts back, on this instance, the encoder's input as one tensor, cat([x, y]) repeated per class."""
    model._encode = lambda x, one_hot: model.guide_net(model.encoder, model._joined(x, one_hot))
    plain = model.encoder.forward
    model.encoder.forward = lambda x, condition=None: plain(
        x if condition is None else model._joined(x, condition)
    )
    return model


def fresh(config, spec, form):
    torch.manual_seed(0)
    clear_param_store()
    model = build_model(config.model, **config.model_args(spec))
    return joined(model) if form == "joined" else model


def step_seconds(config, images, spec, form, steps) -> float:
    model = fresh(config, spec, form)
    return seconds_per_step(init_state(config, model, images), images, config.batch_size, steps)


def weights_seconds(config, x, spec, form, calls) -> float:
    model = fresh(config, spec, form).eval()
    model.log_importance_weights(x, 100)
    start = time.perf_counter()
    for _ in range(calls):
        model.log_importance_weights(x, 100)
    return (time.perf_counter() - start) / calls


def profile(images, spec, steps: int) -> dict:
    """Where the split MLP step's time goes (torch backend): torch.profiler over `steps` steps.

    Returns the share of self CPU time in matrix products (aten::mm, aten::addmm)
    and their rate, from the profiler's own count of their floating-point work.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    from vaelab.train import train_step

    config = resolve(preset="m2-pyro", overrides={"device": "cpu"})
    state = init_state(config, fresh(config, spec, "split"), images)
    generator = torch.Generator().manual_seed(0)
    batches = [images.batch(torch.randint(len(images), (config.batch_size,), generator=generator))
               for _ in range(steps + 3)]  # fmt: skip
    for batch in batches[:3]:
        train_step(state, batch)
    with profiler(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for batch in batches[3:]:
            train_step(state, batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = [e for e in events if e.key in ("aten::mm", "aten::addmm")]
    product_us = sum(e.self_cpu_time_total for e in products)
    flops = sum(e.flops for e in products)
    return {
        "steps": steps,
        "ms_per_step_profiled": total / 1000 / steps,
        "matrix_product_share": product_us / total,
        "matrix_product_gflops_per_s": flops / (product_us * 1e-6) / 1e9,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "m2_encoder.json"))
    parser.add_argument(
        "--profile", action="store_true", help="only profile the split MLP step (torch backend) and print it"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pixels, labels = data.load("mnist", "train")
    pixels, labels = pixels[:10000], labels[:10000]
    rng = np.random.default_rng(0)
    partly = np.where(rng.random(len(labels)) < 0.05, labels, -1)
    images = ImageBatches(pixels, labels=partly, label_kind="classes")
    spec = images.spec._replace(num_classes=10)
    if args.profile:
        result = profile(images, spec, args.steps)
        print(json.dumps(result, indent=2))
        command = f"python benchmarks/m2_encoder.py --profile --steps {args.steps} --threads {args.threads}"
        record = {"benchmark": "m2_encoder --profile", "command": command, "date": time.strftime("%Y-%m-%d")}
        record |= {"machine": platform.processor() or platform.machine(), **result}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    x = torch.as_tensor(pixels[:100]).float().div(255).reshape(100, -1)
    cases = [(net, backend) for net in ("mlp", "conv") for backend in ("torch", "pyro")]
    times = {
        (case, form): []
        for case in [*cases, ("mlp", "weights"), ("conv", "weights")]
        for form in ("joined", "split")
    }
    for _ in range(args.repeats):
        for net, backend in cases:
            elbo = "enum" if backend == "pyro" else None
            config = resolve(
                preset="m2-pyro", overrides={"net": net, "backend": backend, "elbo": elbo, "device": "cpu"}
            )
            for form in ("joined", "split"):  # interleaved
                times[(net, backend), form].append(step_seconds(config, images, spec, form, args.steps))
        for net in ("mlp", "conv"):
            config = resolve(preset="m2-pyro", overrides={"net": net, "device": "cpu"})
            for form in ("joined", "split"):
                times[(net, "weights"), form].append(weights_seconds(config, x, spec, form, 3))
    print(f"{torch.get_num_threads()} thread(s), median of {args.repeats}: joined / split")
    rows = []
    for net, what in [*cases, ("mlp", "weights"), ("conv", "weights")]:
        j, s = (statistics.median(times[(net, what), form]) * 1000 for form in ("joined", "split"))
        label = "importance weights, 100 x 100" if what == "weights" else f"training step, {what}"
        print(f"  {net:4s} {label:32s} {j:8.1f} ms  {s:8.1f} ms  {j / s:.2f}x")
        runs = {form: [t * 1000 for t in times[(net, what), form]] for form in ("joined", "split")}
        rows.append(
            {"net": net, "what": label, "joined_ms": j, "split_ms": s, "ratio": j / s, "runs_ms": runs}
        )
    record = {
        "benchmark": "m2_encoder",
        "command": "python benchmarks/m2_encoder.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "out"),
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
