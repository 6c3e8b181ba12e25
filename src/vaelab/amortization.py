"""The amortisation gap (Cremer et al., 2018): how much ELBO the encoder gives away.

The amortised guide is one network q(z|x) for every image; the non-amortised
(mean-field) guide has a free Normal N(loc_i, scale_i) for each image i,
fitted by SVI with the decoder fixed (seed 003's ``svi_guide``). Starting from
the encoder's output and fitting each image's own (loc, scale), the ELBO can
only rise: the rise is the amortisation gap.

Written twice, like every objective:

- Pyro: the model's own program against a local guide whose ``pyro.param`` s
  ``local_loc`` and ``local_scale`` (N, z_dim) hold every image's parameters;
  each step reads the rows of its subsample of images under the data plate,
  and SVI with ``TraceMeanField_ELBO`` fits them (the decoder's weights are
  hidden from SVI);
- by hand: the same (loc, log scale) leaves fitted with torch's Adam on the
  model's :meth:`~vaelab.models.vae.VAE.terms_given`.

Images are fitted `batch_size` at a time, each subsample with a fresh Adam for
`steps` steps: every image gets exactly `steps` updates, whatever N is. Both
ELBOs are then estimated with the same `particles` draws per image (closed-form
KL), from a fixed seed.
"""

import contextlib
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO

from vaelab.data.batches import Batch, ImageBatches
from vaelab.errors import ConfigError
from vaelab.models.base import evaluating

GAP_BACKENDS = ("torch", "pyro")


def check_model(model, name: str) -> None:
    """Raises ConfigError if the gap cannot be measured for `model` (named `name`)."""
    if not model.one_gaussian_latent:
        why = "its latents are discrete" if model.discrete_latents else "its latents are not one Gaussian z"
        raise ConfigError(
            f"--amortization-gap: fits a Normal per image to a model with one Gaussian latent; "
            f"model {name} is not one ({why})"
        )


@contextlib.contextmanager
def _frozen(model):
    """The model's weights without gradients inside (the fit moves the local parameters alone)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def fit_local(model, batch: Batch, steps: int, lr: float, backend: str, batch_size: int | None = None):
    """Returns (loc, scale), (N, z_dim) each, a Normal fitted to each of `batch`'s N images.

    Each starts from the encoder's output; the images are fitted `batch_size`
    at a time (all at once if None), each subsample with a fresh Adam for
    `steps` steps, so every image gets exactly `steps` updates.
    """
    n = len(batch.x)
    with torch.no_grad():
        loc, scale = model.encode(batch)
    index = torch.arange(n, device=loc.device)
    subsamples = index.split(batch_size or n)
    with _frozen(model):
        if backend == "pyro":
            return _fit_pyro(model, batch, loc, scale, subsamples, steps, lr)
        fitted = [_fit_by_hand(model, _rows(batch, i), loc[i], scale[i], steps, lr) for i in subsamples]
    return torch.cat([f[0] for f in fitted]), torch.cat([f[1] for f in fitted])


def _rows(batch: Batch, index) -> Batch:
    return Batch(batch.x[index], None if batch.y is None else batch.y[index])


def _fit_by_hand(model, batch, loc, scale, steps, lr):
    loc, log_scale = loc.clone().requires_grad_(), scale.log().requires_grad_()
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    for _ in range(steps):
        log_px_z, kl = model.terms_given(batch, loc, log_scale.exp())
        optimizer.zero_grad()
        (kl - log_px_z).sum().backward()
        optimizer.step()
    return loc.detach(), log_scale.detach().exp()


def _fit_pyro(model, batch, loc, scale, subsamples, steps, lr):
    store = pyro.get_param_store()
    for name in ("local_loc", "local_scale"):
        if name in store:
            del store[name]

    def local_guide(batch, index):
        # A row per image of the whole set; the subsample's rows, under the data plate.
        locs = pyro.param("local_loc", lambda: loc.clone())
        scales = pyro.param("local_scale", lambda: scale.clone(), constraint=dist.constraints.positive)
        with pyro.plate("data", len(index)):
            pyro.sample("z", dist.Normal(locs[index], scales[index]).to_event(1))

    def fixed_model(batch, index):
        with poutine.block(hide_types=["param"]), model.unweighted(), warnings.catch_warnings():
            # The decoder stays as it is: hidden from SVI, and frozen (which pyro.module remarks on).
            warnings.filterwarnings("ignore", message=".*not registered in the param store")
            model.model(batch)

    elbo = TraceMeanField_ELBO(max_plate_nesting=1)
    for index in subsamples:
        # A fresh Adam per subsample: rows outside it have no gradient and no
        # moments, so they do not move.
        svi = SVI(fixed_model, local_guide, pyro.optim.Adam({"lr": lr}), elbo)
        sub = _rows(batch, index)
        for _ in range(steps):
            svi.step(sub, index)
    fitted = store["local_loc"].detach(), store["local_scale"].detach()
    del store["local_loc"], store["local_scale"]
    return fitted


def amortization_gap(
    model,
    images: ImageBatches,
    num_images=1000,
    steps=500,
    lr=1e-2,
    batch_size=100,
    particles=100,
    backend="torch",
    seed=0,
) -> dict:
    """Returns the amortised and optimised ELBOs of the first `num_images` images, and their gap (nats)."""
    if backend not in GAP_BACKENDS:
        raise ConfigError(f"gap backend must be one of {', '.join(GAP_BACKENDS)}, got {backend!r}")
    if steps < 1 or num_images < 1:
        raise ConfigError(f"--gap-steps and --gap-images must be at least 1, got {steps} and {num_images}")
    num_images = min(num_images, len(images))
    device = images.pixels.device
    totals = {"amortized": 0.0, "optimized": 0.0}
    with evaluating(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        everything = images.batch(torch.arange(num_images, device=device))
        torch.manual_seed(seed)
        with torch.enable_grad():
            loc, scale = fit_local(model, everything, steps, lr, backend, batch_size)
        for index in torch.arange(num_images, device=device).split(batch_size):
            batch = _rows(everything, index)
            for name, q in (("amortized", model.encode(batch)), ("optimized", (loc[index], scale[index]))):
                torch.manual_seed(seed)  # the same draws for both guides
                log_px_z, kl = model.terms_given(batch, *q, particles=particles)
                totals[name] += (log_px_z - kl).sum().item()
    amortized, optimized = totals["amortized"] / num_images, totals["optimized"] / num_images
    return {
        "amortized_elbo": amortized,
        "optimized_elbo": optimized,
        "amortization_gap": optimized - amortized,
        "gap_images": num_images,
        "gap_steps": steps,
        "gap_lr": lr,
        "gap_particles": particles,
        "gap_backend": backend,
    }
