"""One MNIST training epoch, vaelab against the loops people write by hand.

    python benchmarks/epoch_speed.py [--epochs 3] [--threads N]

The network is `pyro-tutorial`'s (784-400-50, softplus) at batch 128 with
Adam 1e-3, over the 60,000 training images. In one run, interleaved, each
timed for --epochs full epochs (median reported):

  A. pytorch/examples' loop: DataLoader over a TensorDataset, shuffled,
     loss.item() every step, the closed-form loss written by hand;
  B. the Pyro tutorial's loop: the same DataLoader, SVI(model, guide,
     pyro.optim.Adam, Trace_ELBO()).step(x);
  vaelab torch; vaelab pyro with Trace_ELBO, with TraceMeanField_ELBO, and
  with its compiled form JitTraceMeanField_ELBO (--elbo jit-meanfield).

Also timed, as a floor no loop can go under: an epoch of nothing but the
matrix products of each step (the forward's five, and the backward's nine),
at the same shapes. Prints seconds per epoch, the ratios baseline/vaelab,
and the achieved GFLOP/s against a matrix-product peak measured in the same
run; writes benchmarks/results/epoch_speed.json.
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common import matmul_peak
from vaelab import data
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches
from vaelab.fileio import write_json
from vaelab.models import build_model
from vaelab.train import init_state, train_epoch

X_DIM, HIDDEN, Z_DIM, BATCH = 784, 400, 50, 128


def epoch_gflop(n_images: int) -> float:
    """Forward and backward FLOPs of one epoch: 3 × 2 × multiply-adds of the four products."""
    macs = X_DIM * HIDDEN + 2 * HIDDEN * Z_DIM + Z_DIM * HIDDEN + HIDDEN * X_DIM
    return 3 * 2 * macs * n_images / 1e9


class ExamplesVAE(nn.Module):
    """pytorch/examples' VAE, at the pyro-tutorial sizes."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = (
            nn.Linear(X_DIM, HIDDEN),
            nn.Linear(HIDDEN, Z_DIM),
            nn.Linear(HIDDEN, Z_DIM),
        )
        self.fc3, self.fc4 = nn.Linear(Z_DIM, HIDDEN), nn.Linear(HIDDEN, X_DIM)

    def forward(self, x):
        h = F.softplus(self.fc1(x.view(-1, X_DIM)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.softplus(self.fc3(z)))), mu, logvar


def baseline_a(loader):
    model = ExamplesVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch():
        train_loss = 0.0
        for (x,) in loader:
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            bce = F.binary_cross_entropy(recon, x.view(-1, X_DIM), reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        return train_loss

    return epoch


class TutorialVAE(ExamplesVAE):
    """The Pyro tutorial's VAE: the same layers, as an encoder, a decoder, a model and a guide."""

    def encoder(self, x):
        h = F.softplus(self.fc1(x.reshape(-1, X_DIM)))
        return self.fc21(h), torch.exp(self.fc22(h))

    def decoder(self, z):
        return torch.sigmoid(self.fc4(F.softplus(self.fc3(z))))

    def model(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = x.new_zeros((x.shape[0], Z_DIM)), x.new_ones((x.shape[0], Z_DIM))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            pyro.sample(
                "obs",
                dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1),
                obs=x.reshape(-1, X_DIM),
            )

    def guide(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def baseline_b(loader):
    pyro.clear_param_store()
    vae = TutorialVAE()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())

    def epoch():
        loss = 0.0
        for (x,) in loader:
            loss += svi.step(x)
        return loss

    return epoch


def products_only(n_images):
    """An epoch of only the matrix products a step of this network does, at batch 128."""
    shapes = [(X_DIM, HIDDEN), (HIDDEN, Z_DIM), (HIDDEN, Z_DIM), (Z_DIM, HIDDEN), (HIDDEN, X_DIM)]
    weights = [torch.randn(n_out, n_in) / n_in**0.5 for n_in, n_out in shapes]
    inputs = [torch.rand(BATCH, n_in) for n_in, _ in shapes]
    grads = [torch.randn(BATCH, n_out) for _, n_out in shapes]
    steps = (n_images + BATCH - 1) // BATCH

    def epoch():
        with torch.no_grad():
            for _ in range(steps):
                for i, (w, x, g) in enumerate(zip(weights, inputs, grads, strict=True)):
                    x @ w.T  # forward
                    g.T @ x  # weight gradient
                    if i > 0:  # input gradient (none for the images)
                        g @ w

    return epoch


def vaelab_loop(images, backend, elbo):
    config = resolve(
        preset="pyro-tutorial",
        overrides={"batch_size": BATCH, "backend": backend, "elbo": elbo, "device": "cpu"},
    )
    model = build_model("vae", **config.model_args(images.spec))
    state = init_state(config, model, images)
    counter = iter(range(1, 10**6))

    def epoch():
        pyro.clear_param_store()
        return train_epoch(state, next(counter), progress=False)

    return epoch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loop (median reported)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_images, _ = data.load("mnist", "train")
    floats = torch.from_numpy(train_images).float().div(255)
    loader = DataLoader(TensorDataset(floats), batch_size=BATCH, shuffle=True)
    images = ImageBatches(train_images, "none")
    loops = {
        "floor: matrix products only": products_only(len(floats)),
        "A: pytorch/examples loop": baseline_a(loader),
        "B: Pyro tutorial SVI loop": baseline_b(loader),
        "vaelab torch": vaelab_loop(images, "torch", None),
        "vaelab pyro trace": vaelab_loop(images, "pyro", "trace"),
        "vaelab pyro meanfield": vaelab_loop(images, "pyro", "meanfield"),
        "vaelab pyro jit-meanfield": vaelab_loop(images, "pyro", "jit-meanfield"),
    }
    peak = matmul_peak()
    times = {name: [] for name in loops}
    for _ in range(args.epochs):  # interleaved, so drifts in machine speed hit every loop alike
        for name, epoch in loops.items():
            start = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - start)
    gflop = epoch_gflop(len(floats))
    median = {name: statistics.median(t) for name, t in times.items()}
    a, b = median["A: pytorch/examples loop"], median["B: Pyro tutorial SVI loop"]
    torch_s, floor = median["vaelab torch"], median["floor: matrix products only"]
    ratios = {
        "A / vaelab torch": a / torch_s,
        "B / vaelab pyro meanfield": b / median["vaelab pyro meanfield"],
        "B / vaelab pyro trace": b / median["vaelab pyro trace"],
        "vaelab pyro meanfield / vaelab torch": median["vaelab pyro meanfield"] / torch_s,
        "B / vaelab pyro jit-meanfield": b / median["vaelab pyro jit-meanfield"],
        "vaelab pyro jit-meanfield / vaelab torch": median["vaelab pyro jit-meanfield"] / torch_s,
        "A / floor (no loop can beat this ratio)": a / floor,
        "vaelab torch / floor": torch_s / floor,
    }
    threads = torch.get_num_threads()
    print(f"matrix-product peak {peak:.1f} GFLOP/s; an epoch is {gflop:.0f} GFLOP; threads {threads}")
    for name, seconds in median.items():
        rate = gflop / seconds
        print(f"{name:30s} {seconds:6.2f} s/epoch  {rate:6.1f} GFLOP/s  {rate / peak:5.0%} of peak")
    for name, ratio in ratios.items():
        print(f"{name:44s} {ratio:5.2f}×")
    write_json(
        Path(args.results) / "epoch_speed.json",
        {
            "command": "python " + " ".join(sys.argv),
            "threads": torch.get_num_threads(),
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "pyro": pyro.__version__,
            },
            "epoch_gflop": gflop,
            "matmul_peak_gflops": peak,
            "seconds_per_epoch": times,
            "median_seconds": median,
            "gflops": {name: gflop / s for name, s in median.items()},
            "ratios": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
