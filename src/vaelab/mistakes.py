"""Does a probabilistic program catch mistakes that a hand-written loss lets through?

The seed slides claim Pyro is "more reliable" because type and shape mistakes
get caught. This module tests the claim: each common mistake is run through

- ``naive``: the hand-written loss of pytorch/examples (seed 004): sigmoid
  decoder, ``F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")``
  plus the closed-form KL;
- ``pyro``: the Pyro tutorial's style of program: ``model``/``guide`` with a
  plate, ``.to_event(1)``, ``Bernoulli(probs, validate_args=False)`` on
  ``x.reshape(-1, 784)``, fitted by ``Trace_ELBO`` with Pyro's validation on;
- ``vaelab-torch`` and ``vaelab-pyro``: vaelab's own two backends.

and the outcome is recorded: a loud error (with its first line), a silently
wrong number, or the right number. The comparison page reports the table.
"""

import functools
import warnings
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from vaelab.models import VAE
from vaelab.objectives import make_objective

X_DIM, Z_DIM, BATCH = 784, 20, 32


def naive_loss(vae, x, kl_axis=None):
    """pytorch/examples' loss: BCE on sigmoid outputs + closed-form KL, summed."""
    z_loc, z_scale = vae.encoder(x.view(-1, X_DIM))
    z = z_loc + z_scale * torch.randn_like(z_scale)
    recon = torch.sigmoid(vae.decoder(z))
    bce = F.binary_cross_entropy(recon, x.view(-1, X_DIM), reduction="sum")
    log_var = 2 * torch.log(z_scale)
    terms = 1 + log_var - z_loc.pow(2) - log_var.exp()
    kld = -0.5 * (terms.sum() if kl_axis is None else terms.sum(dim=kl_axis))
    return bce + kld


def tutorial_model(vae, x, latent_event_dims=1, prior_dim=Z_DIM):
    pyro.module("decoder", vae.decoder)
    with pyro.plate("data", x.shape[0]):
        prior = dist.Normal(x.new_zeros((x.shape[0], prior_dim)), x.new_ones((x.shape[0], prior_dim)))
        z = pyro.sample("z", prior.to_event(latent_event_dims) if latent_event_dims else prior)
        probs = torch.sigmoid(vae.decoder(z))
        pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x.reshape(-1, X_DIM))


def tutorial_guide(vae, x, latent_event_dims=1, prior_dim=Z_DIM):
    pyro.module("encoder", vae.encoder)
    with pyro.plate("data", x.shape[0]):
        z_loc, z_scale = vae.encoder(x.reshape(-1, X_DIM))
        posterior = dist.Normal(z_loc, z_scale)
        pyro.sample("z", posterior.to_event(latent_event_dims) if latent_event_dims else posterior)


def pyro_loss(vae, x, **options):
    elbo = pyro.infer.Trace_ELBO()
    return elbo.differentiable_loss(
        lambda x: tutorial_model(vae, x, **options), lambda x: tutorial_guide(vae, x, **options), x
    )


@dataclass
class Mistake:
    """A mistake: what it is, and how each path is handed it."""

    name: str
    what: str
    inputs: callable  # (x, labels) -> (the mistaken input, the correct input)
    naive: dict
    pyro: dict


def _images(x, labels):
    return x.view(-1, 1, 28, 28), x


def _bytes(x, labels):
    return x * 255, x


def _labels(x, labels):
    return labels, x


def _same(x, labels):
    return x, x


MISTAKES = [
    Mistake("images-not-flat", "images (B, 1, 28, 28) where (B, 784) is meant", _images, {}, {}),
    Mistake("pixels-0-255", "pixels in [0, 255] instead of [0, 1]", _bytes, {}, {}),
    Mistake("labels-as-pixels", "the label tensor (B,) passed where the images go", _labels, {}, {}),
    Mistake(
        "latent-size", "a prior of 10 dimensions for a 20-dimensional latent", _same, {}, {"prior_dim": 10}
    ),
    Mistake(
        "kl-wrong-axis",
        "KL summed over the batch axis, not the latent axis (Pyro: .to_event(1) left out)",
        _same,
        {"kl_axis": 0},
        {"latent_event_dims": 0},
    ),
]


def _outcome(loss_fn, correct: float) -> dict:
    """Runs `loss_fn` on seed 0 and says what happened.

    Returns {"outcome": ..., "detail": ...} with outcome "error" (raised),
    "warning" (warned; the number it gave is in the detail), "wrong" (a number
    unlike `correct`, silently) or "right". `correct` is the same path's loss
    on the correct input with the same seed.
    """
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loss = loss_fn()
            note = ""
            if loss.dim() != 0:  # backward() demands a scalar; a user sums it
                note = f" (loss had shape {tuple(loss.shape)}; summed for backward)"
                loss = loss.sum()
            loss.backward()
        except Exception as e:  # every failure is a finding, whatever its type
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return {"outcome": "error", "detail": f"{type(e).__name__}: {first}"[:200]}
    value = loss.item()
    detail = f"loss {value:.6g}, correct {correct:.6g}{note}"
    if caught:
        return {
            "outcome": "warning",
            "detail": f"{caught[0].category.__name__}: {caught[0].message}; {detail}"[:200],
        }
    right = abs(value - correct) <= 1e-4 * abs(correct)
    return {"outcome": "right" if right else "wrong", "detail": detail}


def _value(loss_fn) -> float:
    torch.manual_seed(0)
    return loss_fn().item()


PATHS = ("naive", "pyro", "vaelab-torch", "vaelab-pyro")


def _path_loss(path: str, vae, mistake, inputs):
    """Returns the loss of `path` on `inputs`, with `mistake` made (None: no mistake)."""
    if path == "naive":
        return naive_loss(vae, inputs, **(mistake.naive if mistake else {}))
    if path == "pyro":
        return pyro_loss(vae, inputs, **(mistake.pyro if mistake else {}))
    model = _vaelab_model(vae, mistake) if mistake else vae
    objective = make_objective("torch") if path == "vaelab-torch" else make_objective("pyro", "trace")
    return objective(model, inputs).loss


def run_study(seed=0) -> list:
    """Returns one finding per mistake: its name, what it is, and each path's outcome."""
    torch.manual_seed(seed)
    vae = VAE(X_DIM, Z_DIM, (64,), "relu")
    x = torch.rand(BATCH, X_DIM)
    labels = torch.randint(0, 10, (BATCH,))
    findings = []
    with pyro.validation_enabled(True):
        for mistake in MISTAKES:
            wrong_input, right_input = mistake.inputs(x, labels)
            row = {"name": mistake.name, "what": mistake.what}
            for path in PATHS:
                pyro.clear_param_store()
                correct = _value(functools.partial(_path_loss, path, vae, None, right_input))
                row[path] = _outcome(functools.partial(_path_loss, path, vae, mistake, wrong_input), correct)
                vae.zero_grad()
            findings.append(row)
    return findings


class _PriorOfWrongSize(VAE):
    """vaelab's VAE whose model declares a prior of another size, as a user's variant might."""

    def model(self, batch):
        x = batch.x
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros((x.shape[0], 10)), x.new_ones((x.shape[0], 10)))
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1), obs=x)

    def elbo(self, batch, analytic_kl=True):
        x = batch.x
        z_loc, z_scale = self.encoder(x)
        z = z_loc + z_scale * torch.randn_like(z_loc)
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        prior = torch.distributions.Normal(torch.zeros(x.shape[0], 10), torch.ones(x.shape[0], 10))
        return log_px - (torch.distributions.Normal(z_loc, z_scale).log_prob(z) - prior.log_prob(z)).sum(-1)


class _KLOverBatch(VAE):
    """vaelab's VAE with the latent axis mishandled in both halves, as a user's variant might.

    The hand-written half sums the KL over the batch; the Pyro half leaves out
    ``.to_event(1)``, so the latent's 20 dimensions are taken for batch ones.
    """

    def guide(self, batch):
        x = batch.x
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale))

    def elbo(self, batch, analytic_kl=True):
        x = batch.x
        z_loc, z_scale = self.encoder(x)
        z = z_loc + z_scale * torch.randn_like(z_loc)
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        kl = 0.5 * (z_loc**2 + z_scale**2 - 1).sum(0) - torch.log(z_scale).sum(0)
        return log_px.sum() - kl  # (latent,) instead of (batch,)


def _vaelab_model(vae, mistake):
    """Returns vaelab's model for a mistake: the VAE itself, or a user's variant that makes it."""
    variants = {"latent-size": _PriorOfWrongSize, "kl-wrong-axis": _KLOverBatch}
    if mistake.name not in variants:
        return vae
    variant = variants[mistake.name](X_DIM, Z_DIM, (64,), "relu")
    variant.load_state_dict(vae.state_dict())
    return variant
