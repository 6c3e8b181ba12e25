"""Training on one GPU: eager steps against --cuda-graph, and the MNIST epoch (issue 15's 0.3 s).

    python benchmarks/gpu_epoch.py [--epochs 3] [--out DIR] [--part check|time|all] [--only NAME ...]

Needs a CUDA device. Three parts, in one run:

1. Check. For each torch-backend model and objective below, two states of
   the same seed train the same 30 batches (the last one smaller): one
   eager, one with --cuda-graph. Both have a `capturable` Adam, so the
   graph replays the very kernels the eager step runs: the weights should be
   equal, bit for bit. A third state, eager with the default fused Adam,
   gives the gap that capturable Adam alone makes (float32 bias correction on
   the device instead of float64 on the host). A model that cannot be
   captured is listed with its error.
2. The MNIST epoch: the `pyro-tutorial` network (784-400-50, softplus) at
   batch 128, 469 steps, timed per epoch, interleaved, median of --epochs:
   pytorch/examples' loop as written (a CPU DataLoader, .to(device) and
   loss.item() every step), a bare loop over images already on the GPU,
   vaelab eager, vaelab --cuda-graph, and vaelab's Pyro backend (trace).
3. Small batches: seconds per step, eager against --cuda-graph, for batch 20
   (Burda et al.'s VAE and IWAE K=50) and batch 64 (the conv VAE), and
   M2's epoch (eager; its step splits by known labels, so no graph).

Prints a table; writes gpu_epoch.json (gpu_epoch_check.json, gpu_epoch_time.json for one
part) under --out (default benchmarks/results).
"""

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from epoch_speed import ExamplesVAE
from vaelab.config import resolve
from vaelab.objectives import clear_param_store
from vaelab.train import build_state, start_epoch, train_epoch, train_step

CHECKS = {  # name: (preset, overrides)
    "vae (pyro-tutorial)": ("pyro-tutorial", {}),
    "vae relu (pytorch-examples)": ("pytorch-examples", {}),
    "beta-vae": ("pyro-tutorial", {"model": "beta-vae"}),
    "cvae": ("pyro-tutorial", {"model": "cvae"}),
    "vampprior": ("pyro-tutorial", {"model": "vampprior"}),
    "vae iwae K=50": ("burda-1layer-iwae-k50", {}),
    "vae dreg K=5": ("burda-1layer-iwae-k5", {"elbo": "dreg"}),
    "vae trace K=5": ("burda-1layer-vae-k5", {}),
    "two-layer-vae iwae K=5": ("burda-2layer-iwae-k5", {}),
    "vae conv": ("pyro-tutorial", {"net": "conv"}),
    "vae dynamic binarisation": ("iwae-paper", {}),
    "cvae-completion (baseline phase)": ("pyro-cvae-q1", {"baseline_epochs": 1}),
    "air": ("air", {"backend": "torch"}),
}


def weights(state) -> list:
    return [p.detach().clone() for p in state.model.parameters()]


def check(name, preset, overrides, steps=30) -> dict:
    """Trains `steps` batches eagerly and as a graph from one seed; returns their differences."""
    results = {}
    try:
        runs = {}
        for kind in ("graph", "eager-capturable", "eager-fused"):
            config = resolve(
                preset=preset,
                overrides={**overrides, "device": "cuda", "cuda_graph": kind != "eager-fused", "epochs": 1},
            )
            state = build_state(config)
            if kind == "eager-capturable":
                state.graph = None
            start_epoch(state, 1)
            images = state.train_data
            generator = torch.Generator().manual_seed(1)
            sizes = [config.batch_size] * (steps - 1) + [config.batch_size // 2 + 1]
            losses = []
            torch.manual_seed(123)
            torch.cuda.manual_seed(123)
            for size in sizes:
                index = torch.randint(len(images), (size,), generator=generator).to(images.pixels.device)
                losses.append(train_step(state, images.batch(index)).loss.item())
            torch.cuda.synchronize()
            runs[kind] = (weights(state), losses, torch.cuda.get_rng_state())
            if state.graph is not None:
                results["captures"] = state.graph.captures

        def gap(a, b):
            wa, la, ra = runs[a]
            wb, lb, rb = runs[b]
            return {
                "max_weight_diff": max((x - y).abs().max().item() for x, y in zip(wa, wb, strict=True)),
                "max_loss_diff": max(abs(x - y) for x, y in zip(la, lb, strict=True)),
                "rng_equal": bool(torch.equal(ra, rb)),
            }

        results["graph_vs_eager_capturable"] = gap("graph", "eager-capturable")
        results["graph_vs_eager_fused"] = gap("graph", "eager-fused")
        results["final_loss"] = runs["graph"][1][-2]
    except Exception as e:  # noqa: BLE001 - a model that cannot be captured is a result
        results["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        results["trace"] = traceback.format_exc(limit=4)
    return results


def vaelab_epoch(overrides, preset="pyro-tutorial"):
    config = resolve(preset=preset, overrides={"device": "cuda", **overrides})
    clear_param_store()
    state = build_state(config)
    counter = iter(range(1, 10**6))

    def epoch():
        n = next(counter)
        start_epoch(state, n)
        return train_epoch(state, n, progress=False)

    return epoch


def examples_loop(floats, device, batch_size):
    loader = DataLoader(TensorDataset(floats), batch_size=batch_size, shuffle=True)
    model = ExamplesVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch():
        total = 0.0
        for (x,) in loader:
            x = x.to(device)
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = F.binary_cross_entropy(recon, x, reduction="sum")
            loss = loss - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss.backward()
            total += loss.item()
            optimizer.step()
        return total

    return epoch


def bare_loop(floats, device, batch_size):
    """The same network, its images already on the GPU, no host read until the epoch ends."""
    x_all = floats.to(device)
    model = ExamplesVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def epoch():
        total = torch.zeros((), device=device)
        order = torch.randperm(len(x_all), device=device)
        for start in range(0, len(x_all), batch_size):
            x = x_all[order[start : start + batch_size]]
            optimizer.zero_grad(set_to_none=True)
            recon, mu, logvar = model(x)
            loss = F.binary_cross_entropy(recon, x, reduction="sum")
            loss = loss - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss.backward()
            optimizer.step()
            total += loss.detach()
        return total.item()

    return epoch


def timed(loops: dict, repeats: int) -> dict:
    for epoch in loops.values():  # warm-up: CUDA context, cuBLAS, the graphs' first capture
        epoch()
    times = {name: [] for name in loops}
    for _ in range(repeats):
        for name, epoch in loops.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            epoch()
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "all_s": t} for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loop (median reported)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--part",
        choices=("check", "time", "all"),
        default="all",
        help="check alone, the timings alone, or both (a failed capture can leave torch's CUDA generator "
        "unusable for the rest of the process: run the parts as two processes to be safe)",
    )
    parser.add_argument("--only", nargs="*", help="check only these models (names as listed)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_epoch.py: needs a CUDA device; torch sees none", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    print(f"device {out['device']}, torch {out['torch']}", flush=True)

    json_name = "gpu_epoch.json" if args.part == "all" else f"gpu_epoch_{args.part}.json"
    if args.part in ("check", "all"):
        out["check"] = {}
        for name, (preset, overrides) in CHECKS.items():
            if args.only and name not in args.only:
                continue
            result = check(name, preset, overrides)
            out["check"][name] = result
            if "error" in result:
                print(f"check {name:28s} ERROR {result['error']}\n{result['trace']}", flush=True)
            else:
                a, b = result["graph_vs_eager_capturable"], result["graph_vs_eager_fused"]
                print(
                    f"check {name:28s} vs eager capturable: weights {a['max_weight_diff']:.2e} "
                    f"loss {a['max_loss_diff']:.2e} rng {a['rng_equal']}; vs fused: weights "
                    f"{b['max_weight_diff']:.2e} loss {b['max_loss_diff']:.2e}; "
                    f"captures {result['captures']}",
                    flush=True,
                )

    if args.part == "check":
        return finish(out, args.out, json_name)
    from vaelab import data

    train_images, _ = data.load("mnist", "train")
    floats = torch.from_numpy(train_images).float().div(255).reshape(len(train_images), -1)
    batch = 128
    loops = {
        "A: pytorch/examples loop": examples_loop(floats, device, batch),
        "bare eager loop, data on GPU": bare_loop(floats, device, batch),
        "vaelab torch": vaelab_epoch({"batch_size": batch}),
        "vaelab torch --cuda-graph": vaelab_epoch({"batch_size": batch, "cuda_graph": True}),
        "vaelab pyro trace": vaelab_epoch({"batch_size": batch, "backend": "pyro", "elbo": "trace"}),
    }
    out["epoch"] = timed(loops, args.epochs)
    med = {name: r["median_s"] for name, r in out["epoch"].items()}
    print(f"\nMNIST epoch, pyro-tutorial network, batch {batch} (median of {args.epochs}):")
    for name, seconds in med.items():
        print(f"  {name:34s} {seconds:7.3f} s")
    graph = med["vaelab torch --cuda-graph"]
    out["epoch_ratios"] = {
        "vaelab torch / --cuda-graph": med["vaelab torch"] / graph,
        "bare eager loop / --cuda-graph": med["bare eager loop, data on GPU"] / graph,
        "A / --cuda-graph": med["A: pytorch/examples loop"] / graph,
        "vaelab torch / bare eager loop": med["vaelab torch"] / med["bare eager loop, data on GPU"],
        "vaelab pyro / vaelab torch": med["vaelab pyro trace"] / med["vaelab torch"],
    }
    for name, ratio in out["epoch_ratios"].items():
        print(f"  {name:34s} {ratio:6.2f}x")

    small = {
        "burda vae K=1, batch 20": ("burda-1layer-vae-k1", {}),
        "burda iwae K=50, batch 20": ("burda-1layer-iwae-k50", {}),
        "conv vae, batch 64": ("pyro-tutorial", {"net": "conv", "batch_size": 64}),
    }
    out["small_batch"] = {}
    print("\nseconds per epoch and per step, eager against --cuda-graph (median of epochs):")
    for name, (preset, overrides) in small.items():
        loops = {
            kind: vaelab_epoch({**overrides, "cuda_graph": kind == "graph"}, preset)
            for kind in ("eager", "graph")
        }
        result = timed(loops, args.epochs)
        steps = 60000 // resolve(preset=preset, overrides=overrides).batch_size
        eager, graph = result["eager"]["median_s"], result["graph"]["median_s"]
        out["small_batch"][name] = {**result, "steps": steps, "eager_over_graph": eager / graph}
        print(
            f"  {name:28s} eager {eager:6.2f} s ({1e3 * eager / steps:.3f} ms/step)  graph {graph:6.2f} s "
            f"({1e3 * graph / steps:.3f} ms/step)  {eager / graph:5.2f}x",
            flush=True,
        )
    m2 = timed({"m2": vaelab_epoch({"labelled_per_batch": 10}, "m2-pyro")}, 2)
    out["m2_epoch_s"] = m2["m2"]["median_s"]
    print(f"  M2 (m2-pyro, --labelled-per-batch 10) eager epoch {out['m2_epoch_s']:.2f} s")
    return finish(out, args.out, json_name)


def finish(out: dict, folder, name) -> int:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / name).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
