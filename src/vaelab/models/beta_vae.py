"""The β-VAE (Higgins et al., 2017): the VAE with its KL term weighted by β.

Training maximises E_q[log p(x|z)] - β·KL(q(z|x) || p(z)); β > 1 presses the
posterior towards the prior (and, the paper argues, towards disentangled
factors), β = 1 is the VAE. Written twice, like every model:

- Pyro: the latent site ``z`` is scaled by β (``poutine.scale``) in the model
  and the guide, so every Pyro ELBO weights log p(z) - log q(z|x) by β;
- by hand: ``rec - β·KL`` from the VAE's own terms.

The ELBO itself (β = 1) is what ``elbo``, ``train_elbo`` and ``test_elbo``
report, so β-VAE and VAE runs compare on one scale; the weighted objective is
logged as ``train_objective``.

>>> model = BetaVAE(x_dim=784, z_dim=10, beta=4.0)
>>> model.loss(x)            # Loss(loss=-Σ(rec - 4·KL), neg_elbo=-Σ(rec - KL))
"""

import contextlib
from dataclasses import dataclass

import pyro
from pyro import poutine

from vaelab.data.batches import DataSpec
from vaelab.models.base import Loss
from vaelab.models.vae import VAE
from vaelab.settings import setting


class BetaVAE(VAE):
    """The VAE trained on rec - β·KL; `beta` = 1 trains exactly the VAE.

    The importance-weighted bounds have no KL term to weight: not for this model.
    """

    trains_on_bounds = False

    @dataclass
    class Settings(VAE.Settings):
        beta: float = setting(4.0, "weight β of the KL term (1: the plain VAE)", positive=True)

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        return {**super().arguments(settings, data), "beta": settings.beta}

    def __init__(
        self, x_dim=784, z_dim=20, hidden=(400,), activation="relu", beta=4.0, net="mlp", image_shape=None
    ):
        super().__init__(x_dim, z_dim, hidden, activation, net=net, image_shape=image_shape)
        self.beta = beta
        self._unweighted = 0  # how many unweighted() blocks are open: the program is the ELBO's inside

    @property
    def weighted(self) -> bool:
        return self.beta != 1

    @contextlib.contextmanager
    def unweighted(self):
        self._unweighted += 1
        try:
            yield
        finally:
            self._unweighted -= 1

    def latent(self, name: str, distribution):
        """Draws `name` with its log-probability scaled by β, in the model and the guide alike."""
        scale = 1.0 if self._unweighted else self.beta
        if scale == 1:
            return pyro.sample(name, distribution)
        with poutine.scale(scale=scale):
            return pyro.sample(name, distribution)

    def loss(self, batch, particles: int = 1, analytic_kl: bool = True) -> Loss:
        """Returns -Σ(rec - β·KL), and -Σ ELBO beside it (the same draws for both)."""
        if not self.weighted:
            return super().loss(batch, particles=particles, analytic_kl=analytic_kl)
        log_px_z, kl = self.elbo_terms(batch, analytic_kl, particles)
        return Loss(-(log_px_z - self.beta * kl).sum(), (kl - log_px_z).sum().detach())
