"""Turning a model into a loss for a backend.

Every objective returns the same thing: a differentiable scalar, the sum over
the batch of the negative ELBO estimate, in nats. One training loop, one
optimiser and one gradient step serve them all; only the loss differs.

- ``torch``: the hand-written ``model.elbo(x)`` (analytic KL).
- ``pyro`` with ``trace`` / ``meanfield`` / ``jit``: Pyro's ``Trace_ELBO``,
  ``TraceMeanField_ELBO`` and ``JitTrace_ELBO`` on ``model.model`` and
  ``model.guide``, through their ``differentiable_loss``.
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
from pyro import poutine
from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from vaelab.errors import choices_error

BACKENDS = ("torch", "pyro")
ELBOS = ("trace", "meanfield", "jit", "mc", "tracegraph")


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
    """A Pyro ELBO class applied to ``model.model`` and ``model.guide``."""

    def __init__(self, name, elbo):
        self.name, self.elbo = name, elbo

    def __call__(self, model, x):
        with warnings.catch_warnings():
            # JitTrace_ELBO compiles with torch.jit.trace, which torch 2.x
            # marks deprecated; the warning is about Pyro's choice, not ours.
            warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
            return self.elbo.differentiable_loss(model.model, model.guide, x)


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
    # guess it, which would also draw from the random stream.
    if elbo == "jit":
        # torch's own size checks warn while being traced; they are constants
        # for a fixed batch shape, which is what the trace is compiled for.
        return PyroELBO("pyro-jit", JitTrace_ELBO(max_plate_nesting=1, ignore_jit_warnings=True))
    classes = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}
    return PyroELBO(f"pyro-{elbo}", classes[elbo](max_plate_nesting=1))


def clear_param_store() -> None:
    """Empties Pyro's global parameter store (weights live in the nn.Module, not there)."""
    pyro.clear_param_store()
