"""Turning a model into a loss for a backend.

Every objective returns the same thing: a differentiable scalar, the sum over
the batch of the negative ELBO estimate, in nats. One training loop, one
optimiser and one gradient step serve them all; only the loss differs.

- ``torch``: the hand-written ``model.elbo(x)`` (analytic KL).
- ``pyro`` with ``trace`` / ``meanfield``: Pyro's ``Trace_ELBO`` and
  ``TraceMeanField_ELBO`` on ``model.model`` and ``model.guide``, through their
  ``differentiable_loss``; ``jit`` / ``jit-meanfield``: their compiled forms,
  ``JitTrace_ELBO`` and ``JitTraceMeanField_ELBO`` (the model and guide traced
  once per batch shape and replayed without Python: Pyro's per-step overhead
  goes, for models whose structure does not change, such as the VAE).
- ``pyro`` with ``mc``: :func:`mc_elbo_loss`, a few readable lines of
  ``poutine.trace``/``poutine.replay`` showing what Pyro does inside.
- ``pyro`` with ``tracegraph``: ``TraceGraph_ELBO`` for models with discrete
  latents (AIR); ``torch`` for such a model is its hand-written ``surrogate``.

A model with discrete latents is trained on a surrogate loss whose gradient
is the ELBO's but whose value is not; :func:`value_of` gives the loop a loss
whose value is -ELBO and whose gradient is the surrogate's.

>>> objective = make_objective("pyro", "meanfield")
>>> loss = objective(vae, x)   # scalar; loss.backward() fills vae's gradients
"""

import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import (
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from vaelab.errors import choices_error

BACKENDS = ("torch", "pyro")
ELBOS = ("trace", "meanfield", "jit", "jit-meanfield", "mc", "tracegraph")


def mc_elbo_loss(model, guide, *args, **kwargs):
    """Returns -ELBO of one sample: trace the guide, replay the model on its z, subtract.

    log p(x, z) - log q(z|x), each a sum over every sample site (observed ones
    included) with plate scaling applied. Valid for reparameterised guides.
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())


class Objective:
    """A loss for one backend: ``objective(model, x)`` -> sum over the batch of -ELBO."""

    name = "objective"

    def __call__(self, model, x):
        raise NotImplementedError


def value_of(neg_elbo, surrogate_loss):
    """Returns a scalar equal to `neg_elbo` whose gradient is `surrogate_loss`'s."""
    # neg_elbo + 0, not surrogate + (neg_elbo - surrogate): the surrogate is
    # much larger (baselines' squared errors), and float32 would round the value.
    return neg_elbo.detach() + (surrogate_loss - surrogate_loss.detach())


class HandWrittenELBO(Objective):
    """The ELBO as plain PyTorch: ``-model.elbo(x).sum()``, or the model's own surrogate."""

    name = "torch"

    def __call__(self, model, x):
        if hasattr(model, "surrogate"):  # discrete latents: score-function terms by hand
            elbo, surrogate_loss = model.surrogate(x)
            return value_of(-elbo, surrogate_loss)
        elbo = model.elbo(x)
        # One value per image, or a reduction went over the wrong axis.
        if elbo.shape != x.shape[:1]:
            raise ValueError(
                f"elbo(x) must give one value per image, shape ({x.shape[0]},); got {tuple(elbo.shape)}"
            )
        return -elbo.sum()


class PyroELBO(Objective):
    """A Pyro ELBO class applied to ``model.model`` and ``model.guide``.

    `make_elbo()` builds the Pyro ELBO. A compiled one (``Jit*``) keys its
    compiled graph on the identity of the model and guide callables, not on
    the batch's shape; so this hands it the same bound methods every step (a
    fresh ``model.model`` each step would trace and compile each step, and keep
    every graph), and one ELBO per batch shape: a smaller last batch gets its
    own graph. (torch.jit.trace may record sizes as constants; for the VAE a
    graph traced at batch 16 gave the right losses and gradients at batch 5
    when tried, but a graph per shape does not rely on it, for one more compile.)

    A compiled graph reads its weights from Pyro's parameter store by name, so
    before each call the names it was compiled with are pointed back at this
    model's parameters (another model of the same names, or a cleared store,
    would otherwise be read instead, or fail).
    """

    def __init__(self, name, make_elbo, compiled=False):
        self.name, self.make_elbo, self.compiled = name, make_elbo, compiled
        self._model, self._programs, self._store_names = None, {}, {}

    def __call__(self, model, x):
        if self._model is not model:
            self._model, self._programs, self._store_names = model, {}, {}
        if self._store_names:
            self._restore_store()
        key = tuple(x.shape) if self.compiled else None
        if key not in self._programs:
            self._programs[key] = (self.make_elbo(), model.model, model.guide)
            if self.compiled:
                self._compile(model, x)
        return self._loss(key, x)

    def _loss(self, key, x):
        elbo, model_fn, guide_fn = self._programs[key]
        with warnings.catch_warnings():
            # The Jit ELBOs compile with torch.jit.trace, which torch 2.x
            # marks deprecated; the warning is about Pyro's choice, not ours.
            warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
            return elbo.differentiable_loss(model_fn, guide_fn, x)

    def _compile(self, model, x):
        # Compiling runs the program three times (to find its parameters, to
        # trace it, then the graph), drawing noise each time. It runs on a
        # copy of the random state, so the compiled loss draws what the Python
        # form would: equal on the same seed, and resumable bitwise.
        own = {id(p) for p in model.parameters()}
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if not self._store_names:
                self._free_names(model, x, own)
            self._loss(tuple(x.shape), x)
        if not self._store_names:  # the first compile registered the model's parameters
            store = pyro.get_param_store()
            self._store_names = {n: p for n, p in store.named_parameters() if id(p) in own}

    @staticmethod
    def _free_names(model, x, own):
        # pyro.module keeps a tensor the store already holds under a name; if
        # it is another model's, tracing would meet this model's weights as
        # constants and fail. Such names are dropped before the first compile.
        with poutine.block(), poutine.trace(param_only=True) as capture:
            model.guide(x)
            model.model(x)
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


class PyroTraceGraphELBO(Objective):
    """``TraceGraph_ELBO``: score-function terms with downstream costs and baselines.

    It has no ``differentiable_loss``; its surrogate loss (what its
    ``loss_and_grads`` differentiates) is used, so one loop serves it too.
    """

    name = "pyro-tracegraph"

    def __init__(self):
        self.elbo = TraceGraph_ELBO(max_plate_nesting=1)

    def __call__(self, model, x):
        elbo, surrogate_loss = self.elbo._loss_and_surrogate_loss(model.model, model.guide, (x,), {})
        return value_of(-elbo, surrogate_loss)


class PoutineELBO(Objective):
    """:func:`mc_elbo_loss` on ``model.model`` and ``model.guide``."""

    name = "pyro-mc"

    def __call__(self, model, x):
        return mc_elbo_loss(model.model, model.guide, x)


def make_objective(backend: str, elbo: str = "trace") -> Objective:
    """Returns the objective for `backend` ("torch" or "pyro") and Pyro `elbo`."""
    if backend not in BACKENDS:
        raise choices_error("backend", backend, BACKENDS)
    if backend == "torch":
        return HandWrittenELBO()
    if elbo not in ELBOS:
        raise choices_error("ELBO", elbo, ELBOS)
    if elbo == "mc":
        return PoutineELBO()
    if elbo == "tracegraph":
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
    }
    cls, options = classes[elbo]
    return PyroELBO(
        f"pyro-{elbo}",
        lambda: cls(max_plate_nesting=1, **options),
        compiled=elbo.startswith("jit"),
    )


def clear_param_store() -> None:
    """Empties Pyro's global parameter store (weights live in the nn.Module, not there)."""
    pyro.clear_param_store()
