"""How the cost of an epoch grows with the work, and the memory of a full MNIST run.

    python benchmarks/scaling.py

Times one training epoch (torch backend, Adam, the `pyro-tutorial` network
unless the sweep changes it) against: training-set size (5k to 60k images;
expected linear), batch size (32 to 1024), latent size and hidden width.
Then runs `vaelab train --preset pyro-tutorial --epochs 1` on all of MNIST in
a child process and reads its peak resident memory (target: under 1 GiB).
Writes benchmarks/results/scaling.json and scaling.png.
"""

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches
from vaelab.fileio import write_json
from vaelab.models import build_model
from vaelab.train import init_state, train_epoch

SWEEPS = {
    "images": [5000, 10000, 20000, 40000, 60000],
    "batch_size": [32, 64, 128, 256, 512, 1024],
    "z_dim": [10, 20, 50, 100, 200],
    "hidden": [100, 200, 400, 800, 1600],
}
FIXED_IMAGES = 20000  # for the sweeps other than "images"


def epoch_seconds(images: np.ndarray, **overrides) -> float:
    """Returns the seconds of one training epoch over `images` with `overrides` to pyro-tutorial."""
    config = resolve(preset="pyro-tutorial", overrides={"device": "cpu", "batch_size": 128, **overrides})
    batches = ImageBatches(images, "none")
    model = build_model("vae", **config.model_args(batches.spec))
    return train_epoch(init_state(config, model, batches), 1, progress=False).seconds


def peak_memory_of_a_full_run() -> float:
    """Returns the peak resident memory (GiB) of `vaelab train` for one pyro-tutorial epoch on MNIST."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "vaelab",
            "train",
            "--preset",
            "pyro-tutorial",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--no-plots",
            "--out",
            str(Path(tmp) / "run"),
        ]
        subprocess.run(command, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    train_images, _ = data.load("mnist", "train")
    record = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "sweeps": {},
    }
    epoch_seconds(train_images[:FIXED_IMAGES])  # warm-up: the first epoch of a process is slower
    for name, values in SWEEPS.items():
        rows = []
        for value in values:
            if name == "images":
                seconds = epoch_seconds(train_images[:value])
            else:
                setting = {"hidden": (value,)} if name == "hidden" else {name: value}
                seconds = epoch_seconds(train_images[:FIXED_IMAGES], **setting)
            rows.append({"value": value, "seconds": seconds})
            print(f"{name:10s} {value:6d}: {seconds:6.2f} s/epoch", flush=True)
        record["sweeps"][name] = rows
    sizes = np.array([r["value"] for r in record["sweeps"]["images"]], dtype=float)
    times = np.array([r["seconds"] for r in record["sweeps"]["images"]])
    slope, intercept = np.polyfit(sizes, times, 1)
    residual = np.abs(times - (slope * sizes + intercept)).max() / times.max()
    record["images_linear_fit"] = {
        "seconds_per_1000_images": slope * 1000,
        "intercept_seconds": intercept,
        "max_residual_fraction": residual,
    }
    print(
        f"time ~ {slope * 1000:.3f} s per 1000 images + {intercept:.2f} s (largest residual {residual:.1%})"
    )
    record["peak_rss_gib_full_mnist_run"] = peak_memory_of_a_full_run()
    print(f"peak resident memory of a full MNIST run: {record['peak_rss_gib_full_mnist_run']:.2f} GiB")
    write_json(Path(args.results) / "scaling.json", record)
    draw(record, Path(args.results) / "scaling.png")
    return 0


def draw(record, path) -> None:
    from matplotlib.ticker import ScalarFormatter

    from vaelab import plots

    fig, axes = plots.plt.subplots(1, 4, figsize=(15, 3.8), layout="constrained")
    labels = {
        "images": "training images",
        "batch_size": "batch size",
        "z_dim": "latent size",
        "hidden": "hidden width",
    }
    for ax, (name, rows) in zip(axes, record["sweeps"].items(), strict=True):
        ax.plot([r["value"] for r in rows], [r["seconds"] for r in rows], "o-")
        ax.set_xlabel(labels[name])
        if name == "images":
            ax.set_ylabel("seconds per epoch")
            ax.set_title("epoch time vs data size")
        else:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_title(f"{labels[name]} ({FIXED_IMAGES // 1000}k images)")
        ax.grid(alpha=0.3)
    fig.suptitle("vaelab torch backend, pyro-tutorial network unless varied, 2-core CPU")
    plots.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
