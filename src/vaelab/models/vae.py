"""The variational autoencoder (Kingma & Welling, 2014), written twice.

The same encoder and decoder serve both halves:

- ``model``/``guide``: the Pyro program. ``model`` is p(z) p(x|z) with x
  observed; ``guide`` is q(z|x), amortised by the encoder. Any Pyro ELBO fits it.
- ``elbo``: the same objective written by hand in PyTorch, one value per image.

>>> vae = VAE(x_dim=784, z_dim=20)
>>> x = torch.rand(8, 784)
>>> vae.elbo(x).shape                                          # hand-written
torch.Size([8])
>>> pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)   # Pyro
"""

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from vaelab.nets import BernoulliDecoder, GaussianEncoder

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(z, loc, scale):
    """log N(z; loc, scale) summed over the last axis: (B, D) -> (B,)."""
    return (-((z - loc) ** 2) / (2 * scale**2) - torch.log(scale) - _LOG_SQRT_2PI).sum(-1)


class VAE(nn.Module):
    """A VAE with a Normal prior, a diagonal Normal guide and Bernoulli pixels.

    x: (batch, x_dim) floats in [0, 1]; binary or not, the likelihood is the
    Bernoulli log-probability (the negative binary cross-entropy).
    """

    def __init__(self, x_dim=784, z_dim=20, hidden=(400,), activation="relu"):
        super().__init__()
        hidden = tuple(hidden)
        self.x_dim, self.z_dim, self.encoder_hidden = x_dim, z_dim, hidden
        self.encoder = GaussianEncoder(x_dim, z_dim, hidden, activation)
        self.decoder = BernoulliDecoder(z_dim, x_dim, hidden[::-1], activation)

    def _check(self, x: torch.Tensor) -> None:
        # Under JIT tracing shapes are symbolic, and the traced graph was
        # checked when it was first run.
        if torch.jit.is_tracing():
            return
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must be (batch, {self.x_dim}) flattened pixels, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floats in [0, 1], got dtype {x.dtype}")
        # The range check reads two numbers back; on a CPU that is no sync, on
        # a GPU it would stall every step, so there the data pipeline (uint8/255)
        # is what guarantees the range.
        if x.device.type == "cpu" and x.numel():
            low, high = torch.aminmax(x)
            if low < 0 or high > 1:
                raise ValueError(
                    f"x must be pixels in [0, 1], got values in [{low.item():g}, {high.item():g}]"
                )

    # --- Pyro ---------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x|z): z ~ Normal(0, I), x ~ Bernoulli(logits=decoder(z)), x observed."""
        self._check(x)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros((x.shape[0], self.z_dim))
            z_scale = x.new_ones((x.shape[0], self.z_dim))
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            # Pixels in [0, 1] need not be binary; Bernoulli's support check
            # would reject them, so it is off for this one site.
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) = Normal(encoder(x)), one z per image."""
        self._check(x)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    # --- PyTorch --------------------------------------------------------------
    def elbo(self, x: torch.Tensor, analytic_kl: bool = True) -> torch.Tensor:
        """Returns the one-sample ELBO of each image, (batch,), in nats.

        log p(x|z) at one reparameterised z ~ q(z|x), minus KL(q(z|x) || p(z)):
        in closed form when `analytic_kl` (as TraceMeanField_ELBO computes it),
        else as log q(z|x) - log p(z) at the same z (as Trace_ELBO does).
        """
        self._check(x)
        z_loc, z_scale = self.encoder(x)
        z = z_loc + z_scale * torch.randn_like(z_loc)
        logits = self.decoder(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        if analytic_kl:
            kl = 0.5 * (z_loc**2 + z_scale**2 - 1).sum(-1) - torch.log(z_scale).sum(-1)
        else:
            log_pz = _normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
            kl = _normal_log_prob(z, z_loc, z_scale) - log_pz
        return log_px_z - kl

    def log_importance_weights(self, x: torch.Tensor, num_samples: int, generator=None) -> torch.Tensor:
        """Returns log p(x, z_s) - log q(z_s|x) for draws z_s ~ q(z|x): (num_samples, batch).

        The log-sum-exp of these over s, minus log(num_samples), is the IWAE
        bound on log p(x) (Burda et al., 2015). Noise comes from `generator`
        (torch's global one if None).
        """
        self._check(x)
        z_loc, z_scale = self.encoder(x)
        eps = torch.randn((num_samples, *z_loc.shape), device=x.device, dtype=x.dtype, generator=generator)
        z = z_loc + z_scale * eps
        hidden = self.decoder.body(z)
        logits = self.decoder.logits(hidden)
        # log Bernoulli(x; logits) = x·logits - softplus(logits), summed over pixels.
        # x·logits = hidden·(Wᵀx) + b·x costs one small product per image instead
        # of a pass over the (samples, batch, pixels) logits; softplus is
        # logaddexp(0, ·), which runs faster than F.softplus on a CPU.
        weight, bias = self.decoder.logits.weight, self.decoder.logits.bias
        x_dot_logits = (hidden * (x @ weight)).sum(-1) + x @ bias
        log_px_z = x_dot_logits - torch.logaddexp(logits.new_zeros(()), logits).sum(-1)
        log_pz = (-0.5 * z**2).sum(-1)
        log_qz = (-0.5 * eps**2 - torch.log(z_scale)).sum(-1)
        return log_px_z + log_pz - log_qz  # the 2π terms of p and q cancel

    def floats_per_particle(self) -> int:
        """Returns about how many floats one (image, sample) pair needs in log_importance_weights."""
        return 4 * self.x_dim + 3 * sum(self.encoder_hidden) + 4 * self.z_dim

    # --- shared ---------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, device=None) -> torch.Tensor:
        """Returns the mean images p(x|z) of `n` prior draws z ~ N(0, I): (n, x_dim) in [0, 1]."""
        device = device or next(self.parameters()).device
        z = torch.randn(n, self.z_dim, device=device)
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the mean image p(x|z = E[z|x]) of each image: (batch, x_dim) in [0, 1]."""
        z_loc, _ = self.encoder(x)
        return torch.sigmoid(self.decoder(z_loc))
