"""The importance-weighted bounds as training objectives: IWAE and DReG, each written twice.

With K draws z_k ~ q(z|x) and log weights log w_k = log p(x, z_k) - log q(z_k|x),
the IWAE bound (Burda et al., 2015) is log (1/K) Σ_k w_k, at most log p(x)
and tighter as K grows; K = 1 is the ELBO. Its gradient is Σ_k w̃_k ∇ log w_k,
w̃ the normalised weights.

DReG (Tucker et al., 2018) keeps the decoder's gradient and replaces the
encoder's by the doubly reparameterised Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ,
where log q is taken with the guide's weights stopped: the same expectation,
and a variance that falls as K grows where IWAE's encoder gradient gets
noisier (Rainforth et al., 2018). Here that is one hook: each draw reaches
log w through ``use(z)``, a view whose gradient is multiplied by w̃_k on the
way back, so the w̃_k the bound already gives becomes w̃_k²; the decoder's
weights, which log w reaches without passing a draw, keep w̃_k.

- by hand (backend torch): the model's :meth:`~vaelab.models.base.LatentModel.log_weights`;
- Pyro: IWAE is ``RenyiELBO(alpha=0, vectorize_particles=True)``'s traces and
  sums (Pyro's class only has ``loss_and_grads``, which calls backward
  itself, so the loss is built from its traces here); DReG has no Pyro class
  and is written with poutine: trace the guide under a particles plate, replay
  the model on the draws, replay the guide with its weights stopped.

Each returns Loss(-Σ_images bound, -Σ_images ELBO): the ELBO is the mean of
the same log weights, so ``train_elbo`` costs nothing more.
"""

import math

import pyro
import torch
from pyro import poutine
from pyro.infer import RenyiELBO
from pyro.infer.util import is_identically_zero

from vaelab.data.batches import Batch
from vaelab.models.base import Loss, as_batch

BOUNDS = ("iwae", "dreg")


def bound_loss(log_weights, num_samples: int, dreg: bool) -> Loss:
    """Returns the Loss of the IWAE bound of `log_weights(use)` -> (K, B); DReG's gradient if `dreg`."""
    draws = []

    def use(z):
        if not dreg:
            return z
        z = z.view_as(z)  # a node of its own, so the hook sees only what log w sends back
        draws.append(z)
        return z

    log_w = log_weights(use)
    if dreg and not draws:
        raise NotImplementedError("dreg: the model's log_weights must pass each draw through use(z)")
    if log_w.dim() == 1:  # one particle, unplated
        log_w = log_w.unsqueeze(0)
    if dreg:
        normalised = torch.softmax(log_w.detach(), 0)
        for z in draws:
            if z.requires_grad:
                scale = normalised.reshape(normalised.shape + (1,) * (z.dim() - normalised.dim()))
                z.register_hook(lambda grad, scale=scale: grad * scale)
    bound = torch.logsumexp(log_w, 0) - math.log(num_samples)
    return Loss(-bound.sum(), -log_w.detach().mean(0).sum())


class HandWrittenBound:
    """IWAE or DReG by hand: the model's ``log_weights`` at K vectorised draws."""

    def __init__(self, num_samples: int, dreg: bool):
        self.num_samples, self.dreg = num_samples, dreg
        self.name = "torch-dreg" if dreg else "torch-iwae"

    def __call__(self, model, batch) -> Loss:
        batch = as_batch(batch)
        return bound_loss(
            lambda use: model.log_weights(batch, self.num_samples, stop_guide=self.dreg, use=use),
            self.num_samples,
            self.dreg,
        )


def site_log_prob_sum(trace, latent_only=False):
    """Returns the sum over a trace's sample sites (or its latent ones) of their log-probabilities: (K, B)."""
    trace.compute_log_prob()
    total = 0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not (latent_only and site["is_observed"]):
            total = total + site["log_prob"]
    return total


class _IWAE_ELBO(RenyiELBO):
    """``RenyiELBO(alpha=0)``, the IWAE bound, with its log weights for a differentiable loss."""

    def __init__(self, num_particles: int):
        super().__init__(alpha=0, num_particles=num_particles, max_plate_nesting=1, vectorize_particles=True)

    def log_weights(self, model, guide, *args) -> torch.Tensor:
        """Returns log p(x, z) - log q(z|x) of each particle and image, (K, B), differentiable.

        As RenyiELBO.loss_and_grads sums them: each site's log-probability,
        summed over its dims except the particles and the data plate.
        """
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, {})
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not is_identically_zero(site["score_parts"].score_function):
                raise NotImplementedError("the IWAE objective here needs reparameterised latents")
        return site_log_prob_sum(model_trace) - site_log_prob_sum(guide_trace, latent_only=True)


class PyroIWAE:
    """IWAE on the Pyro program: RenyiELBO(alpha=0, K particles, vectorised)."""

    name = "pyro-iwae"

    def __init__(self, num_samples: int):
        self.num_samples = num_samples
        self.elbo = _IWAE_ELBO(num_samples)

    def __call__(self, model, batch) -> Loss:
        tensors = as_batch(batch).tensors()

        def program(method):
            return lambda *t: method(Batch(*t))

        return bound_loss(
            lambda use: self.elbo.log_weights(program(model.model), program(model.guide), *tensors),
            self.num_samples,
            dreg=False,
        )


def dreg_log_weights(model, batch: Batch, num_samples: int, use) -> torch.Tensor:
    """DReG's log weights with poutine, (K, B): the draws pass through `use`, log q has its weights stopped.

    1. trace the guide under a plate of K particles (the draws, reparameterised);
    2. put each draw through `use` and replay the model on the results: log p(x, z);
    3. replay the guide on the same results inside ``model.stopped_guide()``:
       log q(z|x) with the guide's weights detached, its inputs (earlier draws) live.
    """
    particles = pyro.plate("particles", num_samples, dim=-2)
    with particles:
        guide_trace = poutine.trace(model.guide).get_trace(batch)
    used = guide_trace.copy()
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            used.nodes[name] = {**site, "value": use(site["value"])}
    with particles:
        model_trace = poutine.trace(poutine.replay(model.model, trace=used)).get_trace(batch)
        with model.stopped_guide():
            stopped_trace = poutine.trace(poutine.replay(model.guide, trace=used)).get_trace(batch)
    return site_log_prob_sum(model_trace) - site_log_prob_sum(stopped_trace, latent_only=True)


class PoutineDReG:
    """DReG on the Pyro program, written with poutine (Pyro has no DReG class)."""

    name = "pyro-dreg"

    def __init__(self, num_samples: int):
        self.num_samples = num_samples

    def __call__(self, model, batch) -> Loss:
        batch = as_batch(batch)
        return bound_loss(
            lambda use: dreg_log_weights(model, batch, self.num_samples, use), self.num_samples, dreg=True
        )
