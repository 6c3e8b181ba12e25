"""The variational autoencoder (Kingma & Welling, 2014), written twice.

The same encoder and decoder serve both halves:

- ``model``/``guide``: the Pyro program. ``model`` is p(z) p(x|z) with x
  observed; ``guide`` is q(z|x), amortised by the encoder. Any Pyro ELBO fits it.
- ``elbo``: the same objective written by hand in PyTorch, one value per image.

It is built from small pieces a variant overrides one at a time: the prior
(:meth:`VAE.prior`, with its KL in :meth:`VAE.kl`), the likelihood
(:meth:`VAE.likelihood`), the encoder and decoder (:meth:`VAE.encode`,
:meth:`VAE.decode`), the condition appended to the networks' inputs
(:meth:`VAE.condition`, the conditional VAE's label), how a latent site is
drawn in the Pyro program (:meth:`VAE.latent`, the β-VAE's scale), and the
terms of the ELBO (:meth:`VAE.elbo_terms`, which a weighted objective recombines).

>>> vae = VAE(x_dim=784, z_dim=20)
>>> x = torch.rand(8, 784)
>>> vae.elbo(x).shape                                          # hand-written
torch.Size([8])
>>> pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)   # Pyro
"""

import contextlib
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine

from vaelab.data.batches import Batch, DataSpec
from vaelab.models.base import GENERIC_CAPTIONS, LatentModel, Loss, PictureView, as_batch, refuse_labels
from vaelab.nets import ACTIVATIONS, NETS, BernoulliDecoder, encoder_and_decoder
from vaelab.settings import setting

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(z, loc, scale):
    """log N(z; loc, scale) summed over the last axis: (B, D) -> (B,)."""
    return (-((z - loc) ** 2) / (2 * scale**2) - torch.log(scale) - _LOG_SQRT_2PI).sum(-1)


def values_readable(t: torch.Tensor) -> bool:
    """Whether a check may read `t`'s values: not under JIT tracing, torch.compile, vmap or a CUDA graph.

    Under JIT tracing shapes are symbolic, and the traced graph was checked
    when it was first run; under torch.compile a branch on the data's values
    would split the graph at every step; under vmap (a stacked sweep, whose
    images the data pipeline made) they cannot be read at all; a CUDA graph's
    capture may not wait on the host (its batches too come from the pipeline).
    """
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    capturing = t.is_cuda and torch.cuda.is_current_stream_capturing()
    return not (tracing or capturing or torch._C._functorch.is_functorch_wrapped_tensor(t))


def checked_images(model: LatentModel, batch, x_dim: int) -> Batch:
    """Returns `batch` as a Batch of (B, x_dim) floats in [0, 1], with labels if `model` needs them."""
    batch = as_batch(batch)
    x = batch.x
    if not values_readable(x):
        return batch
    if x.dim() != 2 or x.shape[1] != x_dim:
        raise ValueError(f"x must be (batch, {x_dim}) flattened pixels, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floats in [0, 1], got dtype {x.dtype}")
    # The range check reads two numbers back; on a CPU that is no sync, on
    # a GPU it would stall every step, so there the data pipeline (uint8/255)
    # is what guarantees the range.
    if x.device.type == "cpu" and x.numel():
        low, high = torch.aminmax(x)
        if low < 0 or high > 1:
            raise ValueError(f"x must be pixels in [0, 1], got values in [{low.item():g}, {high.item():g}]")
    model.check_labels(batch)
    return batch


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) of Bernoulli pixels, summed over pixels: logits (..., B, D), x (B, D) -> (..., B)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


class VAE(LatentModel):
    """A VAE with a Normal prior, a diagonal Normal guide and Bernoulli pixels.

    x: (batch, x_dim) floats in [0, 1]; binary or not, the likelihood is the
    Bernoulli log-probability (the negative binary cross-entropy).
    It trains on every objective, the importance-weighted bounds included.
    `condition_size` widens the encoder's and decoder's inputs by that many
    features (see :meth:`condition`); 0 for the plain VAE.
    """

    trains_on_bounds = True
    one_gaussian_latent = True

    @dataclass
    class Settings:
        z_dim: int = setting(20, "latent size", at_least=1, at_most=100_000)
        hidden: tuple[int, ...] = setting(
            (400,),
            "encoder widths, comma-separated (400 or 400,200); the decoder mirrors them",
            at_least=1,
            at_most=100_000,
        )
        activation: str = setting("relu", "the networks' nonlinearity", choices=tuple(ACTIVATIONS))
        net: str = setting(
            "mlp",
            "the encoder and decoder: mlp (dense layers of --hidden), or conv (two stride-2 convolutions "
            "each way, 32 and 64 channels, then the dense layers; any image size)",
            choices=NETS,
        )

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        arguments = {
            "x_dim": data.x_dim,
            "z_dim": settings.z_dim,
            "hidden": list(settings.hidden),
            "activation": settings.activation,
        }
        if settings.net != "mlp":  # an MLP's arguments stay as they were before there was a choice
            arguments.update(net=settings.net, image_shape=list(data.image_shape))
        return arguments

    def __init__(
        self,
        x_dim=784,
        z_dim=20,
        hidden=(400,),
        activation="relu",
        condition_size=0,
        net="mlp",
        image_shape=None,
    ):
        super().__init__()
        hidden = tuple(hidden)
        self.x_dim, self.z_dim, self.encoder_hidden, self.net = x_dim, z_dim, hidden, net
        if image_shape is None:
            if net != "mlp":
                raise ValueError(f"a {net} network needs the image shape (H, W)")
            image_shape = (1, x_dim)
        elif image_shape[0] * image_shape[1] != x_dim:
            raise ValueError(f"image shape {tuple(image_shape)} does not have x_dim {x_dim} pixels")
        self.encoder, self.decoder = encoder_and_decoder(
            net, tuple(image_shape), condition_size, z_dim, hidden, activation
        )
        # The KL term's weight in training: the β-VAE's β, a warm-up's ramp; 1 is the ELBO.
        self.kl_weight = 1.0
        self.reweights_kl = False  # set where the weight can differ from 1 at some epoch
        self._unweighted = 0  # how many unweighted() blocks are open: the program is the ELBO's inside

    def _check(self, batch) -> Batch:
        """Returns `batch` as a Batch whose images are (B, x_dim) floats in [0, 1]; else raises."""
        return checked_images(self, batch, self.x_dim)

    # --- pieces a variant overrides -------------------------------------------
    def condition(self, inputs: torch.Tensor, y) -> torch.Tensor:
        """Returns the encoder's or decoder's input: `inputs` (..., D) with the condition appended.

        The VAE has none and returns `inputs`; the conditional VAE appends y one-hot.
        """
        return inputs

    def encode(self, batch: Batch):
        """q(z|x): returns z_loc, z_scale (B, z_dim)."""
        return self.guide_net(self.encoder, self.condition(batch.x, batch.y))

    def decoder_hidden(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """Returns the decoder's last hidden layer for z (..., z_dim): (..., hidden[0])."""
        return self.decoder.body(self.condition(z, y))

    def decode(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """p(x|z): returns the pixels' logits (..., x_dim) for z (..., z_dim)."""
        return self.decoder(self.condition(z, y))

    def prior(self, like: torch.Tensor):
        """p(z) for each row of `like` (B, ·): Normal(0, I), a batch of B z_dim-dimensional events."""
        n = like.shape[0]
        return dist.Normal(like.new_zeros((n, self.z_dim)), like.new_ones((n, self.z_dim))).to_event(1)

    def kl(self, z, z_loc, z_scale, analytic: bool = True) -> torch.Tensor:
        """KL(q(z|x) || p(z)) of each image, (B,): in closed form, or log q(z|x) - log p(z) at z.

        The closed form is the standard Normal prior's; a variant with another
        prior overrides this with its own (or the Monte Carlo form).
        """
        if analytic:
            return 0.5 * (z_loc**2 + z_scale**2 - 1).sum(-1) - torch.log(z_scale).sum(-1)
        log_pz = _normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
        return _normal_log_prob(z, z_loc, z_scale) - log_pz

    def likelihood(self, logits: torch.Tensor):
        """p(x|z) given the decoder's logits (B, x_dim): independent Bernoulli pixels.

        Pixels in [0, 1] need not be binary; Bernoulli's support check would
        reject them, so it is off (the hand-written half uses the same
        log-probability, the negative binary cross-entropy).
        """
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)

    def latent(self, name: str, distribution):
        """Draws latent site `name` in the Pyro program (model and guide alike).

        Its log-probability is scaled by the KL weight, in the model and the
        guide alike, so every Pyro ELBO weights log p(z) - log q(z|x) by it.
        """
        scale = 1.0 if self._unweighted else self.kl_weight
        if scale == 1:
            return pyro.sample(name, distribution)
        with poutine.scale(scale=scale):
            return pyro.sample(name, distribution)

    # --- a weighted KL term (the β-VAE, a warm-up) ----------------------------------
    @property
    def weighted(self) -> bool:
        return self.reweights_kl or self.kl_weight != 1

    @contextlib.contextmanager
    def unweighted(self):
        self._unweighted += 1
        try:
            yield
        finally:
            self._unweighted -= 1

    def loss(self, batch, particles: int = 1, analytic_kl: bool = True) -> Loss:
        """-Σ ELBO; with a KL weight w, -Σ(rec - w·KL) and -Σ ELBO beside it (the same draws for both)."""
        if not self.weighted:
            return super().loss(batch, particles=particles, analytic_kl=analytic_kl)
        log_px_z, kl = self.elbo_terms(batch, analytic_kl, particles)
        return Loss(-(log_px_z - self.kl_weight * kl).sum(), (kl - log_px_z).sum().detach())

    # --- Pyro ---------------------------------------------------------------
    def model(self, batch) -> None:
        """p(z) p(x|z): z ~ Normal(0, I), x ~ Bernoulli(logits=decoder(z)), x observed."""
        batch = self._check(batch)
        x = batch.x
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = self.latent("z", self.prior(x))
            pyro.sample("x", self.likelihood(self.decode(z, batch.y)), obs=x)

    def guide(self, batch) -> None:
        """q(z|x) = Normal(encoder(x)), one z per image."""
        batch = self._check(batch)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", batch.x.shape[0]):
            z_loc, z_scale = self.encode(batch)
            self.latent("z", dist.Normal(z_loc, z_scale).to_event(1))

    # --- PyTorch --------------------------------------------------------------
    def elbo_terms(self, batch, analytic_kl: bool = True, particles: int = 1):
        """Returns (log p(x|z), KL) of each image, (B,) each, at reparameterised z ~ q(z|x).

        KL(q(z|x) || p(z)) in closed form when `analytic_kl` (as TraceMeanField_ELBO
        computes it), else as log q(z|x) - log p(z) at the same z (as Trace_ELBO does).
        With `particles` > 1, each is the mean over that many z (noise (particles, B, z_dim),
        as Pyro's vectorised particles draw it).
        """
        batch = self._check(batch)
        z_loc, z_scale = self.encode(batch)
        return self.terms_given(batch, z_loc, z_scale, analytic_kl, particles)

    def terms_given(self, batch: Batch, z_loc, z_scale, analytic_kl: bool = True, particles: int = 1):
        """Returns (log p(x|z), KL) of each image for the Normal q(z) = N(z_loc, z_scale): (B,) each.

        The amortised guide's terms when z_loc, z_scale come from the encoder
        (:meth:`elbo_terms`); a per-image guide's when they are fitted to each
        image (:mod:`vaelab.amortization`).
        """
        x = batch.x
        shape = z_loc.shape if particles == 1 else (particles, *z_loc.shape)
        z = z_loc + z_scale * self.standard_normal(shape, z_loc)
        log_px_z = bernoulli_log_prob(self.decode(z, batch.y), x)
        kl = self.kl(z, z_loc, z_scale, analytic_kl)
        if particles > 1:
            log_px_z, kl = log_px_z.mean(0), kl.mean(0) if kl.dim() > 1 else kl
        return log_px_z, kl

    def elbo(self, batch, particles: int = 1, analytic_kl: bool = True) -> torch.Tensor:
        """Returns the ELBO of each image, (batch,), in nats: log p(x|z) - KL, over `particles` draws."""
        log_px_z, kl = self.elbo_terms(batch, analytic_kl, particles)
        return log_px_z - kl

    def log_weights(self, batch, num_samples: int, stop_guide: bool = False, use=None, generator=None):
        """log p(x, z_k) - log q(z_k|x), (K, B), differentiable: what IWAE and DReG train on.

        Plainly written, with the prior's own log-density (:meth:`kl`), so a
        variant with another prior gets it too; :meth:`log_importance_weights`
        is the standard Normal prior's faster form for evaluation.
        """
        batch = self._check(batch)
        z_loc, z_scale = self.encode(batch)
        shape = (num_samples, *z_loc.shape)
        eps = torch.randn(shape, dtype=z_loc.dtype, device=z_loc.device, generator=generator)
        z = z_loc + z_scale * eps
        if use is not None:
            z = use(z)
        if stop_guide:  # q's parameters depend on x alone here: detaching them stops its weights
            z_loc, z_scale = z_loc.detach(), z_scale.detach()
        log_px_z = bernoulli_log_prob(self.decode(z, batch.y), batch.x)
        return log_px_z - self.kl(z, z_loc, z_scale, analytic=False)

    def log_importance_weights(self, batch, num_samples: int, generator=None) -> torch.Tensor:
        """Returns log p(x, z_s) - log q(z_s|x) for draws z_s ~ q(z|x): (num_samples, batch).

        The log-sum-exp of these over s, minus log(num_samples), is the IWAE
        bound on log p(x) (Burda et al., 2015). Noise comes from `generator`
        (torch's global one if None).
        """
        batch = self._check(batch)
        x = batch.x
        z_loc, z_scale = self.encode(batch)
        eps = torch.randn((num_samples, *z_loc.shape), device=x.device, dtype=x.dtype, generator=generator)
        z = z_loc + z_scale * eps
        log_pz = (-0.5 * z**2).sum(-1)
        log_qz = (-0.5 * eps**2 - torch.log(z_scale)).sum(-1)
        if not isinstance(self.decoder, BernoulliDecoder):  # a convolutional decoder: the plain form
            return bernoulli_log_prob(self.decode(z, batch.y), x) + log_pz - log_qz
        hidden = self.decoder_hidden(z, batch.y)
        logits = self.decoder.logits(hidden)
        # log Bernoulli(x; logits) = x·logits - softplus(logits), summed over pixels.
        # x·logits = hidden·(Wᵀx) + b·x costs one small product per image instead
        # of a pass over the (samples, batch, pixels) logits; softplus is
        # logaddexp(0, ·), which runs faster than F.softplus on a CPU.
        weight, bias = self.decoder.logits.weight, self.decoder.logits.bias
        x_dot_logits = (hidden * (x @ weight)).sum(-1) + x @ bias
        log_px_z = x_dot_logits - torch.logaddexp(logits.new_zeros(()), logits).sum(-1)
        return log_px_z + log_pz - log_qz  # the 2π terms of p and q cancel

    def floats_per_particle(self) -> int:
        floats = 4 * self.x_dim + 3 * sum(self.encoder_hidden) + 4 * self.z_dim
        if self.net == "conv":  # the decoder's feature maps: 64 channels at a quarter, 32 at half the side
            floats += 3 * (64 // 16 + 32 // 4) * self.x_dim
        return floats

    # --- shared ---------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """Returns the mean images p(x|z) of `n` prior draws z ~ N(0, I): (n, x_dim) in [0, 1]."""
        refuse_labels(self, y)
        z = torch.randn(n, self.z_dim, device=self.device())
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """Returns the mean image p(x|z = E[z|x]) of each image: (batch, x_dim) in [0, 1]."""
        batch = as_batch(batch)
        z_loc, _ = self.encode(batch)
        return torch.sigmoid(self.decode(z_loc, batch.y))

    # --- pictures -------------------------------------------------------------
    @classmethod
    def picture_captions(cls) -> dict:
        return {**GENERIC_CAPTIONS, **LATENT_CAPTIONS}

    def pictures(self, view: PictureView) -> dict:
        """Prior samples, then the latent space: interpolations, traversal, active units, maps."""
        from vaelab.models import latent_pictures

        super().pictures(view)
        return latent_pictures.draw(self, view)


LATENT_CAPTIONS = {
    "interpolations": "Decoded points on straight lines between the posterior means of two test images.",
    "traversal": "One test image's posterior mean, with one latent dimension at a time swept from -3 to +3.",
    "active_units": "Variance across the test set of each dimension's posterior mean; above 0.01 is active.",
    "latent_map": "Posterior means of test images, embedded in 2-D by t-SNE, coloured by label.",
    "manifold": "Decoded images of a regular grid over the 2-D latent space.",
}
