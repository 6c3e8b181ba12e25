"""Attend-Infer-Repeat (Eslami et al., 2016), written twice over the same networks.

An image is a sum of up to ``max_steps`` objects. At step t the model draws

- ``z_pres_t`` ~ Bernoulli(p · z_pres_{t-1}): present only if the previous step was,
  so the count follows a (truncated) geometric prior;
- ``z_where_t`` = (s, x, y) ~ Normal: the object's window, of side canvas/s pixels
  centred at (x, y) in [-1, 1] image coordinates;
- ``z_what_t`` ~ Normal(0, I): a code decoded to a glimpse, which a spatial
  transformer writes into the window; glimpses add up on the canvas.

The image is Normal(canvas, likelihood_sd) per pixel. The guide runs an LSTM
over the image and the previous step's latents and predicts ``z_pres_t``,
``z_where_t``, then ``z_what_t`` from the glimpse its window cuts out.

``z_pres`` is discrete, so its gradient is a score-function (REINFORCE) term.
Two implementations build the same surrogate loss:

- Pyro: ``model``/``guide`` with ``poutine.mask``-style masks for absent steps
  and a data-dependent baseline per ``z_pres`` site (``baseline_value``), fitted
  by ``TraceGraph_ELBO``, which keeps for each ``z_pres_t`` only the cost terms
  downstream of it (provenance tracking);
- PyTorch: :meth:`AIR.surrogate`, the same ELBO, downstream costs and baseline
  loss written by hand. A test holds the two and their gradients together.

>>> air = AIR(x_dim=2500)
>>> x = torch.rand(8, 2500)
>>> elbo, surrogate = air.surrogate(x)         # hand-written
>>> elbo, surrogate = TraceGraph_ELBO()._loss_and_surrogate_loss(air.model, air.guide, (x,), {})
"""

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Normal

from vaelab.data.batches import DataSpec
from vaelab.models.air_parts import (
    GuideStep,
    annealed_prior,
    boxes_from_where,
    image_to_window,
    window_to_image,
)
from vaelab.models.base import LatentModel, Loss, as_batch, refuse_labels, value_of
from vaelab.settings import setting

# The guide's z_pres head starts at logit 3: each object present with probability
# sigmoid(3) = 0.9526, the start every run of the preset has had (z_pres_init).
INITIAL_PRESENT = 1 / (1 + math.exp(-3.0))
INITIAL_WHERE_SCALE_BIAS = -2.25  # z_where's standard deviations start at softplus(-2.25) = 0.1
BASELINE_UNIT = 100.0  # nats: the baseline network's output is in these units


class AIR(LatentModel):
    """Attend-Infer-Repeat on square images of x_dim = image_size² pixels in [0, 1].

    Options that make it train from its defaults (Pyro's AIR tutorial needed
    them as flags, pyro-ppl/pyro#637): a small prior probability of each further
    object (`z_pres_prior`), a tight prior on the window scale
    (`scale_prior_mean`, `scale_prior_sd`: one window fits one digit), a
    decoder whose sigmoid output starts dark (`decoder_output_bias`); and the
    guide's start: steps present, windows at the prior mean.
    """

    @dataclass
    class Settings:
        z_dim: int = setting(50, "size of each object's code z_what", at_least=1, at_most=100_000)
        # Scoring matches windows to digits over every assignment: max_steps! of them.
        max_steps: int = setting(3, "most objects per image", at_least=1, at_most=6)
        z_pres_prior: float = setting(0.01, "prior probability of each further object", probability=True)
        z_pres_prior_start: float | None = setting(
            None, "if set, anneal the z_pres prior from this to z_pres_prior", probability=True
        )
        anneal_epochs: int = setting(
            10, "epochs of that annealing (geometric in the probability)", at_least=1
        )
        scale_prior_mean: float = setting(2.5, "window side = image side / scale: 20 of 50 pixels")
        scale_prior_sd: float = setting(0.1, "standard deviation of the window scale's prior", positive=True)
        decoder_output_bias: float = setting(-2.0, "added before the glimpse decoder's sigmoid")
        likelihood_sd: float = setting(0.3, "pixels ~ Normal(canvas, likelihood_sd)", positive=True)
        baseline_lr: float = setting(1e-3, "Adam's learning rate for the z_pres baselines", positive=True)
        # sigmoid(3) turns every step on from the start; some seeds then keep a share of
        # single digits split over two windows (benchmarks/air_init_probe.py).
        z_pres_init: float = setting(
            INITIAL_PRESENT,
            "the guide's probability of each object at the start of training",
            probability=True,
        )

    # z_pres is discrete: Pyro fits it with TraceGraph_ELBO, by hand with a surrogate.
    default_elbo = "tracegraph"
    discrete_latents = True
    # Evaluation: the recurrent guide does not broadcast over a particles plate,
    # its draws come from torch's global generator, and a K of 5000 would take
    # hours; K = 100 is the default for AIR.
    vectorised_particles = False
    samples_with_generator = False
    default_iw_samples = 100
    mean_field_guide = False  # each step's latents depend on the steps before it
    # Measured on an H100 (benchmarks/gpu_epoch.py): the capture refuses its step.
    not_graphable = "copies a CPU tensor to the GPU, which a CUDA graph cannot record"

    @classmethod
    def arguments(cls, settings, data: DataSpec) -> dict:
        return {
            "x_dim": data.x_dim,
            "max_steps": settings.max_steps,
            "z_what_dim": settings.z_dim,
            "z_pres_prior": settings.z_pres_prior,
            "scale_prior_mean": settings.scale_prior_mean,
            "scale_prior_sd": settings.scale_prior_sd,
            "decoder_output_bias": settings.decoder_output_bias,
            "likelihood_sd": settings.likelihood_sd,
            "z_pres_init": settings.z_pres_init,
        }

    def __init__(
        self,
        x_dim=2500,
        max_steps=3,
        glimpse_size=20,
        z_what_dim=50,
        rnn_hidden=256,
        encoder_hidden=200,
        decoder_hidden=200,
        predict_hidden=200,
        baseline_hidden=200,
        z_pres_prior=0.01,
        scale_prior_mean=2.5,
        scale_prior_sd=0.1,
        pos_prior_sd=1.0,
        likelihood_sd=0.3,
        decoder_output_bias=-2.0,
        z_pres_init=INITIAL_PRESENT,
    ):
        super().__init__()
        side = math.isqrt(x_dim)
        if side * side != x_dim:
            raise ValueError(f"AIR needs square images; x_dim {x_dim} is not a square")
        self.x_dim, self.image_size, self.glimpse_size = x_dim, side, glimpse_size
        self.max_steps, self.z_what_dim = max_steps, z_what_dim
        self.z_pres_prior, self.likelihood_sd = z_pres_prior, likelihood_sd
        self.decoder_output_bias = decoder_output_bias
        self.register_buffer("where_prior_loc", torch.tensor([scale_prior_mean, 0.0, 0.0]))
        self.register_buffer("where_prior_scale", torch.tensor([scale_prior_sd, pos_prior_sd, pos_prior_sd]))
        g2 = glimpse_size * glimpse_size
        latent_dim = 3 + z_what_dim + 1
        self.rnn = GuideStep(x_dim, latent_dim, rnn_hidden)
        self.predict = nn.Sequential(
            nn.Linear(rnn_hidden, predict_hidden), nn.ReLU(), nn.Linear(predict_hidden, 7)
        )
        with torch.no_grad():
            # Start where learning can begin: steps present (probability z_pres_init,
            # sigmoid(3) by default), so the decoder sees objects from the first step, and windows at the
            # prior (z_where's loc is an offset from the prior mean; a loc near 0
            # would be scale 0, a window far larger than the image). A first
            # version without both turned every step off within 250 steps and
            # never turned one on again.
            head = self.predict[-1]
            head.bias[0] = math.log(z_pres_init / (1 - z_pres_init))
            head.bias[4:7] = INITIAL_WHERE_SCALE_BIAS
        self.encode = nn.Sequential(
            nn.Linear(g2, encoder_hidden), nn.ReLU(), nn.Linear(encoder_hidden, 2 * z_what_dim)
        )
        self.decode = nn.Sequential(
            nn.Linear(z_what_dim, decoder_hidden), nn.ReLU(), nn.Linear(decoder_hidden, g2)
        )
        # The baseline sees the guide's state, detached: it learns to predict each
        # step's downstream cost without pushing gradients into the guide.
        self.baseline = nn.Sequential(
            nn.Linear(rnn_hidden + 1, baseline_hidden), nn.ReLU(), nn.Linear(baseline_hidden, 1)
        )

    def param_groups(self, lr: float, settings) -> list[dict]:
        """Two groups: the model's decoder and the guide at `lr`, the baselines at settings.baseline_lr."""
        baseline = list(self.baseline.parameters())
        ids = {id(p) for p in baseline}
        inference = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": inference, "lr": lr}, {"params": baseline, "lr": settings.baseline_lr}]

    # --- shared pieces ------------------------------------------------------
    def _check(self, batch) -> torch.Tensor:
        """Returns the images of `batch`, (B, x_dim) floats; else raises."""
        x = as_batch(batch).x
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must be (batch, {self.x_dim}) flattened pixels, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floats in [0, 1], got dtype {x.dtype}")
        return x

    def _guide_step(self, image_part, prev, state):
        """Returns (state, z_pres probability, z_where loc, z_where scale) for one step."""
        z_where, z_what, z_pres = prev
        state = self.rnn(image_part, torch.cat([z_where, z_what, z_pres.unsqueeze(1)], 1), state)
        out = self.predict(state[0])
        z_pres_p = torch.sigmoid(out[:, 0]) * z_pres
        return state, z_pres_p, self.where_prior_loc + out[:, 1:4], F.softplus(out[:, 4:7]) + 1e-4

    def _what_params(self, images, z_where):
        out = self.encode(image_to_window(z_where, images, self.glimpse_size))
        return out[:, : self.z_what_dim], F.softplus(out[:, self.z_what_dim :]) + 1e-4

    def _baseline(self, state, z_pres_prev):
        # Costs are hundreds of nats; the network predicts them in units of
        # BASELINE_UNIT, so Adam's steps move it at a useful speed from the start.
        features = torch.cat([state[0].detach(), z_pres_prev.detach().unsqueeze(1)], 1)
        return BASELINE_UNIT * self.baseline(features).squeeze(1)

    def _glimpse(self, z_what):
        g = self.glimpse_size
        return torch.sigmoid(self.decode(z_what) + self.decoder_output_bias).view(-1, g, g)

    def _initial(self, x):
        """Returns what every pass of the guide starts from.

        (images (B, 1, H, W), the LSTM's image projection, computed once for all
        steps, the LSTM state, and the "previous step": no window, no code, present).
        """
        n = x.shape[0]
        images = x.view(n, 1, self.image_size, self.image_size)
        state = (x.new_zeros(n, self.rnn.hidden), x.new_zeros(n, self.rnn.hidden))
        prev = (x.new_zeros(n, 3), x.new_zeros(n, self.z_what_dim), x.new_ones(n))
        return images, self.rnn.from_image(x), state, prev

    def _draw(self, canvas, z_where, z_what, z_pres):
        """Returns `canvas` with the glimpse decoded from z_what added at z_where where z_pres is 1."""
        return canvas + window_to_image(z_where, self._glimpse(z_what), self.image_size) * z_pres.unsqueeze(1)

    # --- Pyro ---------------------------------------------------------------
    def discrete_upstream(self, site: str) -> frozenset:
        """The z_pres draws that reach `site`'s log-probability, in the model and in the guide.

        Step t's sites (z_pres_t, z_where_t, z_what_t) depend on z_pres_0 to
        z_pres_t: the earlier ones through the LSTM's input and the prior's
        "present only if the last was", z_pres_t through the masks; the image
        x on every step's. What Pyro's provenance tracking finds, declared
        (a test holds the two equal), so TraceGraph_ELBO need not track it.
        """
        last = self.max_steps - 1 if site == "x" else int(site.rsplit("_", 1)[1])
        return frozenset(f"z_pres_{t}" for t in range(last + 1))

    def model(self, batch) -> None:
        """p(z_pres, z_where, z_what) p(x | canvas), x observed."""
        x = self._check(batch)
        pyro.module("decode", self.decode)
        n = x.shape[0]
        canvas = x.new_zeros(n, self.x_dim)
        z_pres = x.new_ones(n)
        with pyro.plate("data", n):
            for t in range(self.max_steps):
                z_pres = pyro.sample(f"z_pres_{t}", dist.Bernoulli(self.z_pres_prior * z_pres))
                present = z_pres.bool()
                prior = dist.Normal(self.where_prior_loc.expand(n, 3), self.where_prior_scale.expand(n, 3))
                z_where = pyro.sample(f"z_where_{t}", prior.to_event(1).mask(present))
                zeros = x.new_zeros(n, self.z_what_dim)
                z_what = pyro.sample(f"z_what_{t}", dist.Normal(zeros, 1.0 + zeros).to_event(1).mask(present))
                canvas = self._draw(canvas, z_where, z_what, z_pres)
            pixels = dist.Normal(canvas, self.likelihood_sd)
            pyro.sample("x", pixels.to_event(1), obs=x)

    def guide(self, batch) -> None:
        """q(z|x): the LSTM's steps, each with a baseline for its z_pres."""
        x = self._check(batch)
        pyro.module("guide", self)
        n = x.shape[0]
        images, image_part, state, prev = self._initial(x)
        with pyro.plate("data", n):
            for t in range(self.max_steps):
                state, z_pres_p, where_loc, where_scale = self._guide_step(image_part, prev, state)
                baseline = self._baseline(state, prev[2])
                z_pres = pyro.sample(
                    f"z_pres_{t}",
                    dist.Bernoulli(z_pres_p),
                    infer={"baseline": {"baseline_value": baseline}},
                )
                present = z_pres.bool()
                z_where = pyro.sample(
                    f"z_where_{t}", dist.Normal(where_loc, where_scale).to_event(1).mask(present)
                )
                what_loc, what_scale = self._what_params(images, z_where)
                z_what = pyro.sample(
                    f"z_what_{t}", dist.Normal(what_loc, what_scale).to_event(1).mask(present)
                )
                prev = (z_where, z_what, z_pres)

    # --- PyTorch --------------------------------------------------------------
    def _run(self, batch):
        """One draw from the guide and the model's terms at it, per image and step.

        Returns a dict of (B, T) tensors: log p and log q of each step's sites
        (masked sites count 0), the reparameterised part of log q, the z_pres
        score, the baselines; and obs (B,), the log-likelihood of x.
        """
        x = self._check(batch)
        n = x.shape[0]
        images, image_part, state, prev = self._initial(x)
        canvas = x.new_zeros(n, self.x_dim)
        # No argument checks (validate_args=False): on a GPU each is a read from the host, a wait,
        # every step; the arguments are the networks' own outputs.
        terms = {k: [] for k in ("log_p", "log_q", "log_q_reparam", "score", "baseline")}
        for _ in range(self.max_steps):
            state, z_pres_p, where_loc, where_scale = self._guide_step(image_part, prev, state)
            terms["baseline"].append(self._baseline(state, prev[2]))
            q_pres = Bernoulli(z_pres_p, validate_args=False)
            z_pres = q_pres.sample()
            mask = z_pres  # 1 present, 0 absent: absent steps' z_where and z_what count 0
            q_where = Normal(where_loc, where_scale, validate_args=False)
            z_where = q_where.rsample()
            what_loc, what_scale = self._what_params(images, z_where)
            q_what = Normal(what_loc, what_scale, validate_args=False)
            z_what = q_what.rsample()
            log_q_pres = q_pres.log_prob(z_pres)
            log_q_reparam = (q_where.log_prob(z_where).sum(1) + q_what.log_prob(z_what).sum(1)) * mask
            p_pres = Bernoulli(self.z_pres_prior * prev[2], validate_args=False)
            p_where = Normal(self.where_prior_loc, self.where_prior_scale, validate_args=False)
            log_p_what = Normal(0.0, 1.0, validate_args=False).log_prob(z_what).sum(1)
            log_p = p_pres.log_prob(z_pres) + (p_where.log_prob(z_where).sum(1) + log_p_what) * mask
            canvas = self._draw(canvas, z_where, z_what, z_pres)
            terms["log_p"].append(log_p)
            terms["log_q"].append(log_q_pres + log_q_reparam)
            terms["log_q_reparam"].append(log_q_reparam)
            terms["score"].append(log_q_pres)
            prev = (z_where, z_what, z_pres)
        out = {k: torch.stack(v, 1) for k, v in terms.items()}
        out["obs"] = Normal(canvas, self.likelihood_sd, validate_args=False).log_prob(x).sum(1)
        return out

    def elbo(self, batch, particles: int = 1, analytic_kl: bool = True) -> torch.Tensor:
        """Returns the one-sample ELBO of each image, (batch,), in nats.

        One particle, and no closed-form KL (the count is discrete): the
        options are the contract's, and the config refuses other values for AIR.
        """
        t = self._run(batch)
        return (t["log_p"] - t["log_q"]).sum(1) + t["obs"]

    def loss(self, batch, particles: int = 1, analytic_kl: bool = True) -> Loss:
        """The surrogate, valued as -ELBO: its gradient is the ELBO's (see :meth:`surrogate`).

        One particle, no closed-form KL: the options are taken and not used.
        """
        elbo, surrogate_loss = self.surrogate(batch)
        return Loss(value_of(-elbo, surrogate_loss))

    def surrogate(self, batch):
        """Returns (ELBO summed over the batch, surrogate loss) as TraceGraph_ELBO builds them.

        The surrogate's gradient is the ELBO's: pathwise for z_where and z_what,
        and for each z_pres_t its score times the costs downstream of it (every
        term of steps t, t+1, … and the likelihood) minus its baseline; plus the
        baselines' squared error, which trains them alone.
        """
        t = self._run(batch)
        step_cost = t["log_p"] - t["log_q"]
        # cost_t = Σ_{s ≥ t} step_cost_s + obs: a reverse cumulative sum over steps.
        downstream = step_cost.flip(1).cumsum(1).flip(1) + t["obs"].unsqueeze(1)
        elbo = step_cost.sum() + t["obs"].sum()
        surrogate_elbo = (
            t["log_p"].sum()
            + t["obs"].sum()
            - t["log_q_reparam"].sum()
            + (t["score"] * (downstream - t["baseline"]).detach()).sum()
        )
        baseline_loss = ((downstream.detach() - t["baseline"]) ** 2).sum()
        return elbo, -surrogate_elbo + baseline_loss

    # --- training schedule, scores and pictures -----------------------------------
    def on_epoch(self, epoch: int, settings) -> None:
        """Sets the z_pres prior of `epoch` (counted from 1) from the model's settings.

        Fixed at settings.z_pres_prior, or, when settings.z_pres_prior_start is set,
        moving geometrically from it to z_pres_prior over settings.anneal_epochs.
        """
        self.z_pres_prior = annealed_prior(
            settings.z_pres_prior_start, settings.z_pres_prior, settings.anneal_epochs, epoch
        )

    def program_state(self) -> tuple:
        return (self.z_pres_prior,)  # the model's prior of each further object

    @torch.no_grad()
    def scores(self, data, batch_size: int = 1000) -> dict:
        """Returns {"count_accuracy": fraction of images whose inferred count is right}.

        Only where the data's labels are object counts (multi-mnist); digit labels are not.
        """
        if data.label_kind != "counts":
            return {}
        inferred = torch.cat([self.infer(batch)["count"] for batch in data.batches(batch_size)])
        return {"count_accuracy": (inferred == data.labels).double().mean().item()}

    def evaluation_scores(self, data, split: str, batch_size: int = 1000) -> dict:
        """count_accuracy, count_confusion and box_iou against the split's true boxes (multi-mnist)."""
        from vaelab.data import multi_mnist
        from vaelab.models import air_scores

        if data.label_kind != "counts":
            return {}
        if split == "validation":  # the training split's last len(data) canvases (--validation N)
            truth = {k: v[len(v) - len(data) :] for k, v in multi_mnist.load_split("train").items()}
        else:
            truth = multi_mnist.load_split(split)
        return air_scores.count_scores(self, data, truth, batch_size)

    @classmethod
    def picture_captions(cls) -> dict:
        from vaelab.models import air_scores

        return dict(air_scores.CAPTIONS)

    def pictures(self, view) -> dict:
        from vaelab.models import air_scores

        return air_scores.draw(self, view)

    # --- inference ------------------------------------------------------------
    @torch.no_grad()
    def infer(self, batch) -> dict:
        """The guide's most probable explanation of each image, step by step.

        z_pres_t = 1 while its probability exceeds 1/2; z_where and z_what are
        the guide's means. Returns count (B,), boxes (B, T, 4) in pixels
        (x0, y0, width, height), present (B, T), and the reconstruction (B, x_dim).
        """
        x = self._check(batch)
        n = x.shape[0]
        images, image_part, state, prev = self._initial(x)
        canvas = x.new_zeros(n, self.x_dim)
        present, wheres = [], []
        for _ in range(self.max_steps):
            state, z_pres_p, z_where, _ = self._guide_step(image_part, prev, state)
            z_pres = (z_pres_p > 0.5).to(x.dtype)
            z_what, _ = self._what_params(images, z_where)
            canvas = self._draw(canvas, z_where, z_what, z_pres)
            present.append(z_pres)
            wheres.append(z_where)
            prev = (z_where, z_what, z_pres)
        present = torch.stack(present, 1)
        return {
            "count": present.sum(1).long(),
            "present": present.bool(),
            "boxes": boxes_from_where(torch.stack(wheres, 1), self.image_size),
            "reconstruction": canvas.clamp(0, 1),
        }

    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """Returns the canvas of the guide's most probable explanation: (batch, x_dim) in [0, 1]."""
        return self.infer(batch)["reconstruction"]

    @torch.no_grad()
    def sample(self, n: int, y=None, count=None) -> torch.Tensor:
        """Returns `n` canvases drawn from the prior: (n, x_dim) in [0, 1].

        With `count`, the number of objects is fixed to it (the prior given the
        count): with a small z_pres_prior, plain draws are nearly all empty.
        """
        refuse_labels(self, y)
        device = self.device()
        canvas = torch.zeros(n, self.x_dim, device=device)
        z_pres = torch.ones(n, device=device)
        for t in range(self.max_steps):
            if count is None:
                z_pres = torch.bernoulli(self.z_pres_prior * z_pres)
            else:
                z_pres = torch.full((n,), float(t < count), device=device)
            z_where = Normal(self.where_prior_loc, self.where_prior_scale).sample((n,))
            z_what = torch.randn(n, self.z_what_dim, device=device)
            canvas = self._draw(canvas, z_where, z_what, z_pres)
        return canvas.clamp(0, 1)

    def log_importance_weights(self, batch, num_samples: int, generator=None) -> torch.Tensor:
        """Returns log p(x, z_s) − log q(z_s|x) for guide draws z_s: (num_samples, batch).

        Each is one image's one-sample ELBO. The draws come from torch's global
        generator (torch.distributions samples there), so `generator` must be None.
        """
        if generator is not None:
            raise ValueError("AIR draws from torch's global generator; seed it instead of passing one")
        return torch.stack([self.elbo(batch) for _ in range(num_samples)])

    def floats_per_particle(self) -> int:
        return 8 * self.x_dim + self.max_steps * (4 * self.rnn.hidden + 4 * self.glimpse_size**2)


__all__ = ["AIR", "annealed_prior", "boxes_from_where", "image_to_window", "window_to_image"]
