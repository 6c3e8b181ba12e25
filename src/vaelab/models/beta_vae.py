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

from dataclasses import dataclass

from vaelab.data.batches import DataSpec
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

    def __init__(self, x_dim=784, z_dim=20, hidden=(400,), activation="relu", beta=4.0, **network):
        super().__init__(x_dim, z_dim, hidden, activation, **network)  # network: the VAE's net, image_shape
        self.beta = beta

    @property
    def kl_weight(self) -> float:
        """The VAE's KL weight is β: its latent() and loss() do the rest."""
        return self.beta

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self.beta = value
