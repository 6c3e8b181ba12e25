"""The model contract: one base class every model implements, with defaults for the optional parts.

A model says what it is twice over the same networks: as a Pyro program
(:meth:`LatentModel.model` and :meth:`LatentModel.guide`) and by hand
(:meth:`LatentModel.elbo`, and :meth:`LatentModel.loss` when training
minimises something else). The training loop, evaluation, the pictures and
the report call these methods and nothing else; none of them asks a model
what it has. A new model is one file that subclasses :class:`LatentModel`
and one line in ``vaelab.models.MODELS``.

Every method takes a :class:`~vaelab.data.batches.Batch` (images ``x``
(B, D) floats in [0, 1], labels ``y`` (B,) or None); a plain tensor of images
is taken as ``Batch(x)``, so ``vae.elbo(x)`` works from Python.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from vaelab.data.batches import Batch, DataSpec, ImageBatches
from vaelab.errors import ConfigError


@dataclass
class NoSettings:
    """A model with no settings of its own."""


class Loss(NamedTuple):
    """What an objective gives for one batch.

    loss: the scalar training minimises (summed over the batch; backward() on it);
    neg_elbo: -ELBO summed over the batch, when `loss`'s value is something else
    (a weighted objective such as the β-VAE's); None when `loss` is -ELBO.
    """

    loss: torch.Tensor
    neg_elbo: torch.Tensor | None = None


def value_of(neg_elbo: torch.Tensor, surrogate_loss: torch.Tensor) -> torch.Tensor:
    """Returns a scalar equal to `neg_elbo` whose gradient is `surrogate_loss`'s.

    For discrete latents: the surrogate's gradient is the ELBO's, its value is not.
    """
    # neg_elbo + 0, not surrogate + (neg_elbo - surrogate): the surrogate is
    # much larger (baselines' squared errors), and float32 would round the value.
    return neg_elbo.detach() + (surrogate_loss - surrogate_loss.detach())


def as_batch(batch) -> Batch:
    """Returns `batch` as a Batch; a tensor of images x becomes Batch(x)."""
    return batch if isinstance(batch, Batch) else Batch(batch)


@dataclass
class PictureView:
    """What a model's :meth:`~LatentModel.pictures` may draw from: a run's test set and records.

    images: the test split as evaluation sees it, with its labels;
    pick: a random order of its images, fixed by the run's seed;
    path(name): where picture `name` goes (RUN/plots/name.png), recording it.
    """

    images: ImageBatches
    pick: torch.Tensor
    seed: int
    title: str
    metrics: list
    evaluation: dict
    path: Callable[[str], Path]
    tsne_points: int = 2000
    echo: Callable[[str], None] = print


# The pictures every model gets, and their captions; a model adds its own.
GENERIC_CAPTIONS = {
    "elbo_curves": "Train and test ELBO per epoch (nats per image; higher is better); with --validation, "
    "the validation images' too.",
    "reconstructions": "Random test images (top) and the means of p(x | z = E[z|x]) (bottom).",
    "samples": "Mean images of p(x|z) for z drawn from the prior N(0, I).",
}


class LatentModel(nn.Module):
    """A latent-variable model of images, written as a Pyro program and by hand.

    Subclasses implement the required methods and override the optional ones
    whose defaults do not fit. Class attributes:

    - ``Settings``: a dataclass of the model's own settings (fields declared with
      :func:`vaelab.settings.setting`); a run's config is the common settings plus these.
    - ``labels``: "classes" if the model needs class labels, else None.
    - ``default_elbo``: the Pyro ELBO used when none is asked for.
    - ``discrete_latents``: True if a latent is discrete; the Pyro backend then
      needs ``tracegraph`` and :meth:`loss` is a surrogate.
    - ``default_iw_samples``: the K that ``vaelab evaluate`` uses by default.
    - ``vectorised_particles``: the Pyro program broadcasts over a particles plate.
    - ``samples_with_generator``: :meth:`log_importance_weights` draws from the
      generator it is given (else from torch's global one, seeded by the caller).
    - ``mean_field_guide``: the guide's latents are independent given x, so
      ``TraceMeanField_ELBO`` (``meanfield``) applies.
    - ``one_gaussian_latent``: one latent site ``z``, Normal in the guide, with
      :meth:`encode` giving its parameters and :meth:`terms_given` the ELBO's
      terms for any Normal q(z): the amortisation gap is measured for these.
    - ``trains_on_bounds``: :meth:`log_weights` is written, so the model trains
      on the importance-weighted bounds (``--elbo iwae`` and ``dreg``).
    - ``pyro_elbos``: the Pyro ELBOs the program needs (M2's enumerated label:
      ``("enum",)``); empty: any that suits its latents.
    - ``hides_test_labels``: evaluation scores the images alone (the test
      ELBO and log-likelihood bound log p(x)); the labels are observations the
      model may go without (M2), not conditions it needs (the CVAE).
    - ``discrete_upstream``: None, or a method ``(site name) -> frozenset`` of
      the non-reparameterised sites whose draws reach that site's
      log-probability (in the model and in the guide): the Pyro backend's
      ``tracegraph`` then skips Pyro's provenance tracking
      (:class:`vaelab.objectives.DeclaredTraceGraph_ELBO`).
    - ``idle_parameters``: some epochs train some of the networks alone (the
      completion CVAE's baseline first), so under torchrun DDP must look for
      parameters without gradients each step.
    - ``not_graphable``: None if the torch backend's step can be recorded as
      a CUDA graph (``--cuda-graph``); else why not, as a phrase ("takes
      shapes from the data"): a graph replays fixed shapes and cannot read
      values on the host.
    """

    Settings: ClassVar[type] = NoSettings
    labels: ClassVar[str | None] = None
    default_elbo: ClassVar[str] = "trace"
    discrete_latents: ClassVar[bool] = False
    default_iw_samples: ClassVar[int] = 5000
    vectorised_particles: ClassVar[bool] = True
    samples_with_generator: ClassVar[bool] = True
    trains_on_bounds: ClassVar[bool] = False
    mean_field_guide: ClassVar[bool] = True
    one_gaussian_latent: ClassVar[bool] = False
    pyro_elbos: ClassVar[tuple] = ()
    hides_test_labels: ClassVar[bool] = False
    not_graphable: ClassVar[str | None] = None
    idle_parameters: ClassVar[bool] = False
    discrete_upstream = None
    _guide_stopped: int = 0  # how many stopped_guide() blocks are open
    _given_noise: list | None = None  # draws handed in by given_noise(), taken in order

    @classmethod
    def check_config(cls, config) -> None:
        """Raises ConfigError if the run's common settings and this model's do not go together.

        Called when a config is validated, before anything is read or written
        (M2's labelled images per batch against the batch size; the VampPrior's
        warm-up against a bound, which has no KL term to weight).
        """

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        """Returns the keyword arguments that build this model from its settings for `data`.

        They are saved in the checkpoint, so a run is rebuilt without its config.
        Raises ConfigError if the data do not suit the model.
        """
        raise NotImplementedError

    @classmethod
    def training_labels(cls, labels, num_classes: int | None, config):
        """Returns the training labels the model trains on: by default `labels` as they are.

        A semi-supervised model keeps a few and marks the rest -1 (unknown);
        it raises ConfigError if the run's `config` asks for more than there are.
        """
        return labels

    def training_order(self, order: torch.Tensor, labels, config, epoch: int) -> torch.Tensor:
        """Returns the image indices one training epoch visits, batch after batch: `order` itself by default.

        `order` is the epoch's shuffle of the training set; a model may visit
        some images more than once (M2 puts labelled images in every batch).
        It must be a function of `order`, the labels, `config` and `epoch`
        alone, so an interrupted epoch resumes exactly.
        """
        return order

    # --- required: the model twice ------------------------------------------
    def model(self, batch: Batch) -> None:
        """The Pyro program p(z) p(x|z), with x observed."""
        raise NotImplementedError

    def guide(self, batch: Batch) -> None:
        """The Pyro program q(z|x)."""
        raise NotImplementedError

    def elbo(self, batch: Batch, particles: int = 1, analytic_kl: bool = True) -> torch.Tensor:
        """Returns the ELBO of each image by hand: (B,) nats.

        The mean over `particles` draws z ~ q(z|x) (Pyro's vectorised
        ``num_particles``: one noise tensor of shape (particles, B, ...)); the
        KL in closed form where the model has one and `analytic_kl` is set (as
        ``TraceMeanField_ELBO``), else log q(z|x) - log p(z) at the draws (as
        ``Trace_ELBO``). A model with other options takes and ignores these.
        """
        raise NotImplementedError

    def log_importance_weights(self, batch: Batch, num_samples: int, generator=None) -> torch.Tensor:
        """Returns log p(x, z_s) - log q(z_s|x) for `num_samples` guide draws: (num_samples, B)."""
        raise NotImplementedError

    def floats_per_particle(self) -> int:
        """Returns about how many floats one (image, sample) pair needs in log_importance_weights."""
        raise NotImplementedError

    # --- optional: the importance-weighted training bounds ---------------------
    def log_weights(self, batch: Batch, num_samples: int, stop_guide: bool = False, use=None) -> torch.Tensor:
        """Returns log p(x, z_k) - log q(z_k|x) at `num_samples` reparameterised draws: (K, B).

        Differentiable: what IWAE and DReG train on (``--elbo iwae|dreg``), drawn from torch's
        global generator as Pyro's vectorised particles are: one noise tensor
        (K, B, ...) per latent, in the guide's order. `stop_guide`: log q is
        computed with the guide's weights stopped (:meth:`stopped_guide`), the
        latents still live (DReG's form). Each latent draw z goes through
        `use(z)` before log p and log q read it: DReG reweights its gradient
        there, so a later draw must be sampled from the earlier draw itself,
        not from what `use` returned (or that path is reweighted twice).
        Models that set ``trains_on_bounds`` write it.
        """
        raise NotImplementedError(f"model {type(self).__name__} does not train on importance-weighted bounds")

    @contextlib.contextmanager
    def stopped_guide(self):
        """Inside, the guide's networks (run through :meth:`guide_net`) use their weights detached.

        Their inputs stay live: log q(z2|z1) still depends on z1. DReG's
        encoder gradient is the pathwise one through the draws alone.
        """
        self._guide_stopped += 1
        try:
            yield
        finally:
            self._guide_stopped -= 1

    def standard_normal(self, shape, like: torch.Tensor) -> torch.Tensor:
        """The hand-written loss's N(0, I) noise of `shape`: a fresh draw, or the next given one.

        Drawn from the global generator like ``torch.randn``; inside
        :meth:`given_noise` the draws handed in are returned instead, in order,
        so a caller that draws them itself (the seeds of a stacked sweep, each
        from its own generator) gets the same run as the model drawing alone.
        """
        if self._given_noise is None:
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        eps = self._given_noise.pop(0)
        if tuple(eps.shape) != tuple(shape):
            raise ValueError(f"given noise of shape {tuple(eps.shape)}, the loss draws {tuple(shape)}")
        return eps

    @contextlib.contextmanager
    def given_noise(self, draws: list):
        """Inside, :meth:`standard_normal` returns `draws` in order instead of drawing."""
        self._given_noise = list(draws)
        try:
            yield
        finally:
            self._given_noise = None

    def guide_net(self, module: nn.Module, *inputs):
        """Runs the guide's network `module` on `inputs`; its weights detached inside stopped_guide()."""
        if not self._guide_stopped:
            return module(*inputs)
        weights = {name: p.detach() for name, p in module.named_parameters()}
        return torch.func.functional_call(module, weights, inputs)

    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Returns `n` mean images drawn from the model: (n, D) in [0, 1] (`y`: labels to draw, if any)."""
        raise NotImplementedError

    def reconstruct(self, batch: Batch) -> torch.Tensor:
        """Returns the model's reconstruction of each image: (B, D) in [0, 1]."""
        raise NotImplementedError

    # --- optional: training -------------------------------------------------
    def loss(self, batch: Batch, **estimate) -> Loss:
        """Returns the hand-written training loss of `batch`: by default -Σ ELBO.

        `estimate`: ``particles`` and ``analytic_kl``, as :meth:`elbo` takes
        them, when the run asks for other than the default.
        """
        batch = as_batch(batch)
        elbo = self.elbo(batch, **estimate)
        # One value per image, or a reduction went over the wrong axis.
        if elbo.shape != batch.x.shape[:1]:
            raise ValueError(
                f"elbo(x) must give one value per image, shape ({batch.x.shape[0]},); got {tuple(elbo.shape)}"
            )
        return Loss(-elbo.sum())

    @property
    def weighted(self) -> bool:
        """True when training minimises something other than -ELBO (then both are logged)."""
        return False

    def unweighted(self):
        """Returns a context in which the Pyro program is the plain ELBO's (no weights)."""
        return contextlib.nullcontext()

    def param_groups(self, lr: float, settings) -> list[dict]:
        """Returns the optimiser's parameter groups: every parameter at `lr`."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def on_epoch(self, epoch: int, settings) -> None:
        """Sets what the model changes from epoch to epoch (counted from 1); nothing by default.

        A model that overrides it also overrides :meth:`program_state`.
        """

    def program_state(self) -> tuple:
        """The plain values :meth:`on_epoch` sets that the Pyro program reads: () by default.

        Pyro's compiled ELBOs (``--elbo jit``, ``jit-meanfield``) trace the
        program once and freeze such values into the graph as constants (a
        warm-up's KL weight); they trace it anew when this changes.
        """
        return ()

    def epoch_done(self, epoch: int, line: dict, settings) -> None:
        """Reads epoch `epoch`'s metrics `line` once it is scored; nothing by default.

        `line` holds the test ELBO, the model's scores and, with ``--validation``,
        ``val_elbo``. Called before the epoch's checkpoint is written, so what the
        model keeps in its buffers here (a best epoch's weights) resumes with
        it. Under torchrun every rank calls it with rank 0's `line`; buffers are
        not synchronised between ranks during training, so a model changes them
        here or in :meth:`on_epoch` alone, alike on every rank.
        """

    # --- optional: scores and pictures ----------------------------------------
    def scores(self, data: ImageBatches, batch_size: int = 1000) -> dict:
        """Returns the model's own per-epoch scores on `data`: none by default.

        Training scores the test split, and the validation split (``--validation
        N``) too, its scores logged with a ``val_`` prefix.
        """
        return {}

    def evaluation_scores(self, data: ImageBatches, split: str, batch_size: int = 1000) -> dict:
        """Returns the model's own scores for eval.json on `split`: its per-epoch ones by default."""
        return self.scores(data, batch_size)

    @classmethod
    def picture_captions(cls) -> dict:
        """Returns the name and caption of every picture of this model, in the report's order."""
        return dict(GENERIC_CAPTIONS)

    def pictures(self, view: PictureView) -> dict:
        """Draws the model's own pictures (by default: 64 prior samples); returns facts to print.

        The loss curves and reconstructions are drawn for every model by vaelab.figures.
        """
        from vaelab import plots

        shape = view.images.image_shape
        with torch.random.fork_rng():
            torch.manual_seed(view.seed)
            drawn = self.sample(64)
        plots.samples(drawn.reshape(-1, *shape).cpu().numpy(), view.path("samples"))
        return {}

    # --- shared ---------------------------------------------------------------
    def check_labels(self, batch: Batch) -> None:
        """Raises ValueError if this model needs class labels and `batch` has none."""
        if self.labels is not None and batch.y is None:
            raise ValueError(f"{type(self).__name__} needs class labels y with the images")

    def device(self) -> torch.device:
        return next(self.parameters()).device


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Puts `model` in eval mode, without gradients, and back as it was after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def dataset_elbo(model: LatentModel, data: ImageBatches, batch_size=1000, seed=0) -> float:
    """Returns the mean hand-written ELBO over `data`, in nats per image.

    The noise comes from `seed` in a forked RNG, so the number is reproducible
    and the training stream is left untouched.
    """
    device = data.pixels.device
    devices = [device] if device.type == "cuda" else []
    total = torch.zeros((), device=device)
    with evaluating(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in data.batches(batch_size):
            total += model.elbo(Batch(batch.x) if model.hides_test_labels else batch).sum()
    return total.item() / len(data)


def refuse_labels(model: LatentModel, y) -> None:
    """Raises ConfigError if labels are asked of `model`, which draws without them."""
    if y is not None:
        raise ConfigError(
            f"model {type(model).__name__} does not draw by label; a label is for a conditional model"
        )
