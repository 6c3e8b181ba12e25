"""Semi-supervised M2 (Kingma et al., 2014): a classifier q(y|x) fills in the labels a few images have.

The generative model is the conditional VAE's, p(z) p(y) p(x|y, z) with a
uniform p(y); the guide adds a classifier, q(y|x) q(z|x, y). A labelled image
observes y; an unlabelled one sums over it, exactly:

    labelled:    log p(x|y, z) + log p(y) - KL(q(z|x, y) || p(z))
    unlabelled:  Σ_y q(y|x) [log p(x|y, z_y) + log p(y) - KL_y] + H(q(y|x))

Training adds the auxiliary classification loss α · (-log q(y|x)) of each
labelled image (the paper's α; Pyro's example uses 46), so the classifier
learns from the labels directly and not only through the unlabelled sum.

Written twice:

- Pyro, as its ``ss_vae_M2`` example: ``TraceEnum_ELBO`` with the guide's
  ``y_unlabelled`` enumerated in parallel (all classes at once, on an
  enumeration dimension left of the batch), the auxiliary term an observed
  site ``y_aux`` in the model under ``poutine.scale(α)``;
- by hand: the sum over the classes as one (C, B_u, ·) pass.

The labelled and unlabelled images of a batch are two plates, labelled first,
and both halves draw the noise in that order: one (B_l, z) tensor, then one
(C, B_u, z) tensor, one z per class. Pyro's ``TraceEnum_ELBO`` takes the KL at
the draws; the hand-written loss takes it in closed form unless asked for
``--elbo trace``.

Which training images are labelled is :meth:`M2.training_labels`: ``labelled``
of them, the same number per class, drawn from the run's seed; the others'
labels are -1 ("unknown") in the batches. By default each labelled image
comes once an epoch, where the shuffle puts it (the exposure Pyro's example
gives them: one labelled batch an epoch); ``--labelled-per-batch K`` puts K
in every batch (:meth:`M2.training_order`), and the epoch's train ELBO is
then the mean over those visits. Evaluation sees the images alone
(``hides_test_labels``): the test ELBO and log-likelihood bound log p(x), and
``classifier_accuracy`` scores q(y|x) on the test labels.

>>> m2 = M2(x_dim=784, num_classes=10)
>>> m2.elbo(Batch(x, y))      # y: (B,) classes, -1 where unlabelled; (B,) nats
>>> m2.classify(x)            # (B,) the classifier's most probable class
"""

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from vaelab.data.batches import Batch, DataSpec
from vaelab.errors import ConfigError, DataError
from vaelab.models.base import Loss, as_batch, evaluating
from vaelab.models.cvae import CVAE
from vaelab.models.vae import VAE, _normal_log_prob, bernoulli_log_prob, checked_images, values_readable
from vaelab.nets import mlp
from vaelab.settings import setting

UNLABELLED = -1  # the label of a training image whose class is hidden


class M2(CVAE):
    """The CVAE's networks plus a classifier q(y|x); labels observed where known, summed over elsewhere."""

    default_elbo = "enum"
    pyro_elbos = ("enum",)
    trains_on_bounds = False  # the VAE's log_weights would drop q(y|x) and the sum over the classes
    vectorised_particles = False
    mean_field_guide = False
    one_gaussian_latent = False
    hides_test_labels = True
    not_graphable = "splits each batch by which labels are known: shapes the data decide"

    @dataclass
    class Settings(VAE.Settings):
        labelled: int = setting(
            100,
            "training images whose labels are kept (the same number per class, drawn from the seed)",
            at_least=1,
            at_most=100_000_000,
        )
        aux_weight: float = setting(
            46.0, "α, the weight of the labelled images' classification loss -log q(y|x)", at_least=0.0
        )
        labelled_per_batch: int = setting(
            0,
            "labelled images put in every training batch, drawn again as the epoch needs them "
            "(0: each once an epoch, where the shuffle puts it)",
            at_least=0,
            at_most=100_000,
        )

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        return {**super().arguments(settings, data), "aux_weight": settings.aux_weight}

    @classmethod
    def check_config(cls, config) -> None:
        """Refuses labelled images per batch that leave no room for unlabelled ones."""
        k = config.settings.labelled_per_batch
        if k >= config.batch_size:
            room = f"leaves no room for unlabelled images in a batch of {config.batch_size}"
            raise ConfigError(f"--labelled-per-batch {k} {room}")

    @classmethod
    def training_labels(cls, labels: torch.Tensor, num_classes: int, config) -> torch.Tensor:
        """Keeps `labelled` labels, labelled / num_classes per class drawn from the seed; the rest -1.

        Raises ConfigError if there are not that many, they do not divide into
        the classes, or a class has too few.
        """
        settings, seed = config.settings, config.seed
        wanted = settings.labelled
        if wanted > len(labels):
            raise ConfigError(f"--labelled {wanted} is more than the {len(labels)} training images")
        if wanted % num_classes:
            raise ConfigError(
                f"--labelled {wanted} does not divide into the {num_classes} classes (a multiple of "
                f"{num_classes}: the same number of each)"
            )
        per_class = wanted // num_classes
        generator = torch.Generator().manual_seed(seed)
        kept = []
        cpu = labels.cpu()
        for c in range(num_classes):
            members = torch.nonzero(cpu == c).flatten()
            if len(members) < per_class:
                have = f"class {c} has {len(members)} training images"
                raise ConfigError(f"--labelled {wanted}: {have}, fewer than {per_class}")
            kept.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
        out = torch.full_like(cpu, UNLABELLED)
        kept = torch.cat(kept)
        out[kept] = cpu[kept]
        return out.to(labels.device)

    def training_order(self, order: torch.Tensor, labels, config, epoch: int) -> torch.Tensor:
        """Every batch: `labelled_per_batch` labelled images, then unlabelled ones (the epoch's shuffle).

        The unlabelled images are visited once an epoch; the labelled ones as
        often as the batches need, in reshuffled passes (Kingma et al.'s
        batches mix both). With 0, `order` as it is: each image once.
        """
        k = config.settings.labelled_per_batch
        if k == 0 or labels is None:
            return order
        batch_size = config.batch_size
        known = labels.index_select(0, order) >= 0
        labelled, unlabelled = order[known], order[~known]
        steps = -(-len(unlabelled) // (batch_size - k))
        generator = torch.Generator().manual_seed(config.run_seed * 1_000_003 + epoch + 7)
        passes = -(-steps * k // len(labelled))
        shuffled = [
            labelled[torch.randperm(len(labelled), generator=generator).to(order.device)]
            for _ in range(passes)
        ]
        drawn = torch.cat(shuffled)[: steps * k].reshape(steps, k)
        parts = unlabelled.split(batch_size - k)  # full batches, the last one smaller
        return torch.cat([torch.cat([drawn[i], parts[i]]) for i in range(steps)])

    def __init__(
        self,
        x_dim=784,
        num_classes=10,
        z_dim=50,
        hidden=(500,),
        activation="softplus",
        aux_weight=46.0,
        **network,
    ):
        super().__init__(
            x_dim, num_classes, z_dim, hidden, activation, **network
        )  # the VAE's net, image_shape
        self.aux_weight = float(aux_weight)
        hidden = tuple(hidden)
        self.classifier = nn.Sequential(mlp([x_dim, *hidden], activation), nn.Linear(hidden[-1], num_classes))

    # --- labels ---------------------------------------------------------------
    def check_labels(self, batch: Batch) -> None:
        """Any labels or none: y None, or -1 where unknown, means the class is summed over."""

    def _check(self, batch) -> Batch:
        batch = checked_images(self, batch, self.x_dim)
        y = batch.y
        if y is not None and values_readable(y) and y.device.type == "cpu" and y.numel():
            low, high = torch.aminmax(y)
            if low < UNLABELLED or high >= self.num_classes:
                raise DataError(
                    f"labels must be classes 0-{self.num_classes - 1}, or -1 for unlabelled; "
                    f"got values in [{low.item()}, {high.item()}]"
                )
        return batch

    def _split(self, batch: Batch):
        """Returns (labelled mask, x_l, y_l, x_u): the images whose label is known, and the rest."""
        x, y = batch.x, batch.y
        known = torch.zeros(len(x), dtype=torch.bool, device=x.device) if y is None else y >= 0
        return known, x[known], (None if y is None else y[known]), x[~known]

    def _every_class(self, like: torch.Tensor) -> torch.Tensor:
        """The C one-hot labels on an enumeration dimension: (C, 1, C), broadcasting over a batch."""
        return torch.eye(self.num_classes, dtype=like.dtype, device=like.device).unsqueeze(1)

    def _joined(self, inputs: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """Returns cat([inputs, one_hot], -1), the two broadcast against each other first."""
        shape = torch.broadcast_shapes(inputs.shape[:-1], one_hot.shape[:-1])
        return torch.cat([inputs.expand(*shape, -1), one_hot.expand(*shape, -1)], -1)

    def classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x) as logits: (B, C)."""
        return self.guide_net(self.classifier, x)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's most probable class of each image: (B,)."""
        return self.classifier(x).argmax(-1)

    # --- a weighted objective: the ELBO plus α · the labelled images' classification loss --------
    # (the VAE's unweighted() blocks turn it off: the program is then the ELBO's alone)
    @property
    def weighted(self) -> bool:
        return self.aux_weight > 0 and not self._unweighted

    # --- Pyro ---------------------------------------------------------------
    def model(self, batch) -> None:
        """p(z) p(y) p(x|y, z): y observed where known, else left to the guide's enumeration."""
        batch = self._check(batch)
        known, x_l, y_l, x_u = self._split(batch)
        pyro.module("decoder", self.decoder)
        uniform = x_l.new_zeros(self.num_classes)
        if len(x_l):
            with pyro.plate("labelled", len(x_l)):
                z = pyro.sample("z_labelled", self.prior(x_l))
                y = pyro.sample("y_labelled", dist.Categorical(logits=uniform), obs=y_l)
                logits = self.decoder(self._joined(z, F.one_hot(y, self.num_classes).to(z.dtype)))
                pyro.sample("x_labelled", self.likelihood(logits), obs=x_l)
                if self.weighted:
                    pyro.module("classifier", self.classifier)
                    with poutine.scale(scale=self.aux_weight):
                        pyro.sample("y_aux", dist.Categorical(logits=self.classifier(x_l)), obs=y_l)
        if len(x_u):
            with pyro.plate("unlabelled", len(x_u)):
                z = pyro.sample("z_unlabelled", self.prior(x_u))
                y = pyro.sample("y_unlabelled", dist.Categorical(logits=uniform))
                logits = self.decoder(self._joined(z, F.one_hot(y, self.num_classes).to(z.dtype)))
                pyro.sample("x_unlabelled", self.likelihood(logits), obs=x_u)

    def guide(self, batch) -> None:
        """q(z|x, y) where y is known; q(y|x) q(z|x, y), y enumerated in parallel, where it is not."""
        batch = self._check(batch)
        known, x_l, y_l, x_u = self._split(batch)
        pyro.module("encoder", self.encoder)
        if len(x_l):
            with pyro.plate("labelled", len(x_l)):
                z_loc, z_scale = self._encode(x_l, F.one_hot(y_l, self.num_classes).to(x_l.dtype))
                pyro.sample("z_labelled", dist.Normal(z_loc, z_scale).to_event(1))
        if len(x_u):
            pyro.module("classifier", self.classifier)
            with pyro.plate("unlabelled", len(x_u)):
                q_y = dist.Categorical(logits=self.classifier_logits(x_u))
                y = pyro.sample("y_unlabelled", q_y, infer={"enumerate": "parallel"})
                z_loc, z_scale = self._encode(x_u, F.one_hot(y, self.num_classes).to(x_u.dtype))
                pyro.sample("z_unlabelled", dist.Normal(z_loc, z_scale).to_event(1))

    def _encode(self, x: torch.Tensor, one_hot: torch.Tensor):
        """q(z|x, y): z_loc, z_scale, x (..., D) and y one-hot (..., C) broadcast against each other.

        The encoder's first layer takes x's product once, not once per class
        (:func:`vaelab.nets.joined_layer`): in the unlabelled sum that is one
        pass of the images, not ten.
        """
        return self.guide_net(self.encoder, x, one_hot)

    def encode(self, batch: Batch):
        """q(z|x, y): z_loc, z_scale (B, z_dim), y the label where known, else the classifier's class."""
        x, y = batch.x, batch.y
        guess = self.classifier(x).argmax(-1)
        y = guess if y is None else torch.where(y >= 0, y, guess)
        return self._encode(x, F.one_hot(y, self.num_classes).to(x.dtype))

    # --- PyTorch --------------------------------------------------------------
    def elbo(self, batch, particles: int = 1, analytic_kl: bool = True) -> torch.Tensor:
        """Returns each image's ELBO, (B,): the labelled bound where y is known, the summed one elsewhere."""
        return self._parts(batch, analytic_kl)[0]

    def loss(self, batch, particles: int = 1, analytic_kl: bool = True) -> Loss:
        """-Σ ELBO + α Σ_labelled -log q(y|x); the Loss carries -Σ ELBO apart."""
        weighted = self.weighted
        elbo, aux = self._parts(batch, analytic_kl, with_aux=weighted)
        neg_elbo = -elbo.sum()
        if not weighted:
            return Loss(neg_elbo)
        if aux is None:  # no labelled image in this batch: the loss is -ELBO, logged apart all the same
            return Loss(neg_elbo, neg_elbo.detach())
        return Loss(neg_elbo - self.aux_weight * aux, neg_elbo.detach())

    def _parts(self, batch, analytic_kl: bool, with_aux: bool = False):
        """Returns (ELBO of each image (B,), Σ log q(y|x) of the labelled ones or None)."""
        batch = self._check(batch)
        known, x_l, y_l, x_u = self._split(batch)
        elbo = batch.x.new_empty(len(batch.x))
        log_py = -math.log(self.num_classes)
        aux = None
        if len(x_l):
            one_hot = F.one_hot(y_l, self.num_classes).to(x_l.dtype)
            z_loc, z_scale = self._encode(x_l, one_hot)
            z = z_loc + z_scale * torch.randn_like(z_loc)
            log_px = bernoulli_log_prob(self.decoder(self._joined(z, one_hot)), x_l)
            elbo[known] = log_px + log_py - self.kl(z, z_loc, z_scale, analytic_kl)
            if with_aux:
                log_q = torch.log_softmax(self.classifier(x_l), -1)
                aux = log_q.gather(-1, y_l[:, None]).sum()
        if len(x_u):
            log_q = torch.log_softmax(self.classifier_logits(x_u), -1)  # (B_u, C)
            every = self._every_class(x_u)  # (C, 1, C)
            z_loc, z_scale = self._encode(x_u, every)  # (C, B_u, z)
            z = z_loc + z_scale * torch.randn_like(z_loc)
            log_px = bernoulli_log_prob(self.decoder(self._joined(z, every)), x_u)  # (C, B_u)
            per_class = log_px + log_py - self.kl(z, z_loc, z_scale, analytic_kl)
            q = log_q.exp().T  # (C, B_u)
            elbo[~known] = (q * (per_class - log_q.T)).sum(0)
        return elbo, aux

    @torch.no_grad()
    def log_importance_weights(self, batch, num_samples: int, generator=None) -> torch.Tensor:
        """log p(x, y_s, z_s) - log q(y_s|x) q(z_s|x, y_s), y_s ~ q(y|x), z_s ~ q(z|x, y_s): (S, B).

        The labels are not read: the estimate is of log p(x), the images alone.
        """
        x = self._check(as_batch(batch)).x
        log_q = torch.log_softmax(self.classifier(x), -1)  # (B, C)
        y = torch.multinomial(log_q.exp(), num_samples, replacement=True, generator=generator).T  # (S, B)
        one_hot = F.one_hot(y, self.num_classes).to(x.dtype)
        z_loc, z_scale = self.encoder(x, one_hot)  # x's first-layer product once, not S times
        eps = torch.randn(z_loc.shape, dtype=x.dtype, device=x.device, generator=generator)
        z = z_loc + z_scale * eps
        log_px = bernoulli_log_prob(self.decoder(self._joined(z, one_hot)), x)
        log_pz = _normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
        log_qz = _normal_log_prob(z, z_loc, z_scale)
        log_qy = log_q.T.gather(0, y)
        return log_px - math.log(self.num_classes) + log_pz - log_qz - log_qy

    def floats_per_particle(self) -> int:
        return super().floats_per_particle() + 2 * (self.x_dim + self.num_classes)

    # --- scores ----------------------------------------------------------------
    @torch.no_grad()
    def scores(self, data, batch_size: int = 1000) -> dict:
        """{"classifier_accuracy": the fraction of `data`'s images q(y|x) classifies right}."""
        if data.labels is None:
            return {}
        right = 0
        with evaluating(self):
            for batch in data.batches(batch_size):
                right += (self.classify(batch.x) == batch.y).sum().item()
        return {"classifier_accuracy": right / max(len(data), 1)}

    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """The mean image p(x|y, z = E[z|x, y]) of each image, y the classifier's class: (B, x_dim)."""
        x = as_batch(batch).x
        one_hot = F.one_hot(self.classify(x), self.num_classes).to(x.dtype)
        z_loc, _ = self.encoder(x, one_hot)
        return torch.sigmoid(self.decoder(self._joined(z_loc, one_hot)))
