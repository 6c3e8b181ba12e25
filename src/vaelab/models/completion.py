"""Completing a digit from some of its quadrants: Pyro's CVAE example (Sohn et al., 2015).

Each image is cut into the quadrants a model is given (the input x: the
bottom-left one; the left half; all but the bottom-right) and the rest it
must predict (the output y), as Pyro's ``examples/cvae`` does. Two models
share one run:

- a deterministic baseline network, x -> y's pixel probabilities (an MLP
  fitted by the masked binary cross-entropy);
- the conditional VAE: a prior network p(z|x) fed x with y's pixels filled
  in by the baseline's guess, a generation network p(y|z), and a recognition
  network q(z|x, y) fed the whole image.

The baseline trains first, alone, for ``baseline_epochs``; then it is frozen
and the CVAE trains (:meth:`CompletionCVAE.on_epoch` switches). Pyro's
example stops the baseline early, once its loss on the test set has not
improved for 3 epochs, and keeps its best epoch's weights; vaelab does the
same with ``--baseline-patience P`` on a validation split of the training
images (``--validation N``), so the test set chooses nothing
(:meth:`CompletionCVAE.epoch_done`). Written
twice, like every model: the Pyro program (in the baseline's epochs a model
with one observed site and an empty guide, then the CVAE's) and the same
objective by hand, the KL between the two Normals in closed form (or at the
draws, as ``Trace_ELBO``).

The numbers Pyro's tutorial reports, per test image and in nats: the
baseline's negative log-likelihood of y (its masked cross-entropy) and the
CVAE's negative conditional ELBO (``evaluation_scores``); ``vaelab evaluate``'s
log-likelihood is the tighter importance-sampled log p(y|x), the recognition
network the proposal.

Pixels in [0, 1] as given (the tutorial does not binarise); the networks see
the pixels they are not given as -1.
"""

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from vaelab import plots
from vaelab.data.batches import Batch, DataSpec
from vaelab.errors import ConfigError
from vaelab.models.base import GENERIC_CAPTIONS, LatentModel, PictureView, as_batch, evaluating
from vaelab.models.vae import _normal_log_prob, bernoulli_log_prob, checked_images
from vaelab.nets import BernoulliDecoder, GaussianEncoder, mlp
from vaelab.settings import setting

QUADRANTS = {1: "the bottom-left quadrant", 2: "the left half", 3: "all but the bottom-right quadrant"}
HIDDEN_VALUE = -1.0  # what the networks see where a pixel is not given
COMPLETIONS = 4  # CVAE completions per image in the picture


def given_mask(image_shape, quadrants: int) -> torch.Tensor:
    """True where a pixel is given, (H*W,): Pyro's example's cut for 1, 2 or 3 quadrants.

    Made in numpy, so it holds values when the model is built on torch's meta device.
    """
    h, w = image_shape
    given = np.zeros((h, w), dtype=bool)
    given[h // 2 :, : w // 2] = True  # bottom-left
    if quadrants >= 2:
        given[:, : w // 2] = True  # the left half
    if quadrants >= 3:
        given[: h // 2, :] = True  # and the top half
    return torch.from_numpy(given.reshape(-1))


def _normal_kl(q_loc, q_scale, p_loc, p_scale) -> torch.Tensor:
    """KL(N(q_loc, q_scale) || N(p_loc, p_scale)) summed over the last axis."""
    ratio = (q_scale / p_scale) ** 2
    return 0.5 * (ratio + ((q_loc - p_loc) / p_scale) ** 2 - 1 - torch.log(ratio)).sum(-1)


class CompletionCVAE(LatentModel):
    """Pyro's CVAE example: predict the hidden quadrants y of a digit from the given ones x."""

    default_elbo = "trace"
    # Not jit or jit-meanfield: the CVAE's prior reads the frozen baseline's weights, which a compiled
    # graph cannot take as constants; and the program changes when the baseline's epochs end.
    pyro_elbos = ("trace", "meanfield", "mc", "tracegraph", "enum")
    default_iw_samples = 1000
    idle_parameters = True  # the baseline's epochs, then the CVAE's

    @dataclass
    class Settings:
        quadrants: int = setting(1, "quadrants given: 1, 2 or 3 (the rest are predicted)", choices=(1, 2, 3))
        z_dim: int = setting(200, "latent size", at_least=1, at_most=100_000)
        hidden: tuple[int, ...] = setting(
            (500, 500), "every network's hidden widths, comma-separated", at_least=1, at_most=100_000
        )
        baseline_epochs: int = setting(
            10, "epochs that train the baseline network alone, before the CVAE", at_least=1, at_most=100_000
        )
        baseline_patience: int = setting(
            0,
            "with --validation: stop the baseline once its validation loss has not improved for this many "
            "epochs (at most --baseline-epochs), keeping its best epoch's weights; 0: train it "
            "--baseline-epochs epochs",
            at_least=0,
            at_most=100_000,
        )

    @classmethod
    def check_config(cls, config) -> None:
        """Refuses early stopping without a validation split (the test set must not choose the epoch),
        and beside --restarts, whose starts could then be compared in different phases."""
        patience = config.settings.baseline_patience
        if patience and not config.validation:
            raise ConfigError(
                f"--baseline-patience {patience} stops on held-out training images: give a validation "
                "split with --validation N (the test set chooses nothing)"
            )
        if patience and config.restarts > 1:
            raise ConfigError(
                f"--baseline-patience {patience} with --restarts {config.restarts}: the starts' baselines "
                "may stop at different epochs, and a start training the CVAE would be compared with one "
                "still training its baseline; leave one of them off"
            )

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        if min(data.image_shape) < 2:
            raise ConfigError(f"model cvae-completion needs images of at least 2x2, got {data.image_shape}")
        args = {
            "image_shape": list(data.image_shape),
            "quadrants": settings.quadrants,
            "z_dim": settings.z_dim,
            "hidden": list(settings.hidden),
        }
        if settings.baseline_patience:  # only then: the runs made before keep their checkpoints' keys
            args["early_stopping"] = True
        return args

    def __init__(self, image_shape=(28, 28), quadrants=1, z_dim=200, hidden=(500, 500), early_stopping=False):
        super().__init__()
        hidden = tuple(hidden)
        self.image_shape, self.quadrants, self.z_dim, self.hidden = (
            tuple(image_shape),
            quadrants,
            z_dim,
            hidden,
        )
        self.x_dim = self.image_shape[0] * self.image_shape[1]
        given = given_mask(self.image_shape, quadrants)
        self.register_buffer("given", given, persistent=False)
        self.register_buffer("target", torch.from_numpy(np.flatnonzero(~given.numpy())), persistent=False)
        self.baseline = nn.Sequential(mlp([self.x_dim, *hidden], "relu"), nn.Linear(hidden[-1], self.x_dim))
        self.prior_net = GaussianEncoder(self.x_dim, z_dim, hidden, "relu")
        self.recognition_net = GaussianEncoder(self.x_dim, z_dim, hidden, "relu")
        self.generation_net = BernoulliDecoder(z_dim, self.x_dim, hidden[::-1], "relu")
        self.training_baseline = False  # set by on_epoch: the baseline's epochs come first
        self.early_stopping = early_stopping
        if early_stopping:  # in the checkpoint, so a resumed run stops where it would have
            numel = sum(p.numel() for p in self.baseline.parameters())
            self.register_buffer("baseline_best", torch.zeros(numel))  # the best epoch's weights, flat
            self.register_buffer("baseline_best_elbo", torch.tensor(-np.inf, dtype=torch.float64))
            self.register_buffer("baseline_best_epoch", torch.tensor(0))
            # The baseline's last epoch; 0 while it trains.
            self.register_buffer("baseline_stopped", torch.tensor(0))

    def on_epoch(self, epoch: int, settings) -> None:
        """The first `baseline_epochs` epochs (fewer if it stopped early) fit the baseline; then the CVAE."""
        if self.early_stopping:
            self.training_baseline = int(self.baseline_stopped) == 0
        else:
            self.training_baseline = epoch <= settings.baseline_epochs

    def program_state(self) -> tuple:
        return (self.training_baseline,)  # the program fits the baseline, or the CVAE beside it

    @torch.no_grad()
    def epoch_done(self, epoch: int, line: dict, settings) -> None:
        """With early stopping: keeps the baseline's best weights by `line`'s val_elbo; stops it when due.

        While the baseline trains, val_elbo is its log-likelihood of the
        validation images' hidden pixels. It stops after `baseline_patience`
        epochs without a better one, or at `baseline_epochs`, and its best
        epoch's weights are put back before this epoch's checkpoint: the
        CVAE's prior then reads them. `line`'s own scores are this epoch's weights'.
        """
        if not (self.early_stopping and self.training_baseline):
            return
        params = list(self.baseline.parameters())
        if line["val_elbo"] > self.baseline_best_elbo:  # NaN never is: it counts as no better
            self.baseline_best.copy_(torch.cat([p.reshape(-1) for p in params]))
            self.baseline_best_elbo.fill_(line["val_elbo"])
            self.baseline_best_epoch.fill_(epoch)
        best_epoch = int(self.baseline_best_epoch)
        if epoch - best_epoch >= settings.baseline_patience or epoch >= settings.baseline_epochs:
            if best_epoch:  # else no epoch scored better than -inf (NaN throughout): its own weights stay
                kept = self.baseline_best.split([p.numel() for p in params])
                for p, best in zip(params, kept, strict=True):
                    p.copy_(best.view_as(p))
            self.baseline_stopped.fill_(epoch)

    # --- pieces ---------------------------------------------------------------
    def _check(self, batch) -> Batch:
        return checked_images(self, batch, self.x_dim)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """x as the networks see it: the given pixels, -1 elsewhere."""
        return torch.where(self.given, x, torch.full_like(x, HIDDEN_VALUE))

    def baseline_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline's logits of every pixel, from the given ones: (B, x_dim)."""
        return self.baseline(self.inputs(x))

    def prior(self, x: torch.Tensor):
        """p(z|x): loc, scale from the given pixels, the rest filled in by the (frozen) baseline."""
        with torch.no_grad():
            guess = torch.sigmoid(self.baseline_logits(x))
        return self.prior_net(torch.where(self.given, x, guess))

    def likelihood(self, logits: torch.Tensor):
        """p(y|·) of the hidden pixels: independent Bernoullis (grey pixels allowed)."""
        return dist.Bernoulli(logits=logits.index_select(-1, self.target), validate_args=False).to_event(1)

    # --- Pyro ---------------------------------------------------------------
    def model(self, batch) -> None:
        """The baseline's p(y|x), or the CVAE's p(z|x) p(y|z); the hidden pixels y observed."""
        x = self._check(batch).x
        y = x.index_select(-1, self.target)
        with pyro.plate("data", x.shape[0]):
            if self.training_baseline:
                pyro.module("baseline", self.baseline)
                pyro.sample("y", self.likelihood(self.baseline_logits(x)), obs=y)
                return
            pyro.module("prior_net", self.prior_net)
            pyro.module("generation_net", self.generation_net)
            loc, scale = self.prior(x)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            pyro.sample("y", self.likelihood(self.generation_net(z)), obs=y)

    def guide(self, batch) -> None:
        """q(z|x, y) from the whole image (nothing while the baseline trains: it has no latent)."""
        x = self._check(batch).x
        if self.training_baseline:
            return
        pyro.module("recognition_net", self.recognition_net)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.guide_net(self.recognition_net, x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # --- PyTorch --------------------------------------------------------------
    def elbo(self, batch, particles: int = 1, analytic_kl: bool = True) -> torch.Tensor:
        """Each image's bound on log p(y|x), (B,): the baseline's log-likelihood while it trains.

        The CVAE's: log p(y|z) - KL(q(z|x, y) || p(z|x)), the mean over `particles`
        draws; the KL in closed form, or at the draws without `analytic_kl`.
        """
        x = self._check(batch).x
        y = x.index_select(-1, self.target)
        if self.training_baseline:
            return bernoulli_log_prob(self.baseline_logits(x).index_select(-1, self.target), y)
        p_loc, p_scale = self.prior(x)
        q_loc, q_scale = self.guide_net(self.recognition_net, x)
        shape = q_loc.shape if particles == 1 else (particles, *q_loc.shape)
        z = q_loc + q_scale * torch.randn(shape, dtype=x.dtype, device=x.device)
        log_py = bernoulli_log_prob(self.generation_net(z).index_select(-1, self.target), y)
        if analytic_kl:
            kl = _normal_kl(q_loc, q_scale, p_loc, p_scale)
        else:
            kl = _normal_log_prob(z, q_loc, q_scale) - _normal_log_prob(z, p_loc, p_scale)
        elbo = log_py - kl
        return elbo if particles == 1 else elbo.mean(0)

    @torch.no_grad()
    def log_importance_weights(self, batch, num_samples: int, generator=None) -> torch.Tensor:
        """log p(y, z_s|x) - log q(z_s|x, y), z_s from the recognition network: (S, B)."""
        x = self._check(as_batch(batch)).x
        y = x.index_select(-1, self.target)
        p_loc, p_scale = self.prior(x)
        q_loc, q_scale = self.recognition_net(x)
        eps = torch.randn((num_samples, *q_loc.shape), dtype=x.dtype, device=x.device, generator=generator)
        z = q_loc + q_scale * eps
        log_py = bernoulli_log_prob(self.generation_net(z).index_select(-1, self.target), y)
        return log_py + _normal_log_prob(z, p_loc, p_scale) - _normal_log_prob(z, q_loc, q_scale)

    def floats_per_particle(self) -> int:
        # Per (image, draw): the generation network's layers and output, the draw, its noise.
        return 4 * self.x_dim + 3 * sum(self.hidden) + 4 * self.z_dim

    # --- scores, drawing --------------------------------------------------------
    @torch.no_grad()
    def baseline_nll(self, data, batch_size: int = 1000) -> float:
        """The baseline's negative log-likelihood of the hidden pixels, nats per image."""
        total = 0.0
        with evaluating(self):
            for batch in data.batches(batch_size):
                logits = self.baseline_logits(batch.x).index_select(-1, self.target)
                total -= bernoulli_log_prob(logits, batch.x.index_select(-1, self.target)).sum().item()
        return total / max(len(data), 1)

    def scores(self, data, batch_size: int = 1000) -> dict:
        """{"baseline_nll": the baseline's NLL of the hidden pixels on `data`}, each epoch."""
        return {"baseline_nll": self.baseline_nll(data, batch_size)}

    @torch.no_grad()
    def cvae_nll_elbo(self, data, batch_size: int = 1000, particles: int = 10, seed: int = 0) -> float:
        """The CVAE's -ELBO of the hidden pixels, nats per image: `particles` draws, the KL at the draws.

        What Pyro's tutorial tabulates (``Trace_ELBO(num_particles)``); seeded, in a forked RNG.
        """
        was, self.training_baseline = self.training_baseline, False
        total = 0.0
        device = data.pixels.device
        try:
            with evaluating(self), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                for batch in data.batches(batch_size):
                    total -= self.elbo(batch, particles=particles, analytic_kl=False).sum().item()
        finally:
            self.training_baseline = was
        return total / max(len(data), 1)

    def evaluation_scores(self, data, split: str, batch_size: int = 1000) -> dict:
        """The tutorial's table: the baseline's NLL and the CVAE's -ELBO (10 draws), nats per image.

        With early stopping, also the baseline's last epoch (``baseline_stopped``;
        0 while it still trains, its last epoch's weights scored) and, once it
        has stopped, the best epoch whose weights it kept.
        """
        scores = {
            "baseline_nll": self.baseline_nll(data, batch_size),
            "cvae_nll_elbo": self.cvae_nll_elbo(data),
        }
        if self.early_stopping:
            scores["baseline_stopped"] = int(self.baseline_stopped)
            if scores["baseline_stopped"]:
                scores["baseline_best_epoch"] = int(self.baseline_best_epoch)
        return scores

    def sample(self, n: int, y=None) -> torch.Tensor:
        raise ConfigError(
            "model cvae-completion completes given images rather than drawing new ones: "
            "its pictures show completions of test digits"
        )

    @torch.no_grad()
    def complete(self, x: torch.Tensor, draw: bool = True) -> torch.Tensor:
        """x with its hidden pixels replaced by the CVAE's mean prediction at z ~ p(z|x) (or its mean)."""
        loc, scale = self.prior(x)
        z = loc + scale * torch.randn_like(loc) if draw else loc
        return torch.where(self.given, x, torch.sigmoid(self.generation_net(z)))

    def reconstruct(self, batch) -> torch.Tensor:
        """The given pixels, the rest the CVAE's prediction at the prior's mean z: (B, x_dim)."""
        return self.complete(as_batch(batch).x, draw=False)

    @classmethod
    def picture_captions(cls) -> dict:
        return {
            "elbo_curves": GENERIC_CAPTIONS["elbo_curves"]
            + " The baseline's log-likelihood of the hidden pixels while it trains, then the CVAE's bound.",
            "reconstructions": "Test digits (top) and their completions from the given quadrants at the "
            "prior's mean z (bottom).",
            "completions": f"Per test digit (columns): the given pixels (hidden ones grey), the truth, the "
            f"baseline's guess and {COMPLETIONS} CVAE completions, each from a draw z ~ p(z|x).",
        }

    def pictures(self, view: PictureView) -> dict:
        shape = view.images.image_shape
        device = view.images.pixels.device
        x = view.images.batch(view.pick[:8].to(device)).x
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(view.seed)
            rows = [
                torch.where(self.given, x, torch.full_like(x, 0.3)),
                x,
                torch.where(self.given, x, torch.sigmoid(self.baseline_logits(x))),
                *(self.complete(x) for _ in range(COMPLETIONS)),
            ]
        names = ["given", "truth", "baseline", *(f"CVAE {i + 1}" for i in range(COMPLETIONS))]
        grid = torch.stack(rows).reshape(-1, *shape).cpu().numpy()
        title = f"Completions from {QUADRANTS[self.quadrants]}"
        plots.samples(grid, view.path("completions"), title, names)
        return {}
