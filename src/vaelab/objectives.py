"""Turning a model into a loss for a backend.

Every objective returns the same thing, a :class:`~vaelab.models.base.Loss`:
``loss``, a differentiable scalar summed over the batch (the negative ELBO
estimate, in nats, unless the model weights its objective), and ``neg_elbo``
when the model's objective is not the ELBO. One training loop, one optimiser
and one gradient step serve them all; only the loss differs. Every objective
takes a :class:`~vaelab.data.batches.Batch`, or a tensor of images.

- ``torch``: the model's hand-written ``loss(batch)`` (by default -Σ ``elbo``,
  analytic KL; for discrete latents a surrogate whose value is -ELBO).
- ``pyro`` with ``trace`` / ``meanfield``: Pyro's ``Trace_ELBO`` and
  ``TraceMeanField_ELBO`` on ``model.model`` and ``model.guide``, through their
  ``differentiable_loss``; ``jit`` / ``jit-meanfield``: their compiled forms,
  ``JitTrace_ELBO`` and ``JitTraceMeanField_ELBO`` (the model and guide traced
  once per batch shape and replayed without Python: Pyro's per-step overhead
  goes, for models whose structure does not change, such as the VAE).
- ``pyro`` with ``mc``: :func:`mc_elbo_loss`, a few readable lines of
  ``poutine.trace``/``poutine.replay`` showing what Pyro does inside.
- ``pyro`` with ``tracegraph``: ``TraceGraph_ELBO`` for models with discrete
  latents (AIR), with the dependencies the model declares in place of Pyro's
  provenance tracking where it declares them (:class:`DeclaredTraceGraph_ELBO`,
  the same estimator); ``enum``: ``TraceEnum_ELBO``, which sums out the
  discrete latents a guide enumerates (M2's label).
- ``iwae`` / ``dreg``, either backend: the K-sample importance-weighted bound,
  with IWAE's or DReG's gradient (:mod:`vaelab.bounds`).

``particles`` K: the ELBOs are the mean over K draws (Pyro's
``num_particles``, vectorised; by hand, one (K, B, ...) noise tensor), the
bounds' K. By hand, ``trace`` and ``meanfield`` differ as Pyro's do: the KL
at the draws, or in closed form (the torch backend's default).

A model with discrete latents is trained on a surrogate loss whose gradient
is the ELBO's but whose value is not; :func:`value_of` gives the loop a loss
whose value is -ELBO and whose gradient is the surrogate's. A weighted model
(``model.weighted``, the β-VAE) is fitted on its weighted program; a Pyro
objective then also runs the unweighted program on the same noise, without
gradients, for the ELBO the loop logs.

>>> objective = make_objective("pyro", "meanfield")
>>> loss = objective(vae, x).loss   # scalar; loss.backward() fills vae's gradients
"""

import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import (
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.ops.provenance import track_provenance
from pyro.util import check_if_enumerated

from vaelab.bounds import BOUNDS, HandWrittenBound, PoutineDReG, PyroIWAE
from vaelab.data.batches import Batch
from vaelab.errors import ConfigError, choices_error
from vaelab.models.base import Loss, as_batch, value_of

BACKENDS = ("torch", "pyro")
ELBOS = ("trace", "meanfield", "jit", "jit-meanfield", "mc", "tracegraph", "enum", *BOUNDS)
# What the torch backend writes by hand; the others are Pyro's own machinery.
TORCH_ELBOS = ("trace", "meanfield", *BOUNDS)


def mc_elbo_loss(model, guide, *args, particles=1, **kwargs):
    """Returns -ELBO of one sample: trace the guide, replay the model on its z, subtract.

    log p(x, z) - log q(z|x), each a sum over every sample site (observed ones
    included) with plate scaling applied. Valid for reparameterised guides.
    With `particles` > 1 both run under a plate of that many draws, and the
    sums are divided by it: the mean over particles.
    """
    if particles > 1:
        plate = pyro.plate("particles", particles, dim=-2)
        model, guide = plate(model), plate(guide)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return -(model_trace.log_prob_sum() - guide_trace.log_prob_sum()) / particles


class Objective:
    """A loss for one backend: ``objective(model, batch)`` -> Loss (sum over the batch)."""

    name = "objective"

    def __call__(self, model, batch) -> Loss:
        raise NotImplementedError


class HandWrittenELBO(Objective):
    """The objective as plain PyTorch: the model's own ``loss(batch)``.

    `analytic_kl` and `particles` are passed on when they are not the default.
    """

    name = "torch"

    def __init__(self, analytic_kl: bool = True, particles: int = 1):
        self.estimate = {}
        if particles != 1:
            self.estimate["particles"] = particles
        if not analytic_kl:
            self.estimate["analytic_kl"] = False

    def __call__(self, model, batch) -> Loss:
        return model.loss(as_batch(batch), **self.estimate)


class _Bound(Objective):
    """An importance-weighted bound (vaelab.bounds) as an Objective; its Loss carries the ELBO too."""

    def __init__(self, loss):
        self.loss, self.name = loss, loss.name

    def __call__(self, model, batch) -> Loss:
        return self.loss(model, batch)


def _programs(model):
    """Returns (model, guide) callables taking the batch's tensors (x, or x and y).

    Pyro's compiled ELBOs take tensors, not records, so the programs get the
    batch's fields as arguments and rebuild the Batch.
    """

    def model_fn(*tensors):
        return model.model(Batch(*tensors))

    def guide_fn(*tensors):
        return model.guide(Batch(*tensors))

    return model_fn, guide_fn


class _PyroObjective(Objective):
    """Runs a Pyro loss on the model's program; for a weighted model, its ELBO as well.

    The unweighted pass runs first, without gradients, on a copy of the random
    state; the weighted pass then draws the same noise, so both numbers are of
    the same z and the random stream moves as if only one pass ran.
    """

    def __call__(self, model, batch) -> Loss:
        batch = as_batch(batch)
        if not model.weighted:
            return Loss(self.pyro_loss(model, batch, weighted=True))
        devices = [batch.x.device] if batch.x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), model.unweighted():
            neg_elbo = self.pyro_loss(model, batch, weighted=False)
        return Loss(self.pyro_loss(model, batch, weighted=True), neg_elbo.detach())

    def pyro_loss(self, model, batch: Batch, weighted: bool) -> torch.Tensor:
        raise NotImplementedError


class PyroELBO(_PyroObjective):
    """A Pyro ELBO class applied to ``model.model`` and ``model.guide``.

    `make_elbo()` builds the Pyro ELBO. A compiled one (``Jit*``) keys its
    compiled graph on the identity of the model and guide callables, not on
    the batch's shape; so this hands it the same callables every step (a
    fresh ``model.model`` each step would trace and compile each step, and keep
    every graph), and one ELBO per batch shape: a smaller last batch gets its
    own graph, and so does a weighted model's unweighted program.
    (torch.jit.trace may record sizes as constants; for the VAE a graph
    traced at batch 16 gave the right losses and gradients at batch 5 when
    tried, but a graph per shape does not rely on it, for one more compile.)

    A compiled graph reads its weights from Pyro's parameter store by name, so
    before each call the names it was compiled with are pointed back at this
    model's parameters (another model of the same names, or a cleared store,
    would otherwise be read instead, or fail).

    A graph also freezes the plain values the program reads; those a model
    changes from epoch to epoch it names in ``model.program_state()``, and a
    change drops the graphs compiled before it (they change between epochs,
    so the graphs of one state are never needed again).
    """

    def __init__(self, name, make_elbo, compiled=False):
        self.name, self.make_elbo, self.compiled = name, make_elbo, compiled
        self._model, self._programs, self._store_names, self._state = None, {}, {}, ()

    def pyro_loss(self, model, batch: Batch, weighted: bool) -> torch.Tensor:
        if self._model is not model:
            self._model, self._programs, self._store_names = model, {}, {}
        if self.compiled and model.program_state() != self._state:
            self._programs, self._state = {}, model.program_state()
        if self._store_names:
            self._restore_store()
        tensors = batch.tensors()
        key = (tuple(t.shape for t in tensors), weighted) if self.compiled else weighted
        if key not in self._programs:
            self._programs[key] = (self.make_elbo(), *_programs(model))
            if self.compiled:
                self._compile(model, key, tensors)
        return self._loss(key, tensors)

    def _loss(self, key, tensors):
        elbo, model_fn, guide_fn = self._programs[key]
        with warnings.catch_warnings():
            # The Jit ELBOs compile with torch.jit.trace, which torch 2.x
            # marks deprecated; the warning is about Pyro's choice, not ours.
            warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
            return elbo.differentiable_loss(model_fn, guide_fn, *tensors)

    def _compile(self, model, key, tensors):
        # Compiling runs the program three times (to find its parameters, to
        # trace it, then the graph), drawing noise each time. It runs on a
        # copy of the random state, so the compiled loss draws what the Python
        # form would: equal on the same seed, and resumable bitwise.
        own = {id(p) for p in model.parameters()}
        devices = [tensors[0].device] if tensors[0].device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if not self._store_names:
                self._free_names(model, Batch(*tensors), own)
            self._loss(key, tensors)
        if not self._store_names:  # the first compile registered the model's parameters
            store = pyro.get_param_store()
            self._store_names = {n: p for n, p in store.named_parameters() if id(p) in own}

    @staticmethod
    def _free_names(model, batch, own):
        # pyro.module keeps a tensor the store already holds under a name; if
        # it is another model's, tracing would meet this model's weights as
        # constants and fail. Such names are dropped before the first compile.
        with poutine.block(), poutine.trace(param_only=True) as capture:
            model.guide(batch)
            model.model(batch)
        store = pyro.get_param_store()
        for name in capture.trace.nodes:
            if name in store and id(store.get_param(name)) not in own:
                del store[name]

    def _restore_store(self):
        store = pyro.get_param_store()
        for name, param in self._store_names.items():
            if name not in store or store.get_param(name) is not param:
                store[name] = param


class _JitTrace_ELBO(JitTrace_ELBO):
    """``JitTrace_ELBO`` whose ``differentiable_loss`` has the ELBO's gradient, not twice it.

    Pyro 1.9.2's returns ``loss + (surrogate - surrogate.detach())`` where its
    compiled ``loss`` is not detached (the Python form's is a float), so the
    gradient is the sum of both: twice the ELBO's for a reparameterised guide.
    Adam hardly notices a constant factor; gradient clipping and plain SGD do.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return value_of(loss, surrogate_loss)


class _JitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that compiles once.

    Pyro 1.9.2's looks for its compiled loss under another attribute than the
    one it stores it in (``_loss_and_surrogate_loss`` against
    ``_differentiable_loss``), so it traced and compiled the model again on
    every call, several times slower than not compiling at all. This reuses the first.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:  # the first call traces and compiles
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return compiled(*args, _pyro_model_id=id(model), _pyro_guide_id=id(guide), **kwargs)


class _TraceEnum_ELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` whose ``differentiable_loss`` also runs without gradients.

    Pyro's refuses a loss that needs no gradient, as the unweighted pass of a
    weighted model (M2's ELBO without its classification term) is; there its
    ``loss`` gives the same value from the same draws.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if torch.is_grad_enabled():
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return torch.as_tensor(self.loss(model, guide, *args, **kwargs), dtype=args[0].dtype)


class DeclaredTraceGraph_ELBO(TraceGraph_ELBO):
    """Pyro's ``TraceGraph_ELBO`` estimator, the model declaring which discrete sites each cost depends on.

    ``TraceGraph_ELBO`` finds, for each non-reparameterised site, the costs
    downstream of it by tracking provenance: its draws are wrapped, and every
    tensor operation of the model and guide after them goes through a
    ``__torch_function__`` that walks its arguments. For AIR that tracking was
    70% of a step's time (benchmarks/air_profile.py). A model that knows its own
    structure says it (``model.discrete_upstream(site)``: the discrete sites
    whose draws reach that site's log-probability); this class then traces
    without tracking, labels each sample site's log-probability with the
    declared set, and hands the traces to Pyro's own ``_compute_elbo``, as
    ``TraceGraph_ELBO`` does. Same estimator, same numbers: a test holds its
    losses and gradients equal to ``TraceGraph_ELBO``'s on the same draws, and
    the declared sets equal to the tracked ones.
    """

    def __init__(self, upstream, **kwargs):
        super().__init__(**kwargs)
        self.upstream = upstream

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace(
            "dense", self.max_plate_nesting, model, guide, args, kwargs
        )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        for trace in (model_trace, guide_trace):
            for name, site in trace.nodes.items():
                if site["type"] == "sample":
                    site["log_prob_sum"] = track_provenance(site["log_prob_sum"], self.upstream(name))
        return model_trace, guide_trace


class PyroTraceGraphELBO(_PyroObjective):
    """``TraceGraph_ELBO``: score-function terms with downstream costs and baselines.

    It has no ``differentiable_loss``; its surrogate loss (what its
    ``loss_and_grads`` differentiates) is used, so one loop serves it too. A
    model that declares its discrete dependencies (``discrete_upstream``) gets
    :class:`DeclaredTraceGraph_ELBO`, the same estimator without Pyro's
    provenance tracking.
    """

    name = "pyro-tracegraph"

    def __init__(self):
        self.elbo = TraceGraph_ELBO(max_plate_nesting=1)
        self.declared = None  # (the last model, its DeclaredTraceGraph_ELBO)

    def elbo_for(self, model) -> TraceGraph_ELBO:
        """Returns the ELBO object for `model`: declared dependencies where it has them, else tracked."""
        if model.discrete_upstream is None:
            return self.elbo
        if self.declared is None or self.declared[0] is not model:
            self.declared = (model, DeclaredTraceGraph_ELBO(model.discrete_upstream, max_plate_nesting=1))
        return self.declared[1]

    def pyro_loss(self, model, batch: Batch, weighted: bool) -> torch.Tensor:
        elbo, surrogate_loss = self.elbo_for(model)._loss_and_surrogate_loss(
            model.model, model.guide, (batch,), {}
        )
        return value_of(-torch.as_tensor(elbo), surrogate_loss)


class PoutineELBO(_PyroObjective):
    """:func:`mc_elbo_loss` on ``model.model`` and ``model.guide``."""

    name = "pyro-mc"

    def __init__(self, particles: int = 1):
        self.particles = particles

    def pyro_loss(self, model, batch: Batch, weighted: bool) -> torch.Tensor:
        return mc_elbo_loss(model.model, model.guide, batch, particles=self.particles)


def make_objective(backend: str, elbo: str | None = None, particles: int = 1) -> Objective:
    """Returns the objective for `backend` ("torch" or "pyro"), `elbo` and `particles` K.

    `elbo` None is the backend's default: the model's own ``loss`` by hand
    (closed-form KL), Pyro's ``Trace_ELBO``. By hand: trace, meanfield, iwae,
    dreg; Pyro: any of ELBOS.
    """
    if backend not in BACKENDS:
        raise choices_error("backend", backend, BACKENDS)
    if elbo is not None and elbo not in ELBOS:
        raise choices_error("ELBO", elbo, ELBOS)
    if particles < 1:
        raise ConfigError(f"particles must be at least 1, got {particles}")
    if elbo in BOUNDS:
        if backend == "torch":
            return _Bound(HandWrittenBound(particles, dreg=elbo == "dreg"))
        return _Bound(PoutineDReG(particles) if elbo == "dreg" else PyroIWAE(particles))
    if backend == "torch":
        if elbo not in (None, *TORCH_ELBOS):
            raise ConfigError(f"elbo {elbo} is Pyro's; backend torch writes {', '.join(TORCH_ELBOS)} by hand")
        return HandWrittenELBO(analytic_kl=elbo != "trace", particles=particles)
    elbo = elbo or "trace"
    if elbo == "mc":
        return PoutineELBO(particles)
    if elbo == "tracegraph":
        if particles != 1:
            raise ConfigError("elbo tracegraph takes one particle here (--particles 1)")
        return PyroTraceGraphELBO()
    # max_plate_nesting is given so Pyro does not run the model once more to
    # guess it, which would also draw from the random stream. The Jit classes
    # ignore torch's size warnings while tracing: those sizes are constants for
    # a fixed batch shape, which is what each compiled graph is for.
    classes = {
        "trace": (Trace_ELBO, {}),
        "meanfield": (TraceMeanField_ELBO, {}),
        "jit": (_JitTrace_ELBO, {"ignore_jit_warnings": True}),
        "jit-meanfield": (_JitTraceMeanField_ELBO, {"ignore_jit_warnings": True}),
        # Discrete latents the guide marks for enumeration are summed out exactly (M2's label).
        "enum": (_TraceEnum_ELBO, {"strict_enumeration_warning": False}),
    }
    cls, options = classes[elbo]
    if particles > 1:
        options = {**options, "num_particles": particles, "vectorize_particles": True}
    return PyroELBO(
        f"pyro-{elbo}",
        lambda: cls(max_plate_nesting=1, **options),
        compiled=elbo.startswith("jit"),
    )


def clear_param_store() -> None:
    """Empties Pyro's global parameter store (weights live in the nn.Module, not there)."""
    pyro.clear_param_store()
