"""The conditional VAE on class labels (Sohn et al., 2015): q(z|x, y) and p(x|z, y).

The VAE with the label y, one-hot, appended to the encoder's input and to the
decoder's; the prior stays N(0, I), so z carries what the label does not
(style, slant, thickness) and a label picks the class of a drawn image.
Both halves come from the VAE unchanged: only the networks' inputs differ
(:meth:`CVAE.condition`).

>>> cvae = CVAE(x_dim=784, num_classes=10, z_dim=20)
>>> cvae.elbo(Batch(x, y))                                # (B,), y: (B,) int64 labels
>>> cvae.sample(8, y=torch.full((8,), 7))                 # (8, 784): eight sevens
"""

import torch

from vaelab import plots
from vaelab.data.batches import Batch, DataSpec
from vaelab.errors import ConfigError, DataError
from vaelab.models import latent_pictures
from vaelab.models.base import GENERIC_CAPTIONS, PictureView
from vaelab.models.vae import LATENT_CAPTIONS, VAE, values_readable

SAMPLES_PER_CLASS = 10  # the report's grid: one row per class


class CVAE(VAE):
    """A VAE conditioned on a class label y in 0 … num_classes - 1, in encoder and decoder."""

    labels = "classes"

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        if data.num_classes is None:
            raise ConfigError("model cvae needs class labels, and the dataset has none")
        return {**super().arguments(settings, data), "num_classes": data.num_classes}

    def __init__(self, x_dim=784, num_classes=10, z_dim=20, hidden=(400,), activation="relu", **network):
        super().__init__(
            x_dim, z_dim, hidden, activation, num_classes, **network
        )  # the VAE's net, image_shape
        self.num_classes = num_classes

    def _check(self, batch) -> Batch:
        batch = super()._check(batch)
        if values_readable(batch.y) and batch.y.device.type == "cpu" and batch.y.numel():
            low, high = torch.aminmax(batch.y)
            if low < 0 or high >= self.num_classes:
                raise DataError(
                    f"labels must be classes 0-{self.num_classes - 1} for this model, "
                    f"got values in [{low.item()}, {high.item()}]"
                )
        return batch

    def condition(self, inputs: torch.Tensor, y) -> torch.Tensor:
        """Returns `inputs` (..., D) with y one-hot appended: (..., D + num_classes)."""
        # as F.one_hot, but without reading y's largest value, so that it runs under vmap
        one_hot = (y.unsqueeze(-1) == torch.arange(self.num_classes, device=y.device)).to(inputs.dtype)
        return torch.cat([inputs, one_hot.expand(*inputs.shape[:-1], self.num_classes)], -1)

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """Returns the mean images p(x|z, y) of `n` prior draws z: (n, x_dim) in [0, 1].

        y: (n,) labels to draw (or one label for all); random classes if None.
        """
        device = self.device()
        if y is None:
            y = torch.randint(self.num_classes, (n,), device=device)
        y = torch.as_tensor(y, dtype=torch.long, device=device).expand(n)
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
            bad = sorted({int(v) for v in y.cpu() if not 0 <= v < self.num_classes})
            raise ConfigError(
                f"label {bad[0]} is outside the classes 0-{self.num_classes - 1} this model was trained on"
            )
        z = torch.randn(n, self.z_dim, device=device)
        return torch.sigmoid(self.decode(z, y))

    @classmethod
    def picture_captions(cls) -> dict:
        samples = (
            f"Mean images of p(x|z, y) for z drawn from the prior N(0, I): one row per class y, "
            f"{SAMPLES_PER_CLASS} draws each."
        )
        return {**GENERIC_CAPTIONS, "samples": samples, **LATENT_CAPTIONS}

    def pictures(self, view: PictureView) -> dict:
        """Samples of each class, a row each; then the VAE's latent-space pictures."""
        shape = view.images.image_shape
        labels = torch.arange(self.num_classes).repeat_interleave(SAMPLES_PER_CLASS)
        with torch.random.fork_rng():
            torch.manual_seed(view.seed)
            drawn = self.sample(len(labels), y=labels)
        grid = drawn.reshape(self.num_classes, SAMPLES_PER_CLASS, *shape).cpu().numpy()
        names = [str(c) for c in range(self.num_classes)]
        title = "Samples from the prior, one row per class"
        plots.samples(grid.reshape(-1, *shape), view.path("samples"), title, names)
        return latent_pictures.draw(self, view)
