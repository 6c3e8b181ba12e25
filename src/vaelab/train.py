"""The training loop: one loop for every model and backend, in named parts.

- :func:`build_state` builds the training state (data, model, optimiser,
  objective) from a config; :func:`restore_state` puts a checkpoint into it;
- :func:`train_step` takes one optimiser step on a batch;
- :func:`train_epoch` runs an epoch of steps, and can stop between two;
- :func:`finish_epoch` scores the epoch and writes the run directory
  (metrics.jsonl, an atomic checkpoint);
- :func:`train` ties them together, with resume, signals (:mod:`vaelab.stopping`) and torchrun.

Tests and benchmarks call the same parts instead of writing the loop again.

>>> train(resolve(preset="pytorch-examples", overrides={"epochs": 1}), "runs/demo")
>>> state = build_state(config); train_step(state, state.train_data.batch(index))
"""

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from vaelab import checkpoint, data, distributed, handgrad
from vaelab.board import Board, check_available
from vaelab.config import Config, from_json, from_mapping, learning_rate, read_run_config, run_config_json
from vaelab.data.batches import Batch, ImageBatches
from vaelab.data.npzfile import memory_bytes
from vaelab.distributed import World, pick_device
from vaelab.errors import CheckpointError, ConfigError
from vaelab.fileio import write_json, write_jsonl
from vaelab.graphstep import GraphedStep, eager_step, graph_refusal
from vaelab.models import build_model
from vaelab.models.base import LatentModel, Loss, dataset_elbo, evaluating
from vaelab.objectives import BOUNDS, clear_param_store, make_objective
from vaelab.records import METRICS_FIELDS, read_metrics
from vaelab.restarts import STARTS_FILE, adopt_lone_start, choose_start, lone_start_to_compare
from vaelab.restarts import begun as restarts_begun
from vaelab.restarts import refusal as restarts_refusal
from vaelab.runlock import RunLock
from vaelab.settings import plain
from vaelab.stopping import Diverged, Interrupted, SignalCatcher

# Metrics every epoch line prints by name; a model's own scores follow them.
_LOGGED = {*METRICS_FIELDS, "val_elbo"}
# Fields that may differ between a run directory and a --resume command line.
RESUMABLE = {
    "epochs",
    "log_interval",
    "device",
    "data_dir",
    "eval_batch_size",
    "tensorboard",
    "cuda_graph",
    "hand_gradients",
}


class Datasets(NamedTuple):
    """A run's images: what it trains on, the test split, and the validation split (or None)."""

    train: ImageBatches
    test: ImageBatches
    validation: ImageBatches | None = None


def load_datasets(config: Config, device, download=False) -> Datasets:
    """Returns the train, test and validation batches of `config`'s dataset on `device`, with labels.

    `download` allows fetching the dataset when no local source has it.
    The validation split (``--validation N``) is the training split's last N
    images, cut off before the model chooses its training labels, as
    evaluation sees them (a binarised run's from one fixed draw, the same for
    every run, as :func:`vaelab.data.validation_split` gives them to ``evaluate``),
    so each epoch scores the same images.
    """
    train_data, test_data, *held_out = data.training_and_test(
        config.dataset, config.binarize, config.seed, device, config.data_dir, download, config.validation
    )
    val_data = held_out[0] if held_out else None
    if config.batch_size > len(train_data):
        held = f" left after --validation {config.validation}" if val_data is not None else ""
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train_data)} "
            f"training images of {config.dataset}{held}"
        )
    wanted = config.model_class.labels
    named = {None: "no labels", "classes": "class labels", "counts": "object counts for labels"}
    for split, images in (("train", train_data), ("test", test_data)):
        if wanted is not None and images.label_kind != wanted:
            has = named[images.label_kind]
            raise ConfigError(
                f"model {config.model} needs {named[wanted]}; the {split} split of {config.dataset} has {has}"
            )
    if wanted == "classes":
        data.check_classes(config.dataset, train_data, test_data)
    if train_data.labels is not None:
        train_data.labels = config.model_class.training_labels(
            train_data.labels, train_data.num_classes, config
        )
    return Datasets(train_data, test_data, val_data)


def make_optimizer(model: LatentModel, config: Config) -> torch.optim.Optimizer:
    """Returns Adam over the model's parameter groups with the config's rate, betas and epsilon.

    Each group remembers its first rate (base_lr) for the schedule. The fused
    kernel updates every parameter in one pass (benchmarks/levers.py). Under
    --cuda-graph it is `capturable`: its step count lives on the device.
    """
    groups = model.param_groups(config.lr, config.settings)
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.Adam(
        groups, betas=tuple(config.adam_betas), eps=config.adam_eps, fused=True, capturable=config.cuda_graph
    )


@dataclass
class TrainState:
    """What training moves (model, optimiser, epoch, metrics) and what it trains on.

    epoch: the last completed epoch; position: where an interrupted epoch
    stopped ({"epoch", "step", "loss_total", "neg_elbo_total", "seen", "seconds"}), or None.
    """

    config: Config
    model: LatentModel
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    train_data: ImageBatches
    test_data: ImageBatches | None
    model_args: dict
    world: World = distributed.ALONE
    val_data: ImageBatches | None = None  # --validation: scored each epoch, never trained on
    epoch: int = 0
    position: dict | None = None
    metrics: list = field(default_factory=list)
    # The objective is not the ELBO (a bound, a weighted model): each step's Loss carries -ELBO too.
    elbo_apart: bool = False
    graph: GraphedStep | None = None  # --cuda-graph: the step, recorded and replayed
    hand: handgrad._Step | None = None  # --hand-gradients: the step without autograd


def build_state(config: Config, world: World = distributed.ALONE, download=False, data=None) -> TrainState:
    """Returns a fresh training state: seeded, data loaded, model built, optimiser and objective made.

    `data`: the Datasets another state of the same dataset loaded (a stack of
    seeds shares one copy; :func:`datasets` gives a state's), instead of loading them again; only
    where they would be the same (no static binarisation, no labels drawn
    from the seed: vaelab.stacked refuses both).
    Raises (before anything is written) if the data do not suit the model.
    """
    device = pick_device(config.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    checkpoint.seed_all(config.run_seed)
    clear_param_store()
    train_data, test_data, val_data = data or load_datasets(config, device, download)
    held = 0 if val_data is None else len(val_data)
    if held != config.validation:
        raise ValueError(f"the data hold {held} validation images, the config asks for {config.validation}")
    model_args = config.model_args(train_data.spec)
    _check_fits(config, model_args)
    model = build_model(config.model, **model_args).to(device)
    state = init_state(config, model, train_data, test_data, world, model_args)
    state.val_data = val_data
    return state


def datasets(state: "TrainState") -> Datasets:
    """Returns the images `state` trains and scores on, to hand to another :func:`build_state`."""
    return Datasets(state.train_data, state.test_data, state.val_data)


def _check_fits(config: Config, model_args: dict) -> None:
    """Raises ConfigError if the model's weights, gradients and Adam's two moments exceed the memory.

    The model is built on torch's "meta" device first: shapes without storage.
    """
    with torch.device("meta"):
        model = build_model(config.model, **model_args)
        numel = sum(p.numel() for p in model.parameters())
    needed, memory = 4 * 4 * numel, memory_bytes()
    if needed > memory // 2:
        raise ConfigError(
            f"model {config.model} with these settings has {numel:,} weights: with their gradients and "
            f"Adam's moments {needed / 2**30:.1f} GiB, more than half this machine's {memory / 2**30:.1f} GiB"
        )
    # A step keeps about three floats per activation for backward, for every (particle, image) row.
    step = 3 * 4 * config.particles * config.batch_size * model.floats_per_particle()
    if step > memory // 2:
        raise ConfigError(
            f"--particles {config.particles} with --batch-size {config.batch_size}: a step of model "
            f"{config.model} needs about {step / 2**30:.1f} GiB, more than half this machine's "
            f"{memory / 2**30:.1f} GiB"
        )


def init_state(
    config, model, train_data, test_data=None, world=distributed.ALONE, model_args=None
) -> TrainState:
    """Returns the training state of `model` (already built and seeded) on `train_data`."""
    if world.rank > 0:  # same initial weights on every rank, then a stream of its own
        torch.manual_seed(distributed.rank_seed(config.run_seed, world.rank))
    optimizer = make_optimizer(model, config)
    loss_fn = distributed.LossModule(model, make_objective(config.backend, config.elbo, config.particles))
    if world.size > 1:
        device = train_data.pixels.device
        ids = [device.index] if device.type == "cuda" else None
        # No buffer is synchronised each step: a model changes its buffers only in on_epoch and
        # epoch_done, alike on every rank (the completion CVAE's early-stopping state, a million floats).
        loss_fn = torch.nn.parallel.DistributedDataParallel(
            loss_fn, device_ids=ids, find_unused_parameters=model.idle_parameters, broadcast_buffers=False
        )
    state = TrainState(config, model, optimizer, loss_fn, train_data, test_data, model_args or {}, world)
    state.elbo_apart = model.weighted or config.elbo in BOUNDS
    if config.cuda_graph:
        why = graph_refusal(config, train_data.pixels.device, world.size, model)
        if why is not None:
            raise ConfigError(why)
        state.graph = GraphedStep()
    if config.hand_gradients:
        why = handgrad.refusal(config, model, world.size)
        if why is not None:
            raise ConfigError(why)
        state.hand = handgrad.make_step(model, optimizer, config)
    return state


def restore_state(state: TrainState, ckpt: dict, ckpt_path) -> None:
    """Puts checkpoint `ckpt` (read from `ckpt_path`) into `state`: weights, optimiser, RNG, position."""
    try:
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        problem = checkpoint.load_problem(e)
        raise CheckpointError(f"{ckpt_path}: does not fit this model ({problem})") from None
    if ckpt["model_name"] != state.config.model:
        raise CheckpointError(
            f"{ckpt_path}: holds a model {ckpt['model_name']!r}, not {state.config.model!r}"
        )
    checkpoint.set_rng_state(ckpt["rng"])
    rank_rng = ckpt.get("rank_rng")
    if rank_rng is not None and len(rank_rng) == state.world.size:
        torch.set_rng_state(rank_rng[state.world.rank])
    state.epoch = ckpt["epoch"]
    state.position = ckpt.get("position")


def start_epoch(state: TrainState, epoch: int) -> None:
    """Sets what changes from epoch to epoch: learning rates, and the model's own schedule."""
    config = state.config
    factor = learning_rate(config, epoch) / config.lr
    for group in state.optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    state.model.on_epoch(epoch, config.settings)
    if state.graph is not None:  # the graphs hold the old rates and schedule
        state.graph.reset()
    # A warm-up weights the objective from this epoch on: then each step's Loss carries -ELBO too.
    state.elbo_apart = state.model.weighted or config.elbo in BOUNDS


def train_step(state: TrainState, batch: Batch) -> Loss:
    """Takes one optimiser step on `batch`; returns its Loss, detached.

    Under torchrun each rank's loss is scaled so that DDP's gradient average
    is the gradient of the global batch's sum. Under --cuda-graph the step is
    a replay of a recorded graph (vaelab.graphstep); under --hand-gradients,
    the gradients are written by hand (vaelab.handgrad).
    """
    if state.hand is not None:
        return state.hand(batch)
    return eager_step(state, batch) if state.graph is None else state.graph(state, batch)


class EpochResult(NamedTuple):
    """What an epoch of steps gave: its mean train ELBO and seconds, or where it stopped.

    train_objective: the mean over images of the objective maximised (the negative of the
    loss), when that is not the ELBO (a weighted model: rec - β·KL; a bound: IWAE's); else None.
    """

    train_elbo: float
    seconds: float
    stopped_at: dict | None = None  # a TrainState.position if interrupted
    train_objective: float | None = None


def train_epoch(
    state: TrainState, epoch: int, progress=True, position: dict | None = None, should_stop=lambda: False
) -> EpochResult:
    """Runs one epoch of steps from `position` (the start if None); returns an EpochResult.

    Under torchrun each rank trains on its shard of every global batch (see
    vaelab.distributed). `should_stop()` is asked before each step; when it
    says so, the epoch stops there and the result says where, so a checkpoint
    can continue it exactly.
    """
    world, config, images = state.world, state.config, state.train_data
    device = images.pixels.device
    shuffled = images.epoch_order(config.run_seed, epoch)
    order = state.model.training_order(shuffled, images.labels, config, epoch)
    n, batch_size = len(order), config.batch_size
    steps = (n + batch_size - 1) // batch_size
    position = position or {"step": 0, "loss_total": 0.0, "neg_elbo_total": None, "seen": 0, "seconds": 0.0}
    # This rank's summed losses, kept on the device and read once per log interval.
    total = torch.tensor(position["loss_total"], device=device)
    weighted = state.elbo_apart  # then each step's Loss also carries -ELBO
    neg_elbo_total = torch.tensor(position.get("neg_elbo_total") or 0.0, device=device) if weighted else None
    seen = position["seen"]
    bar = tqdm(
        total=steps,
        initial=position["step"],
        desc=f"epoch {epoch}",
        unit="step",
        leave=False,
        disable=not progress,
    )
    start = time.perf_counter() - position["seconds"]
    for step in range(position["step"], steps):
        if should_stop():
            bar.close()
            stopped = {
                "epoch": epoch,
                "step": step,
                "loss_total": total.item(),
                "neg_elbo_total": neg_elbo_total.item() if weighted else None,
                "seen": seen,
                "seconds": time.perf_counter() - start,
            }
            return EpochResult(math.nan, stopped["seconds"], stopped)
        batch = images.batch(world.shard(order[step * batch_size : (step + 1) * batch_size]))
        out = train_step(state, batch)
        total += out.loss
        if weighted:
            neg_elbo_total += out.neg_elbo
        seen += len(batch.x)
        if (step + 1) % config.log_interval == 0 or step + 1 == steps:
            running = total.item()  # the one host read per logging interval
            if not math.isfinite(running):
                raise Diverged(epoch, step + 1, running, state.epoch > 0 or state.position is not None)
            bar.set_postfix(loss=f"{running / seen:.2f}")
        bar.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    objective = -world.sum(total).item() / n
    if not weighted:
        return EpochResult(objective, seconds)
    return EpochResult(-world.sum(neg_elbo_total).item() / n, seconds, None, objective)


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise CheckpointError(f"{run_dir}: cannot write the run directory ({e.strerror})") from None


def resume_config(run_dir, overrides: dict) -> Config:
    """Returns the saved config of `run_dir` with the resumable `overrides` applied.

    Raises if an override changes a field that would make it another run.
    """
    values = read_run_config(run_dir).to_dict()
    given = {k: plain(v) for k, v in from_mapping(overrides, "command line").items()}
    if values.get("restarts", 1) > 1 and given.get("start") in (0, values.get("start")):
        given.pop("start")  # --restarts chose it: the command given again names start 0
    differing = sorted(k for k, v in given.items() if k not in RESUMABLE and v != values.get(k))
    if differing:
        listed = ", ".join(f"{k} ({values.get(k)!r} -> {given[k]!r})" for k in differing)
        raise ConfigError(f"--resume: {run_dir} was trained with other settings: {listed}")
    return from_json({**values, **given}, "command line")


def save_checkpoint(path, state: TrainState, epoch: int, rank_rng=None, position=None) -> None:
    """Writes `state` at the end of `epoch` (or stopped at `position` inside the next) to `path`."""
    checkpoint.save(
        path,
        model=state.model.state_dict(),
        optimizer=state.optimizer.state_dict(),
        model_name=state.config.model,
        model_args=state.model_args,
        epoch=epoch,
        rng=checkpoint.rng_state(),
        rank_rng=rank_rng if state.world.size > 1 else None,
        position=position,
        image_shape=list(state.train_data.image_shape),
    )


def finish_epoch(state: TrainState, run_dir: Path, epoch: int, result: EpochResult, rank_rng) -> dict:
    """Scores epoch `epoch` on the test set, appends it to metrics.jsonl, writes the checkpoint.

    Returns the epoch's metrics: train_elbo and test_elbo are ELBOs whatever
    the model minimises (train_objective, when it is something else), then
    the model's own scores; with a validation split, val_elbo and the same
    scores on it, named val_<score>.
    """
    config, model = state.config, state.model
    test_elbo = dataset_elbo(model, state.test_data, config.eval_batch_size, seed=config.seed)
    line = {"epoch": epoch, "train_elbo": result.train_elbo, "test_elbo": test_elbo}
    line["train_seconds"] = result.seconds
    if result.train_objective is not None:
        line["train_objective"] = result.train_objective
    if state.val_data is not None:
        line["val_elbo"] = dataset_elbo(model, state.val_data, config.eval_batch_size, seed=config.seed)
    with evaluating(model):
        line.update(model.scores(state.test_data, config.eval_batch_size))
        if state.val_data is not None:  # the same scores on the held-out images, prefixed val_
            val_scores = model.scores(state.val_data, config.eval_batch_size)
            line.update({f"val_{name}": value for name, value in val_scores.items()})
    model.epoch_done(epoch, line, config.settings)  # before the checkpoint, which keeps what it sets
    state.metrics.append(line)
    write_jsonl(run_dir / "metrics.jsonl", state.metrics)
    save_checkpoint(run_dir / "checkpoint.pt", state, epoch, rank_rng)
    state.epoch, state.position = epoch, None
    return line


def _epoch_line(line: dict, epochs: int) -> str:
    extra = "".join(f"  {k.replace('_', ' ')} {v:.4f}" for k, v in line.items() if k not in _LOGGED)
    val = f"  val ELBO {line['val_elbo']:9.3f}" if "val_elbo" in line else ""
    return (
        f"epoch {line['epoch']:3d}/{epochs}  train ELBO {line['train_elbo']:9.3f}  "
        f"test ELBO {line['test_elbo']:9.3f}{val}{extra}  ({line['train_seconds']:.1f} s)"
    )


def _read_or_refuse(run_dir: Path, resume: bool, echo=print) -> dict | None:
    """Returns the checkpoint to resume from, or None to start from the first epoch.

    A run with a checkpoint is continued only with `resume`, never overwritten.
    A run that stopped before its first checkpoint has nothing to lose: it
    starts again from the first epoch, with or without `resume`.
    """
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists():
        if resume:
            return checkpoint.load(ckpt_path)
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume or (run_dir / "config.json").exists():
        echo(
            f"{run_dir} has no checkpoint yet (the run stopped before its first epoch ended): starting afresh"
        )
    return None


def train(
    config: Config,
    run_dir,
    resume=False,
    progress=True,
    echo=print,
    download=False,
    data=None,
    resume_hint=True,
) -> Path:
    """Trains `config` into `run_dir` (or continues it when `resume`); returns the run dir.

    `download` allows fetching the dataset when no local source has it; `data`
    hands in the Datasets instead (see :func:`build_state`).
    `resume_hint`: an interrupted run echoes the command that continues it; a
    caller with a command of its own to give (a sweep, a run's starts) says
    False. Under torchrun, every process calls this; rank 0 alone reads and
    writes the run directory and prints.
    """
    run_dir = Path(run_dir)
    if config.tensorboard:
        check_available()  # before anything is written
    world = distributed.setup(config.device)
    if not world.is_main:
        progress, echo = False, (lambda line: None)
    why = None if (run_dir / STARTS_FILE).exists() else restarts_refusal(config)  # a start not yet chosen
    if why:
        raise ConfigError(why)
    # The seed's own start trained alone by a first command too short to choose, now resumed past
    # --restart-epochs: it becomes start 0 and the starts are compared (under the run's lock, below).
    adopting = resume and lone_start_to_compare(config, run_dir)
    if adopting and world.size > 1:
        raise ConfigError(
            f"--resume: {run_dir}'s starts are compared first (--epochs {config.epochs} is past "
            f"--restart-epochs {config.restart_epochs}): resume it without torchrun until the choice is made"
        )
    choosing = adopting or (config.restarts > 1 and not (run_dir / "checkpoint.pt").exists())
    if choosing and config.epochs <= config.restart_epochs and not restarts_begun(config, run_dir):
        echo(
            f"--restarts {config.restarts}: --epochs {config.epochs} is not more than --restart-epochs "
            f"{config.restart_epochs}, nothing to choose before the end: the seed's own start trains alone"
        )
        choosing = False
    if choosing and world.size > 1:
        raise ConfigError("--restarts trains its starts in one process; under torchrun leave it off")
    state = build_state(config, world, download, data)  # refuses unsuitable data before writing anything
    # One writer per run directory: rank 0 holds its lock until training ends.
    with RunLock(run_dir) if world.is_main else contextlib.nullcontext():
        if choosing:  # vaelab.restarts: the starts share these images
            if adopting:
                adopt_lone_start(config, run_dir, echo)
            images = datasets(state)
            config = choose_start(config, run_dir, resume, progress, echo, download, images, resume_hint)
            state = build_state(config, world, data=images)
            resume = True  # from the chosen start's last epoch, now RUN's checkpoint
        ckpt = _read_or_refuse(run_dir, resume, echo) if world.is_main else None
        ckpt = world.broadcast(ckpt)
        _train_from(state, run_dir, ckpt, progress, echo, resume_hint)
    return run_dir


def open_run(state: TrainState, run_dir: Path, ckpt) -> None:
    """Restores `state` from `ckpt` (if given) with the metrics it covers; writes RUN/config.json.

    Lines of metrics.jsonl past the checkpoint's epoch were written by a run
    that died before its checkpoint; those epochs are trained again.
    """
    if ckpt is not None:
        restore_state(state, ckpt, run_dir / "checkpoint.pt")
        if state.world.is_main:
            state.metrics = [
                m for m in read_metrics(run_dir / "metrics.jsonl") if m["epoch"] <= ckpt["epoch"]
            ]
    if state.world.is_main:
        _check_writable(run_dir)
        write_json(run_dir / "config.json", run_config_json(state.config))


def _train_from(state: TrainState, run_dir: Path, ckpt, progress, echo, resume_hint=True) -> None:
    """Trains `state` (restored from `ckpt` if given) to its config's last epoch, writing `run_dir`."""
    config, world = state.config, state.world
    open_run(state, run_dir, ckpt)

    board = None
    if config.tensorboard and world.is_main:
        board = Board(run_dir, state.epoch, state.test_data, config.seed)
    # Under torchrun the ranks could stop at different steps, so only a lone
    # process stops mid-epoch; a distributed run resumes from its last epoch.
    catcher = SignalCatcher() if world.size == 1 else contextlib.nullcontext(lambda: False)
    with catcher as should_stop, board or contextlib.nullcontext():
        for epoch in range(state.epoch + 1, config.epochs + 1):
            start_epoch(state, epoch)
            position = state.position
            start_at = position if position is not None and position["epoch"] == epoch else None
            result = train_epoch(state, epoch, progress, start_at, should_stop)
            if result.stopped_at is not None:
                save_checkpoint(run_dir / "checkpoint.pt", state, epoch - 1, None, result.stopped_at)
                step = result.stopped_at["step"]
                echo(f"interrupted in epoch {epoch} before step {step + 1}; checkpoint written.")
                if resume_hint:
                    echo(f"resume with: vaelab train --resume --out {run_dir}")
                raise Interrupted(f"interrupted by signal {catcher.signum}", catcher.signum)
            rank_rng = world.gather(torch.get_rng_state())
            line = None
            if world.is_main:
                line = finish_epoch(state, run_dir, epoch, result, rank_rng)
                echo(_epoch_line(line, config.epochs))
                if board is not None:
                    board.epoch(state.model, line, state.optimizer.param_groups[0]["lr"], config.epochs)
            if world.size > 1:  # the other ranks' models read the epoch's scores as rank 0's did
                line = world.broadcast(line)
                if not world.is_main:
                    state.model.epoch_done(epoch, line, config.settings)
            world.barrier()
