"""Two stochastic layers (Burda et al., 2015, the IWAE paper's second architecture), written twice.

Generative model p(z2) p(z1|z2) p(x|z1); guide q(z1|x) q(z2|z1)::

    x  -> 200 -> 200 (tanh) -> z1 (100) -> 100 -> 100 (tanh) -> z2 (50)     q
    z2 -> 100 -> 100 (tanh) -> z1 (100) -> 200 -> 200 (tanh) -> x           p

Each Gaussian layer gives a mean and, through exp, a standard deviation; the
pixels are Bernoulli. The widths are those of the authors' code, which made
the paper's Table 1 (github.com/yburda/iwae, experiments.py: hidden units
[[200, 200], [100, 100]] for two layers); the paper's text gives half of
them ("two deterministic layers of 100 units between x and h1, two of 50
units between h1 and h2"), which vaelab used until 2026-11-23 and which
learns far slower on the short schedule (benchmarks/results/README.md,
"Two stochastic layers: the code's widths").

- Pyro: ``model`` samples z2, z1, then observes x; ``guide`` samples z1 then z2.
- by hand: :meth:`TwoLayerVAE.log_weights` draws the same noise in the same
  order (eps1 (K, B, 100), then eps2 (K, B, 50)), so both halves agree draw for draw.

Its KL has no closed form (q(z2|z1) and p(z1|z2) depend on the draws), so the
ELBO is always estimated at the draws (``Trace_ELBO``'s form); ``meanfield``
does not apply (the guide is not mean-field).
"""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from vaelab.data.batches import DataSpec
from vaelab.models.base import LatentModel, as_batch, refuse_labels
from vaelab.models.vae import _normal_log_prob, bernoulli_log_prob, checked_images
from vaelab.nets import ACTIVATIONS, BernoulliDecoder, GaussianEncoder
from vaelab.settings import setting

_WIDTH = dict(at_least=1, at_most=100_000)


class TwoLayerVAE(LatentModel):
    """A VAE with two stochastic layers z1 (near the pixels) and z2 (on top)."""

    trains_on_bounds = True
    mean_field_guide = False

    @dataclass
    class Settings:
        z1_dim: int = setting(100, "size of the lower latent layer z1", **_WIDTH)
        z2_dim: int = setting(50, "size of the upper latent layer z2", **_WIDTH)
        hidden1: tuple[int, ...] = setting((200, 200), "widths between x and z1 (both ways)", **_WIDTH)
        hidden2: tuple[int, ...] = setting((100, 100), "widths between z1 and z2 (both ways)", **_WIDTH)
        activation: str = setting("tanh", "the networks' nonlinearity", choices=tuple(ACTIVATIONS))

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        return {
            "x_dim": data.x_dim,
            "z1_dim": settings.z1_dim,
            "z2_dim": settings.z2_dim,
            "hidden1": list(settings.hidden1),
            "hidden2": list(settings.hidden2),
            "activation": settings.activation,
        }

    def __init__(
        self, x_dim=784, z1_dim=100, z2_dim=50, hidden1=(200, 200), hidden2=(100, 100), activation="tanh"
    ):
        super().__init__()
        hidden1, hidden2 = tuple(hidden1), tuple(hidden2)
        self.x_dim, self.z1_dim, self.z2_dim = x_dim, z1_dim, z2_dim
        self.hidden1, self.hidden2 = hidden1, hidden2
        self.encoder = torch.nn.ModuleDict(
            {
                "z1": GaussianEncoder(x_dim, z1_dim, hidden1, activation),
                "z2": GaussianEncoder(z1_dim, z2_dim, hidden2, activation),
            }
        )
        self.decoder = torch.nn.ModuleDict(
            {
                "z1": GaussianEncoder(z2_dim, z1_dim, hidden2[::-1], activation),
                "x": BernoulliDecoder(z1_dim, x_dim, hidden1[::-1], activation),
            }
        )

    def _check(self, batch):
        return checked_images(self, batch, self.x_dim)

    # --- Pyro ---------------------------------------------------------------
    def model(self, batch) -> None:
        """p(z2) p(z1|z2) p(x|z1), x observed."""
        x = self._check(batch).x
        pyro.module("decoder", self.decoder)
        n = x.shape[0]
        with pyro.plate("data", n):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros((n, self.z2_dim)), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(*self.decoder["z1"](z2)).to_event(1))
            logits = self.decoder["x"](z1)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)

    def guide(self, batch) -> None:
        """q(z1|x) q(z2|z1)."""
        x = self._check(batch).x
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(*self.guide_net(self.encoder["z1"], x)).to_event(1))
            pyro.sample("z2", dist.Normal(*self.guide_net(self.encoder["z2"], z1)).to_event(1))

    # --- PyTorch --------------------------------------------------------------
    def _log_weights(self, batch, num_samples, stop_guide=False, use=None, generator=None):
        x = self._check(batch).x
        q1 = self.guide_net(self.encoder["z1"], x)
        z1 = q1[0] + q1[1] * self._noise((num_samples, *q1[0].shape), q1[0], generator)
        q2 = self.guide_net(self.encoder["z2"], z1)  # (K, B, z2_dim): one per draw of z1
        z2 = q2[0] + q2[1] * self._noise(q2[0].shape, q2[0], generator)
        if use is not None:
            z1, z2 = use(z1), use(z2)
        if stop_guide:  # log q at the (live) draws, with the guide's weights stopped
            with self.stopped_guide():
                q1 = self.guide_net(self.encoder["z1"], x)
                q2 = self.guide_net(self.encoder["z2"], z1)
        log_q = _normal_log_prob(z1, *q1) + _normal_log_prob(z2, *q2)
        log_p = (
            _normal_log_prob(z2, torch.zeros_like(z2), torch.ones_like(z2))
            + _normal_log_prob(z1, *self.decoder["z1"](z2))
            + bernoulli_log_prob(self.decoder["x"](z1), x)
        )
        return log_p - log_q

    @staticmethod
    def _noise(shape, like, generator):
        return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)

    def log_weights(self, batch, num_samples: int, stop_guide: bool = False, use=None) -> torch.Tensor:
        return self._log_weights(batch, num_samples, stop_guide, use)

    def elbo(self, batch, particles: int = 1, analytic_kl: bool = True) -> torch.Tensor:
        """Returns the ELBO of each image at `particles` draws (their mean): (B,) nats.

        `analytic_kl` is not used: no closed form here (see the module's note).
        """
        return self._log_weights(batch, particles).mean(0)

    @torch.no_grad()
    def log_importance_weights(self, batch, num_samples: int, generator=None) -> torch.Tensor:
        return self._log_weights(batch, num_samples, generator=generator)

    def floats_per_particle(self) -> int:
        widths = 2 * sum(self.hidden1) + 2 * sum(self.hidden2)
        return 4 * self.x_dim + 3 * widths + 6 * (self.z1_dim + self.z2_dim)

    # --- shared ---------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """Returns the mean images p(x|z1) of `n` draws z2 ~ N(0, I), z1 ~ p(z1|z2): (n, x_dim)."""
        refuse_labels(self, y)
        z2 = torch.randn(n, self.z2_dim, device=self.device())
        loc, scale = self.decoder["z1"](z2)
        return torch.sigmoid(self.decoder["x"](loc + scale * torch.randn_like(loc)))

    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """Returns the mean image p(x | z1 = E[z1|x]) of each image: (B, x_dim)."""
        z1_loc, _ = self.encoder["z1"](as_batch(batch).x)
        return torch.sigmoid(self.decoder["x"](z1_loc))
