"""Several seeds of one set-up trained in one process, their networks stacked: ``vaelab sweep --stack``.

Seeds that share a network shape take each step together: their parameters
stacked along a new first axis (``torch.func.stack_module_state``), the
model's own hand-written loss and its gradient run for all of them at once
by ``torch.func.vmap`` (batched matrix products underneath), and one Adam
steps the stacked tensors (element-wise, so each seed's update is its own).

Each seed stays the run it would be alone (``vaelab train --seed S``):

- its images come in its own order (``epoch_order(seed, epoch)``);
- every random draw of its steps (dynamic binarisation, the loss's noise) is
  taken from its own stream, in the order the lone run takes them: the
  global generator is set to the seed's state, the batch is drawn, the
  loss's N(0, I) noise is drawn (``LatentModel.standard_normal``, handed in
  through ``given_noise``), and the state is kept for the next step;
- at the end of each epoch its slice of the weights and of Adam's moments is
  put back into its own training state and written by the same
  ``finish_epoch`` as a lone run (test ELBO, scores, metrics.jsonl, and a
  checkpoint whose random state is the seed's), so ``train --resume``,
  ``evaluate`` and the rest treat it as any run.

A seed whose loss becomes NaN or infinite is stopped at the step where its
lone run would stop (``Diverged``): nothing more is written for it, its last
good checkpoint is kept, and the others train on (its slice of the stacked
tensors runs, apart from theirs, to the end of that epoch; then the others
are stacked again without it, from their own states). The seeds share
one copy of the images: what a stack refuses (static binarisation, models
whose training labels depend on the seed) is what would make them differ.

What differs from the lone run is float rounding: the stacked products add
in another order (a test holds weights and metrics to 1e-5).

For the hand-written (torch) backend and its default objective, one
optimiser group, no gradient clipping, one process; the Pyro backend's
programs draw inside Pyro, where the seeds' streams cannot be handed in,
so its sweeps run seed by seed or with ``--parallel``. Models: those whose
hand-written loss draws through ``standard_normal`` and branches on no
value of its input (vae, beta-vae, cvae); :func:`refusal` says why not.
"""

import contextlib
import math
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from tqdm import tqdm

from vaelab import checkpoint
from vaelab.data.batches import Batch
from vaelab.distributed import pick_device
from vaelab.errors import ConfigError
from vaelab.stopping import Diverged, Interrupted, SignalCatcher
from vaelab.train import EpochResult, _epoch_line, build_state, datasets, finish_epoch, start_epoch

STACKABLE = ("vae", "beta-vae", "cvae")


def refusal(config) -> str | None:
    """Why the seeds of `config` cannot be stacked, or None if they can."""
    if config.backend != "torch":
        return "the Pyro backend draws inside Pyro, where each seed's stream cannot be handed in"
    if config.model not in STACKABLE:
        return f"model {config.model} is not stacked (only {', '.join(STACKABLE)})"
    if config.elbo not in (None, "meanfield", "trace") or config.particles != 1:
        return "only the default objective with one particle is stacked"
    if config.binarize == "static":
        return "--binarize static draws each seed's images from its seed; the stack trains on one set"
    if config.clip_grad is not None:
        return "--clip-grad clips each seed's gradient by its own norm, which the stack does not"
    if config.tensorboard:
        return "--tensorboard is written by lone runs only"
    if config.restarts > 1:
        return "--restarts trains each seed's starts one after another, then the one chosen"
    if config.hand_gradients:
        return "--hand-gradients steps one seed at a time; the stack differentiates its seeds together"
    if pick_device(config.device).type != "cpu":
        return "the seeds' random streams are swapped on the CPU's generator; add --device cpu"
    return None


class _Seed:
    """One seed's training state and random streams.

    Only torch's generator is drawn from in a step, so a step swaps that alone
    (:meth:`enter_step`, :meth:`leave_step`); Python's and NumPy's are put back
    with it around the epoch's end, whose checkpoint records all three.
    """

    def __init__(self, config, run_dir, data=None):
        self.config, self.run_dir = config, run_dir
        self.state = build_state(config, data=data)  # seeds the global generators with config.run_seed
        self.failure = None  # the Diverged error that stopped this seed; then nothing more is written
        self.capture()

    def capture(self):
        self.streams = checkpoint.rng_state()

    def enter(self):
        checkpoint.set_rng_state(self.streams)

    def enter_step(self):
        torch.set_rng_state(self.streams["torch"])

    def leave_step(self):
        self.streams["torch"] = torch.get_rng_state()


def train_stacked(configs: list, run_dirs: list, progress=False, echo=print) -> dict:
    """Trains the seeds `configs` (equal but for their seed) into `run_dirs`, stacked; see the module.

    Refuses (ConfigError) before writing anything seeds that a stack cannot
    continue: a model of several optimiser groups, a seed stopped inside an
    epoch, seeds at different epochs. A seed whose loss becomes NaN or
    infinite is stopped where a lone run would stop (the first logging
    interval after it), keeping its last good checkpoint; the others go on.
    Returns {seed: the Diverged error} for those seeds (empty if none).
    """
    from vaelab.runlock import RunLock
    from vaelab.train import _read_or_refuse, open_run

    why = refusal(configs[0])
    if why:
        raise ConfigError(f"--stack: {why}")
    first = _Seed(configs[0], Path(run_dirs[0]))
    data = datasets(first.state)  # one copy: the seeds' images are the same
    seeds = [first] + [_Seed(c, Path(d), data) for c, d in zip(configs[1:], run_dirs[1:], strict=True)]
    if len(seeds[0].state.optimizer.param_groups) != 1:
        raise ConfigError(
            f"--stack: model {configs[0].model} has several optimiser groups; it is not stacked"
        )
    with contextlib.ExitStack() as locks:
        ckpts = []
        for seed in seeds:
            locks.enter_context(RunLock(seed.run_dir))
            path = seed.run_dir / "checkpoint.pt"
            ckpt = _read_or_refuse(seed.run_dir, resume=True) if path.exists() else None
            if ckpt is not None and ckpt.get("position") is not None:
                raise ConfigError(f"--stack: {seed.run_dir} stopped inside an epoch; resume it alone first")
            ckpts.append(ckpt)
        epochs = {0 if ckpt is None else ckpt["epoch"] for ckpt in ckpts}
        if len(epochs) != 1:
            raise ConfigError(
                f"--stack: the seeds are at epochs {sorted(epochs)} (one diverged or was resumed alone); "
                "continue the sweep without --stack, which trains each seed alone"
            )
        for seed, ckpt in zip(seeds, ckpts, strict=True):
            open_run(seed.state, seed.run_dir, ckpt)
            if ckpt is not None:
                seed.capture()  # the checkpoint's streams
        _train(seeds, epochs.pop(), progress, echo)
    return {seed.config.seed: seed.failure for seed in seeds if seed.failure is not None}


def _stacked_optimizer(seeds, params):
    """One Adam over the stacked parameters, with the seeds' Adam state stacked into it."""
    first = seeds[0].state.optimizer
    group = first.param_groups[0]
    optimizer = torch.optim.Adam(
        list(params.values()), lr=group["lr"], betas=group["betas"], eps=group["eps"], fused=True
    )
    states = [s.state.optimizer.state for s in seeds]
    own = [dict(s.state.model.named_parameters()) for s in seeds]
    for name, stacked in params.items():
        per_seed = [states[k].get(own[k][name]) for k in range(len(seeds))]
        if all(p is not None for p in per_seed):
            optimizer.state[stacked] = {
                "step": per_seed[0]["step"].clone(),
                "exp_avg": torch.stack([p["exp_avg"] for p in per_seed]),
                "exp_avg_sq": torch.stack([p["exp_avg_sq"] for p in per_seed]),
            }
    return optimizer


def _unstack(seeds, params, optimizer):
    """Puts each seed's slice of the weights and Adam's moments back into its own state."""
    for k, seed in enumerate(seeds):
        own = dict(seed.state.model.named_parameters())
        with torch.no_grad():
            for name, stacked in params.items():
                own[name].copy_(stacked[k])
        opt = seed.state.optimizer
        for name, stacked in params.items():
            moments = optimizer.state.get(stacked)
            if moments:
                opt.state[own[name]] = {
                    "step": moments["step"].clone(),
                    "exp_avg": moments["exp_avg"][k].clone(),
                    "exp_avg_sq": moments["exp_avg_sq"][k].clone(),
                }


def _stack(seeds):
    """The seeds' weights, buffers and Adam, stacked on a leading dimension, from each seed's own state."""
    params, buffers = stack_module_state([s.state.model for s in seeds])
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    return params, buffers, _stacked_optimizer(seeds, params)


def _train(all_seeds, done: int, progress, echo) -> None:
    config = all_seeds[0].config
    model = all_seeds[0].state.model  # the shape every seed shares; its own weights are not used in steps
    seeds = None  # the seeds stacked now: a seed that diverged leaves the stack at the end of its epoch

    calling = _Calling(model)

    def per_seed(p, b, x, y, eps):
        """One seed's loss at its weights `p`, images `x` (labels `y`) and noise `eps`; -ELBO beside it."""
        weights = {f"model.{k}": v for k, v in {**p, **b}.items()}
        with model.given_noise([eps]):
            out = functional_call(calling, weights, (Batch(x, y),))
        neg_elbo = out.loss if out.neg_elbo is None else out.neg_elbo
        return out.loss, (out.loss.detach(), neg_elbo.detach())

    labelled = config.model == "cvae"
    step_fn = vmap(grad_and_value(per_seed, has_aux=True), in_dims=(0, 0, 0, 0 if labelled else None, 0))
    images = all_seeds[0].state.train_data
    batch_size = config.batch_size
    catcher = SignalCatcher()
    with catcher as should_stop:
        for epoch in range(done + 1, config.epochs + 1):
            live = [seed for seed in all_seeds if seed.failure is None]
            if not live:
                break
            if live != seeds:  # stacked again from the seeds' own states, which _unstack keeps current
                seeds = live
                params, buffers, optimizer = _stack(seeds)
            for seed in all_seeds:  # each seed's rate and schedule, as a lone run sets them (the
                start_epoch(seed.state, epoch)  # first's too: its model is the stack's template)
            optimizer.param_groups[0]["lr"] = seeds[0].state.optimizer.param_groups[0]["lr"]
            weighted = seeds[0].state.elbo_apart
            orders = [
                s.state.model.training_order(
                    images.epoch_order(s.config.run_seed, epoch), images.labels, s.config, epoch
                )
                for s in seeds
            ]
            n = len(orders[0])
            steps = math.ceil(n / batch_size)
            totals = torch.zeros(len(seeds))  # Σ loss, as a lone run sums it (float32)
            neg_elbos = torch.zeros(len(seeds))
            start = time.perf_counter()
            bar = tqdm(total=steps, desc=f"epoch {epoch}, {len(seeds)} seeds", unit="step", leave=False,
                       disable=not progress)  # fmt: skip
            for step in range(steps):
                if should_stop():  # each seed keeps its last epoch's checkpoint
                    raise Interrupted(f"interrupted by signal {catcher.signum}", catcher.signum)
                xs, ys, noise = [], [], []
                for seed, order in zip(seeds, orders, strict=True):
                    seed.enter_step()
                    batch = images.batch(order[step * batch_size : (step + 1) * batch_size])
                    xs.append(batch.x)
                    ys.append(batch.y)
                    noise.append(torch.randn(len(batch.x), model.z_dim))
                    seed.leave_step()
                y = torch.stack(ys) if labelled else None
                grads, (_, (loss, neg_elbo)) = step_fn(
                    params, buffers, torch.stack(xs), y, torch.stack(noise)
                )
                for name, p in params.items():
                    p.grad = grads[name]
                optimizer.step()
                totals += loss
                neg_elbos += neg_elbo
                if (step + 1) % config.log_interval == 0 or step + 1 == steps:
                    _check_finite(seeds, totals, epoch, step, echo)  # as train_epoch does, seed by seed
                bar.update()
            bar.close()
            seconds = (time.perf_counter() - start) / len(seeds)
            _unstack(seeds, params, optimizer)
            for k, seed in enumerate(seeds):
                if seed.failure:  # nothing is written for it, and the next epoch's stack leaves it out
                    continue
                seed.enter()
                if weighted:
                    result = EpochResult(-neg_elbos[k].item() / n, seconds, None, -totals[k].item() / n)
                else:
                    result = EpochResult(-totals[k].item() / n, seconds)
                line = finish_epoch(seed.state, seed.run_dir, epoch, result, None)
                seed.capture()
                echo(f"seed {seed.config.seed}: " + _epoch_line(line, config.epochs))


def _check_finite(seeds, totals, epoch: int, step: int, echo) -> None:
    """Stops each seed whose summed loss is no longer finite, where its lone run would stop."""
    for seed, value in zip(seeds, totals.tolist(), strict=True):  # one read of the seeds' sums
        if seed.failure is None and not math.isfinite(value):
            kept = (seed.run_dir / "checkpoint.pt").exists()
            seed.failure = Diverged(epoch, step + 1, value, kept)
            echo(f"seed {seed.config.seed}: error: {seed.failure}")


class _Calling(torch.nn.Module):
    """`model.loss(batch)` as a forward, so functional_call can run it at other weights."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)
