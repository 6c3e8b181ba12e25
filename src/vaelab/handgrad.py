"""Training steps with their gradients written out by hand, no autograd (--hand-gradients).

At the papers' small batches (20 images for Burda et al.) a step's time is
set by its fixed costs, not its arithmetic: on one CPU thread the matrix
products and Adam's update are about 60% of a bare eager step
(benchmarks/step_floor.py), and the rest is autograd's bookkeeping, the
optimiser's Python and many small operations. For the plain VAE with MLP
networks (Gaussian q(z|x), Bernoulli pixels) the gradient of each objective
the torch backend trains it on is short enough to write out, so this step
runs the forward pass, then each layer's gradient by its formula into
buffers of its own, then the optimiser's own fused Adam kernel on the
optimiser's own state (what ``Adam.step`` runs, without its per-step Python).

Objectives (``--elbo``): the default (closed-form KL), ``trace`` (the KL at
the draws), ``iwae`` and ``dreg``, each with any ``--particles`` K. With row
weights ω (1/K for the ELBOs, the normalised importance weights w̃ for the
bounds), the loss's gradient at the decoder's logits is ω (σ(logits) − x);
the draws z = μ + σ ε pass it back to μ and log σ, which also get the KL's
own terms, weighted by the β-VAE's β. The CVAE's one-hot label joins the
encoder's and the decoder's inputs, as its ``condition`` appends it. DReG
(vaelab.bounds) weights the draws' path by w̃ once more and stops log q's own
weights: at z it adds d(−log w)/dz's z − ε/σ, and log σ gets no term of its
own.

It is the same run as the autograd step up to float rounding: the same
noise is drawn in the same order (:meth:`LatentModel.standard_normal`), the
loss is the same sum, and Adam is the same kernel on the same state (tests:
gradients against autograd's to 1e-5 for each objective, activation and K;
the Adam update bit for bit; a checkpointed run resumes exactly). The step
does not re-check each batch's pixel range: the training data come from
vaelab's pipeline, which makes them floats in [0, 1].

What it does not do is refused in one line (:func:`refusal`): a model other
than ``vae``, ``beta-vae``, ``cvae`` (their priors and networks are the
VAE's) and ``two-layer-vae`` (:class:`TwoLayerHandStep`),
``--net conv``, the Pyro backend, torchrun, ``--cuda-graph``,
``--detect-anomaly``. Speed: ``benchmarks/small_batch.py``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.bounds import BOUNDS
from vaelab.models.base import Loss
from vaelab.models.vae import VAE
from vaelab.nets import GaussianEncoder

ACTIVATIONS = ("tanh", "relu", "softplus")
_FLAG = "--hand-gradients"


def refusal(config, model, world_size: int = 1) -> str | None:
    """Returns why `config` cannot train `model` with hand-written gradients, or None if it can."""
    from vaelab.models.beta_vae import BetaVAE
    from vaelab.models.cvae import CVAE
    from vaelab.models.two_layer import TwoLayerVAE
    from vaelab.nets import BernoulliDecoder

    if config.backend != "torch":
        return f"{_FLAG} writes the torch backend's gradients; backend pyro differentiates its own trace"
    if type(model) not in (VAE, BetaVAE, CVAE, TwoLayerVAE):
        return (
            f"{_FLAG}: models vae, beta-vae, cvae and two-layer-vae are written by hand, not {config.model}"
        )
    mlp = isinstance(model.encoder, GaussianEncoder) and isinstance(model.decoder, BernoulliDecoder)
    if type(model) is not TwoLayerVAE and not mlp:  # the two-layer VAE's four networks are always MLPs
        return f"{_FLAG}: only the MLP networks' gradients are written by hand (--net mlp)"
    if config.activation not in ACTIVATIONS:
        return (
            f"{_FLAG}: activation {config.activation} is not written by hand ({', '.join(ACTIVATIONS)} are)"
        )
    if world_size > 1:
        return f"{_FLAG} trains in one process; under torchrun DDP averages autograd's gradients"
    if config.cuda_graph:
        return f"{_FLAG} and --cuda-graph are two ways to a fast step; choose one"
    if torch.is_anomaly_enabled():
        return f"--detect-anomaly watches autograd, which {_FLAG} does not use; drop one of them"
    return None


class _Layer:
    """A Linear layer's weight (and its transpose) and bias, detached, and its gradient buffers."""

    __slots__ = ("weight", "weight_t", "bias", "grad_weight", "grad_bias")

    def __init__(self, linear: nn.Linear, grads: dict):
        self.weight, self.bias = linear.weight.detach(), linear.bias.detach()
        self.weight_t = self.weight.t()
        self.grad_weight = grads[linear.weight] = torch.zeros_like(self.weight)
        self.grad_bias = grads[linear.bias] = torch.zeros_like(self.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, h, self.weight_t)

    def backward(self, grad: torch.Tensor, h: torch.Tensor) -> None:
        """Writes the gradients of weight and bias given the gradient at the output and the input `h`."""
        torch.mm(grad.t(), h, out=self.grad_weight)
        torch.sum(grad, 0, out=self.grad_bias)


def _activate(name: str, a: torch.Tensor):
    """Returns (activation of `a`, what its backward needs); tanh and relu overwrite `a`."""
    if name == "tanh":
        h = a.tanh_()
        return h, h
    if name == "relu":
        h = a.relu_()
        return h, h
    return F.softplus(a), a


def _activation_backward(name: str, grad: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """The gradient at an activation's input: autograd's own formulas, given what :func:`_activate` saved."""
    if name == "tanh":
        return torch.ops.aten.tanh_backward.default(grad, saved)
    if name == "relu":
        return torch.ops.aten.threshold_backward.default(grad, saved, 0)
    return torch.ops.aten.softplus_backward.default(grad, saved, 1, 20)


class _Net:
    """An MLP (vaelab.nets' GaussianEncoder or BernoulliDecoder) by hand: its body's Linear layers and heads.

    ``forward`` keeps what ``backward`` needs (one call each per step); the
    heads are the Gaussian's loc and log-scale, or the Bernoulli's logits.
    """

    def __init__(self, module, grads: dict, activation: str):
        self.activation = activation
        self.body = [_Layer(m, grads) for m in module.body if isinstance(m, nn.Linear)]
        names = ("loc", "log_scale") if isinstance(module, GaussianEncoder) else ("logits",)
        self.heads = [_Layer(getattr(module, name), grads) for name in names]

    def forward(self, x: torch.Tensor):
        """Returns the heads' outputs for input rows `x` (N, in): (loc, log_scale) or (logits,)."""
        self.inputs, self.saved = [x], []
        for layer in self.body:
            h, s = _activate(self.activation, layer.forward(self.inputs[-1]))
            self.inputs.append(h)
            self.saved.append(s)
        return tuple(head.forward(self.inputs[-1]) for head in self.heads)

    def backward(self, *grads: torch.Tensor, input_grad: bool = True, weights: bool = True):
        """Writes the weights' gradients given the heads' output gradients; returns the input's gradient.

        `weights` False: the input's gradient alone, as through the network
        with its weights stopped (DReG's log q), nothing written.
        """
        h = self.inputs[-1]
        if weights:
            for head, grad in zip(self.heads, grads, strict=True):
                head.backward(grad, h)
        grad = torch.mm(grads[0], self.heads[0].weight)
        for head, g in zip(self.heads[1:], grads[1:], strict=True):
            grad.addmm_(g, head.weight)
        for i in range(len(self.body) - 1, -1, -1):
            grad = _activation_backward(self.activation, grad, self.saved[i])
            if weights:
                self.body[i].backward(grad, self.inputs[i])
            if not (i or input_grad):
                return None
            grad = torch.mm(grad, self.body[i].weight)
        return grad


class _Step:
    """What every hand-written step shares: the gradient buffers, clipping and the direct Adam call.

    Built once the model is on its device and the optimiser made: the layers
    keep detached views of the weights (a checkpoint's ``load_state_dict``
    copies into them in place) and gradient buffers of their own, which go to
    Adam's fused kernel with the optimiser's state (its moments and step
    counts). A subclass writes ``_gradients(x, y) -> Loss``.
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, config):
        self.model, self.optimizer = model, optimizer
        self.activation = config.activation
        # The torch backend's objectives: the config refuses Pyro's for it.
        self.objective = "analytic" if config.elbo in (None, "meanfield") else config.elbo
        if self.objective not in ("analytic", "trace", *BOUNDS):
            raise ValueError(f"{_FLAG}: --elbo {config.elbo} is not the torch backend's")
        self.particles = config.particles
        self.clip_grad = config.clip_grad
        self.grads = {}  # parameter -> its gradient buffer, filled by the subclass's layers
        self._adam = None  # per group: (params, grads, exp_avgs, exp_avg_sqs, steps), the optimiser's own
        self._adam_state = None  # the optimiser's state dict those lists were read from

    def _buffers_complete(self) -> None:
        missing = [p for p in self.model.parameters() if p not in self.grads]
        if missing:
            raise ValueError(f"{_FLAG}: the model has {len(missing)} weights outside its Linear layers")
        # In the optimiser's order, as clip_grad_norm_ sums them.
        self.grad_list = [self.grads[p] for group in self.optimizer.param_groups for p in group["params"]]

    def __call__(self, batch) -> Loss:
        with torch.no_grad():
            loss = self._gradients(batch.x, batch.y)
            if self.clip_grad is not None:
                self._clip()
            self._adam_step()
        return loss

    # --- clipping and Adam ----------------------------------------------------------------
    def _clip(self) -> None:
        """Scales the gradients as torch.nn.utils.clip_grad_norm_ does (foreach, the same formula)."""
        # get_total_norm's sum (torch >= 2.6 has it by that name), in the same order
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.grad_list)))
        torch._foreach_mul_(self.grad_list, torch.clamp(self.clip_grad / (total + 1e-6), max=1.0))

    def _adam_step(self) -> None:
        """Adam's update, as fused ``Adam.step`` makes it: the step counts, then the fused kernel."""
        lists = self._adam_lists()
        if lists is None:  # no state yet, or not plain fused Adam's: the optimiser's own step
            for p, g in self.grads.items():
                p.grad = g
            self.optimizer.step()
            return
        for group, (params, grads, exp_avgs, exp_avg_sqs, steps) in zip(
            self.optimizer.param_groups, lists, strict=True
        ):
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )

    def _adam_lists(self):
        """Returns the optimiser's state as lists per group; None before its first step, or where
        its groups are not plain fused Adam's (a checkpoint may bring other settings: then
        ``Adam.step`` itself steps).

        Rebuilt when the optimiser's state is not the one listed: loading a
        checkpoint into the optimiser replaces it, and its groups' settings.
        """
        state = self.optimizer.state
        if self._adam is not None and state is self._adam_state:
            return self._adam
        groups = []
        for group in self.optimizer.param_groups:
            plain = not (group["amsgrad"] or group["maximize"] or group.get("decoupled_weight_decay"))
            if not (group["fused"] and plain and not group["capturable"] and not group["differentiable"]):
                return None
            entries = [state.get(p) for p in group["params"]]
            if not all(entries):
                return None
            groups.append(
                (
                    [p.detach() for p in group["params"]],
                    [self.grads[p] for p in group["params"]],
                    [e["exp_avg"] for e in entries],
                    [e["exp_avg_sq"] for e in entries],
                    [e["step"] for e in entries],
                )
            )
        self._adam, self._adam_state = groups, state
        return groups


class HandStep(_Step):
    """One optimiser step of the MLP VAE (β-VAE, CVAE) with its gradients written by hand.

    Called as ``step(batch)``; returns the batch's Loss, as ``train_step`` does.
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, config):
        super().__init__(model, optimizer, config)
        self.conditioned = type(model).condition is not VAE.condition  # the CVAE's label joins the inputs
        self.encoder = _Net(model.encoder, self.grads, self.activation)
        self.decoder = _Net(model.decoder, self.grads, self.activation)
        self._buffers_complete()

    # --- the gradients --------------------------------------------------------------------
    def _gradients(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Loss:
        """Writes each weight's gradient of the loss of images `x` (B, D) (labels `y` for the CVAE) to its
        buffer; returns the Loss."""
        k, objective, model = self.particles, self.objective, self.model
        bound = objective in BOUNDS
        beta = 1.0 if bound else model.kl_weight  # the β-VAE's β on its KL (1: the ELBO; a bound has none)
        n = x.shape[0]
        loc, log_scale = self.encoder.forward(model.condition(x, y) if self.conditioned else x)
        scale = torch.exp(log_scale)
        # The shapes the autograd step draws: terms_given's (B, Z) for one particle, log_weights' (K, B, Z).
        eps = self.model.standard_normal(loc.shape if k == 1 and not bound else (k, *loc.shape), loc)
        noise = scale * eps  # (K, B, Z) or (B, Z)
        z = loc + noise
        z_dim = z.shape[-1]
        (logits,) = self.decoder.forward((model.condition(z, y) if self.conditioned else z).view(k * n, -1))

        # The loss, and each (particle, image) row's weight in it.
        neg_elbo = None
        if bound:
            rec = F.binary_cross_entropy_with_logits(
                logits.view(k, n, -1), x.expand(k, n, -1), reduction="none"
            )
            log_w = (0.5 * (eps.square() - z.square())).sum(-1).add_(log_scale.sum(-1)).sub_(rec.sum(-1))
            log_w = log_w.view(k, n)
            loss = (math.log(k) * n) - torch.logsumexp(log_w, 0).sum()
            neg_elbo = -log_w.mean(0).sum()
            weight = torch.softmax(log_w, 0).unsqueeze(-1)  # (K, B, 1)
        else:
            target = x if k == 1 else x.expand(k, n, -1).reshape(k * n, -1)
            rec = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
            if objective == "analytic":
                kl = 0.5 * (loc.square().sum() + scale.square().sum() - loc.numel()) - log_scale.sum()
            else:  # log q(z|x) - log p(z) at the draws, whose constants cancel
                kl = 0.5 * (z.square().sum() - eps.square().sum()) / k - log_scale.sum()
            loss = rec / k + beta * kl
            if model.weighted:  # the objective is not the ELBO: its Loss carries -ELBO too
                neg_elbo = rec / k + kl
            weight = 1.0 / k

        # Backward: the decoder, from its logits to z.
        grad = torch.sigmoid(logits).view(k, n, -1).sub_(x)
        if bound or k > 1:
            grad.mul_(weight)
        grad = self.decoder.backward(grad.view(k * n, -1))  # (K*B, Z [+ the CVAE's label])
        # The CVAE's label columns have no gradient to pass on.
        grad_z = (grad[:, :z_dim].reshape if self.conditioned else grad.view)(k, n, z_dim)
        if objective == "dreg":  # log q at stopped weights: z - eps/scale; then the draws' w̃ once more
            grad_z.add_((z.view(k, n, -1) - eps.view(k, n, -1) / scale) * weight).mul_(weight)
        elif objective != "analytic":  # the prior's log-density at the draws: d(z²/2)/dz, weighted
            factor = beta * weight
            grad_z.add_(
                z.view(k, n, -1) if isinstance(factor, float) and factor == 1 else z.view(k, n, -1) * factor
            )
        # z = loc + scale * eps: to loc, and to log_scale through scale.
        grad_log_scale = (grad_z * noise.view(k, n, -1)).sum(0)
        grad_loc = grad_z.sum(0)
        if objective == "analytic":  # the closed-form KL's own terms: loc, and scale² - 1
            grad_loc.add_(loc, alpha=beta)
            grad_log_scale.add_(scale.square().sub_(1), alpha=beta)
        elif objective != "dreg":  # -log q(z|x)'s term in log scale, weights summing to one over K
            grad_log_scale.sub_(beta)

        self.encoder.backward(grad_loc, grad_log_scale, input_grad=False)
        return Loss(loss, neg_elbo)


class TwoLayerHandStep(_Step):
    """One optimiser step of the two-stochastic-layer VAE (vaelab.models.two_layer) by hand.

    With ε fixed, each row's −log w = −log p(x|z1) − log p(z1|z2) − log p(z2)
    + log q(z1|x) + log q(z2|z1) passes back: to z2, z2 (the prior) and
    p(z1|z2)'s terms through its network; to z1, u/σp (u = (z1 − μp)/σp),
    the pixels' through p(x|z1)'s network, and all of z2's through q(z2|z1)'s;
    log σq1 and log σq2 get −1 each (log q's own term, weights summing to one
    over the particles), μp −u/σp and log σp 1 − u². The noise is drawn as
    ``_log_weights`` draws it: ε1 (K, B, z1), then ε2 (K, B, z2).

    DReG (vaelab.bounds): log q is taken with the guide's weights stopped, so
    log σq1 and log σq2 get no term of their own; instead log q1 sends −ε1/σq1
    to z1, log q2 sends −ε2/σq2 to z2 and, through q(z2|z1)'s network with
    its weights stopped, its μ and log σ terms (ε2/σq2, ε2² − 1) to z1. The
    gradients reaching the draws z1 and z2 from log w are weighted by w̃ once
    more; z2's path back to z1 through the live network is not a draw's.
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, config):
        super().__init__(model, optimizer, config)
        act = self.activation
        self.q1 = _Net(model.encoder["z1"], self.grads, act)
        self.q2 = _Net(model.encoder["z2"], self.grads, act)
        self.p1 = _Net(model.decoder["z1"], self.grads, act)
        self.px = _Net(model.decoder["x"], self.grads, act)
        self._buffers_complete()

    def _gradients(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Loss:
        """Writes each weight's gradient of the loss of images `x` (B, D) to its buffer; returns the Loss."""
        k, n, objective = self.particles, x.shape[0], self.objective
        loc1, log_scale1 = self.q1.forward(x)
        scale1 = torch.exp(log_scale1)
        eps1 = torch.randn((k, *loc1.shape), dtype=x.dtype, device=x.device)
        noise1 = scale1 * eps1  # (K, B, Z1)
        z1 = (loc1 + noise1).view(k * n, -1)
        loc2, log_scale2 = self.q2.forward(z1)  # (K*B, Z2)
        scale2 = torch.exp(log_scale2)
        eps2 = torch.randn(loc2.shape, dtype=x.dtype, device=x.device)
        noise2 = scale2 * eps2
        z2 = loc2 + noise2
        loc_p, log_scale_p = self.p1.forward(z2)  # p(z1|z2): (K*B, Z1)
        inv_scale_p = torch.exp(-log_scale_p)
        u = (z1 - loc_p).mul_(inv_scale_p)
        (logits,) = self.px.forward(z1)
        rec = F.binary_cross_entropy_with_logits(logits.view(k, n, -1), x.expand(k, n, -1), reduction="none")
        # log w = log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1); the 2π terms cancel.
        log_w = (
            (
                (0.5 * (eps2.square() - z2.square()) + log_scale2).sum(-1)
                - (0.5 * u.square() + log_scale_p).sum(-1)
            ).view(k, n)
            + (0.5 * eps1.square()).sum(-1)
            + log_scale1.sum(-1)
            - rec.sum(-1)
        )
        if objective in BOUNDS:
            loss = (math.log(k) * n) - torch.logsumexp(log_w, 0).sum()
            neg_elbo = -log_w.mean(0).sum()
            weight = torch.softmax(log_w, 0).view(k * n, 1)
        else:  # trace: the mean of the log weights over the particles
            loss, neg_elbo = -log_w.mean(0).sum(), None
            weight = torch.full((k * n, 1), 1.0 / k, dtype=x.dtype, device=x.device)

        # p(x|z1), p(z1|z2) and p(z2), back to z1 and z2.
        grad_logits = torch.sigmoid(logits).view(k, n, -1).sub_(x).view(k * n, -1).mul_(weight)
        grad_z1 = self.px.backward(grad_logits)
        grad_u = u * weight  # d(u²/2)/du, weighted
        grad_z1.addcmul_(grad_u, inv_scale_p)
        grad_loc_p = -grad_u * inv_scale_p
        grad_log_scale_p = weight - grad_u * u  # d(log σp + u²/2)/d log σp = 1 - u², weighted
        grad_z2 = self.p1.backward(grad_loc_p, grad_log_scale_p).addcmul_(z2, weight)
        dreg = objective == "dreg"
        if dreg:  # log q at stopped weights: at the draws, and into z1 through q2's stopped network
            eps2_over_scale2 = eps2 * torch.exp(-log_scale2)
            grad_z2.addcmul_(eps2_over_scale2, weight, value=-1)
            stopped = self.q2.backward(eps2_over_scale2 * weight, (eps2.square() - 1) * weight, weights=False)
            eps1_over_scale1 = (eps1 / scale1).view(k * n, -1)
            grad_z1.add_(stopped).addcmul_(eps1_over_scale1, weight, value=-1)
            grad_z1.mul_(weight)  # the draws' w̃ once more
            grad_z2.mul_(weight)
        # q(z2|z1): z2 = loc2 + scale2 * eps2 (and -log q2's log-scale term); back to z1.
        grad_log_scale2 = grad_z2 * noise2
        if not dreg:
            grad_log_scale2.sub_(weight)
        grad_z1.add_(self.q2.backward(grad_z2, grad_log_scale2))
        # q(z1|x): z1 = loc1 + scale1 * eps1, summed over the particles (and -log q1's term).
        grad_z1 = grad_z1.view(k, n, -1)
        grad_log_scale1 = (grad_z1 * noise1).sum(0)
        if not dreg:
            grad_log_scale1.sub_(1)
        self.q1.backward(grad_z1.sum(0), grad_log_scale1, input_grad=False)
        return Loss(loss, neg_elbo)


def make_step(model, optimizer: torch.optim.Optimizer, config) -> _Step:
    """Returns the hand-written step of `model` (one :func:`refusal` passed)."""
    from vaelab.models.two_layer import TwoLayerVAE

    return (TwoLayerHandStep if isinstance(model, TwoLayerVAE) else HandStep)(model, optimizer, config)
