"""The MLP VAE's training step with its gradients written out by hand, no autograd (--hand-gradients).

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
than ``vae``, ``beta-vae`` and ``cvae`` (their priors and networks are the
VAE's), ``--net conv``, the Pyro backend, torchrun, ``--cuda-graph``,
``--detect-anomaly``. Speed: ``benchmarks/small_batch.py``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.bounds import BOUNDS
from vaelab.models.base import Loss
from vaelab.models.vae import VAE

ACTIVATIONS = ("tanh", "relu", "softplus")
_FLAG = "--hand-gradients"


def refusal(config, model, world_size: int = 1) -> str | None:
    """Returns why `config` cannot train `model` with hand-written gradients, or None if it can."""
    from vaelab.models.beta_vae import BetaVAE
    from vaelab.models.cvae import CVAE
    from vaelab.nets import BernoulliDecoder, GaussianEncoder

    if config.backend != "torch":
        return f"{_FLAG} writes the torch backend's gradients; backend pyro differentiates its own trace"
    if type(model) not in (VAE, BetaVAE, CVAE):
        return f"{_FLAG}: models vae, beta-vae and cvae are written by hand, not model {config.model}"
    if not (isinstance(model.encoder, GaussianEncoder) and isinstance(model.decoder, BernoulliDecoder)):
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


class HandStep:
    """One optimiser step of the MLP VAE with its gradients written by hand; called as ``step(batch)``.

    Built once the model is on its device and the optimiser made: it keeps
    detached views of the weights (a checkpoint's ``load_state_dict`` copies
    into them in place) and its own gradient buffers, which it hands to Adam's
    fused kernel with the optimiser's state (its moments and step counts).
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, config):
        self.model, self.optimizer = model, optimizer
        self.activation = config.activation
        # The torch backend's objectives, every one written here: the config refuses Pyro's for it.
        self.objective = "analytic" if config.elbo in (None, "meanfield") else config.elbo
        if self.objective not in ("analytic", "trace", *BOUNDS):
            raise ValueError(f"{_FLAG}: --elbo {config.elbo} is not the torch backend's")
        self.particles = config.particles
        self.conditioned = type(model).condition is not VAE.condition  # the CVAE's label joins the inputs
        self.clip_grad = config.clip_grad
        self.grads = {}  # parameter -> its gradient buffer
        encoder, decoder = model.encoder, model.decoder
        self.encoder = [_Layer(m, self.grads) for m in encoder.body if isinstance(m, nn.Linear)]
        self.loc, self.log_scale = _Layer(encoder.loc, self.grads), _Layer(encoder.log_scale, self.grads)
        self.decoder = [_Layer(m, self.grads) for m in decoder.body if isinstance(m, nn.Linear)]
        self.decoder.append(_Layer(decoder.logits, self.grads))
        missing = [p for p in model.parameters() if p not in self.grads]
        if missing:
            raise ValueError(f"{_FLAG}: the VAE has {len(missing)} weights outside its Linear layers")
        # In the optimiser's order, as clip_grad_norm_ sums them.
        self.grad_list = [self.grads[p] for group in optimizer.param_groups for p in group["params"]]
        self._adam = None  # per group: (params, grads, exp_avgs, exp_avg_sqs, steps), the optimiser's own
        self._adam_state = None  # the optimiser's state dict those lists were read from

    def __call__(self, batch) -> Loss:
        with torch.no_grad():
            loss = self._gradients(batch.x, batch.y)
            if self.clip_grad is not None:
                self._clip()
            self._adam_step()
        return loss

    # --- the gradients --------------------------------------------------------------------
    def _gradients(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Loss:
        """Writes each weight's gradient of the loss of images `x` (B, D) (labels `y` for the CVAE) to its
        buffer; returns the Loss."""
        act, k, objective, model = self.activation, self.particles, self.objective, self.model
        bound = objective in BOUNDS
        beta = model.kl_weight  # the β-VAE's β (1: the ELBO)
        n = x.shape[0]
        hidden, saved = [model.condition(x, y) if self.conditioned else x], []
        for layer in self.encoder:
            h, s = _activate(act, layer.forward(hidden[-1]))
            hidden.append(h)
            saved.append(s)
        h = hidden[-1]
        loc, log_scale = self.loc.forward(h), self.log_scale.forward(h)
        scale = torch.exp(log_scale)
        # The shapes the autograd step draws: terms_given's (B, Z) for one particle, log_weights' (K, B, Z).
        eps = self.model.standard_normal(loc.shape if k == 1 and not bound else (k, *loc.shape), loc)
        noise = scale * eps  # (K, B, Z) or (B, Z)
        z = loc + noise
        z_dim = z.shape[-1]
        inputs, dec_saved = [(model.condition(z, y) if self.conditioned else z).view(k * n, -1)], []
        for layer in self.decoder[:-1]:
            h, s = _activate(act, layer.forward(inputs[-1]))
            inputs.append(h)
            dec_saved.append(s)
        logits = self.decoder[-1].forward(inputs[-1])  # (K*B, D)

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
        grad = grad.view(k * n, -1)
        for layer, h, s in zip(
            reversed(self.decoder), reversed(inputs), [*reversed(dec_saved), None], strict=True
        ):
            layer.backward(grad, h)
            grad = torch.mm(grad, layer.weight)
            if s is not None:
                grad = _activation_backward(act, grad, s)
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

        # Backward: the encoder.
        self.loc.backward(grad_loc, hidden[-1])
        self.log_scale.backward(grad_log_scale, hidden[-1])
        grad = torch.mm(grad_loc, self.loc.weight).addmm_(grad_log_scale, self.log_scale.weight)
        for i in range(len(self.encoder) - 1, -1, -1):
            grad = _activation_backward(act, grad, saved[i])
            self.encoder[i].backward(grad, hidden[i])
            if i:
                grad = torch.mm(grad, self.encoder[i].weight)
        return Loss(loss, neg_elbo)

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
