"""The VampPrior (Tomczak & Welling, 2018): the prior is the encoder's posteriors at K learned pseudo-inputs.

p(z) = (1/K) Σ_k q(z | u_k): a mixture of the diagonal Normals the encoder
gives for K pseudo-inputs u_k, images in [0, 1] (sigmoid of free logits)
learned with the rest. The encoder thus serves twice: as the guide q(z|x)
and, through the pseudo-inputs, as the prior; the prior's pass is not the
guide's, so DReG's stopped guide leaves it live.

Written twice, like every model:

- Pyro: the latent site ``z`` has the prior ``MixtureSameFamily(Categorical,
  Normal(loc_k, scale_k).to_event(1))``;
- by hand: log p(z) = logsumexp_k log N(z; loc_k, scale_k) - log K.

The KL term has no closed form against a mixture, so both paths estimate
it at the draws, log q(z|x) - log p(z): Pyro's Trace_ELBO does so by
definition, and TraceMeanField_ELBO falls back to it where no analytic KL
is registered (Normal against a mixture); the hand-written ELBO uses it
whatever `analytic_kl` says.
"""

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from vaelab.data.batches import DataSpec
from vaelab.errors import ConfigError
from vaelab.models.base import refuse_labels
from vaelab.models.vae import _LOG_SQRT_2PI, VAE, _normal_log_prob
from vaelab.settings import setting


class VampPrior(VAE):
    """The VAE with the VampPrior: `pseudo_inputs` learned images whose posteriors make the prior."""

    @dataclass
    class Settings(VAE.Settings):
        pseudo_inputs: int = setting(
            500, "K, the pseudo-inputs whose posteriors mix into the prior", at_least=1, at_most=100_000
        )
        warmup_epochs: int = setting(
            0,
            "the KL term's weight rises as epoch / N over the first N epochs (Tomczak & Welling's "
            "warm-up; 0: none). The ELBO is logged as ever, the weighted objective beside it",
            at_least=0,
            at_most=100_000,
        )

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        return {**super().arguments(settings, data), "pseudo_inputs": settings.pseudo_inputs}

    @classmethod
    def check_config(cls, config) -> None:
        """Refuses a warm-up with the bounds: they have no KL term to weight."""
        if config.settings.warmup_epochs and config.elbo in ("iwae", "dreg"):  # vaelab.bounds.BOUNDS
            raise ConfigError(
                f"--warmup-epochs: a warm-up weights a KL term, and --elbo {config.elbo} has none"
            )

    def on_epoch(self, epoch: int, settings) -> None:
        """Sets the warm-up's KL weight for `epoch` (counted from 1): min(1, epoch / warmup_epochs)."""
        warmup = settings.warmup_epochs
        self.reweights_kl = warmup > 0
        self.kl_weight = min(1.0, epoch / warmup) if warmup else 1.0

    def program_state(self) -> tuple:
        return (self.kl_weight,)  # the program scales its KL term by it

    def __init__(self, x_dim=784, z_dim=20, hidden=(400,), activation="relu", pseudo_inputs=500, **network):
        super().__init__(x_dim, z_dim, hidden, activation, **network)  # network: the VAE's net, image_shape
        self.num_pseudo_inputs = pseudo_inputs
        # Logits of the pseudo-inputs' pixels, around 0.5 grey with a little noise to break symmetry.
        self.pseudo = nn.ParameterDict({"logits": nn.Parameter(0.1 * torch.randn(pseudo_inputs, x_dim))})

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs as images: (K, x_dim) in [0, 1]."""
        return torch.sigmoid(self.pseudo["logits"])

    def components(self):
        """The prior's K Normal components: loc, scale (K, z_dim), the encoder at the pseudo-inputs."""
        return self.encoder(self.pseudo_inputs())  # not guide_net: the prior is not the guide

    def prior(self, like: torch.Tensor):
        """p(z) for each row of `like` (B, ·): the equal-weight mixture of the K components."""
        loc, scale = self.components()
        mixture = dist.MixtureSameFamily(
            dist.Categorical(logits=loc.new_zeros(self.num_pseudo_inputs)),
            dist.Normal(loc, scale).to_event(1),
        )
        return mixture.expand([like.shape[0]])

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) by hand for z (..., z_dim): logsumexp over the components - log K, (...).

        Each component's log-density, expanded in z, is two matrix products,
        z² · (-1/2σ²) + z · (μ/σ²), plus a constant per component: no
        (..., K, z_dim) tensor, so evaluation at K = 5000 draws runs at the
        speed of a linear layer (the direct form was memory-bound, 34x
        slower at 2,500 draws and 500 components). The expanded terms grow as
        1/σ² and cancel where a component is narrow, so they are summed in
        float64, where the direct form's float32 answer is kept to ~1e-5.
        """
        loc, scale = self.components()
        wide = z.double()
        precision = scale.double().pow(-2)  # (K, z_dim)
        loc = loc.double()
        constant = -0.5 * (loc.pow(2) * precision).sum(-1) - torch.log(scale.double()).sum(-1)
        per_component = (wide * wide) @ (-0.5 * precision).T + wide @ (loc * precision).T + constant
        log_p = (
            torch.logsumexp(per_component, -1)
            - z.shape[-1] * _LOG_SQRT_2PI
            - math.log(self.num_pseudo_inputs)
        )
        return log_p.to(z.dtype)

    def kl(self, z, z_loc, z_scale, analytic: bool = True) -> torch.Tensor:
        """log q(z|x) - log p(z) at the draws z, whatever `analytic` says: no closed form here."""
        return _normal_log_prob(z, z_loc, z_scale) - self.log_prior(z)

    def model(self, batch) -> None:
        pyro.module("pseudo_inputs", self.pseudo)  # the encoder the prior also uses is the guide's
        super().model(batch)

    @torch.no_grad()
    def log_importance_weights(self, batch, num_samples: int, generator=None) -> torch.Tensor:
        """log p(x, z_s) - log q(z_s|x), (num_samples, B): the plain form, the prior a mixture."""
        return self.log_weights(batch, num_samples, generator=generator)

    @classmethod
    def picture_captions(cls) -> dict:
        captions = super().picture_captions()
        captions["samples"] = (
            "Mean images of p(x|z) for z drawn from the VampPrior: a pseudo-input's posterior, at random."
        )
        return captions

    def floats_per_particle(self) -> int:
        return super().floats_per_particle() + 3 * self.num_pseudo_inputs

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """Returns the mean images of `n` prior draws: a component at random, then z from it."""
        refuse_labels(self, y)
        loc, scale = self.components()
        k = torch.randint(self.num_pseudo_inputs, (n,), device=loc.device)
        z = loc[k] + scale[k] * torch.randn(n, self.z_dim, device=loc.device)
        return torch.sigmoid(self.decode(z))
