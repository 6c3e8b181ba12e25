"""The training loop: one loop for every model and backend.

Batches come from tensors on the device; the loss is whatever the objective
returns; Adam steps. Each epoch's train and test ELBO go to ``metrics.jsonl``
and a checkpoint is written atomically, so ``resume=True`` continues a run.

>>> train(resolve(preset="pytorch-examples", overrides={"epochs": 1}), "runs/demo")
"""

import contextlib
import math
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from vaelab import checkpoint, data, distributed
from vaelab.config import Config, from_json, learning_rate, read_run_config
from vaelab.data.batches import ImageBatches
from vaelab.distributed import World
from vaelab.errors import CheckpointError, ConfigError, VaelabError
from vaelab.fileio import read_jsonl, write_json, write_jsonl
from vaelab.models import build_model
from vaelab.objectives import clear_param_store, make_objective

# The test set's binarisation (if any) is one draw from this seed for every run,
# so runs with different seeds are scored on the same binary images.
TEST_BINARIZE_SEED = 1234
# Metrics every epoch line prints by name; a model's own scores follow them.
_LOGGED = {"epoch", "train_elbo", "test_elbo", "train_seconds"}
# Fields that may differ between a run directory and a --resume command line.
RESUMABLE = {"epochs", "log_interval", "device", "data_dir", "eval_batch_size"}


def pick_device(name: str) -> torch.device:
    """Returns the torch device for a config's `device` field ("auto" prefers CUDA)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def load_datasets(config: Config, device, download=False) -> tuple[ImageBatches, ImageBatches]:
    """Returns the (train, test) image batches of `config`'s dataset on `device`.

    `download` allows fetching the dataset when no local source has it.
    """
    splits = data.load_all(config.dataset, data_dir=config.data_dir, download=download)
    train_images, test_images = splits["train"][0], splits["test"][0]
    if config.batch_size > len(train_images):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train_images)} "
            f"training images of {config.dataset}"
        )
    train_data = ImageBatches(train_images, config.binarize, seed=config.seed, device=device)
    test_data = _fixed_images(test_images, config, device)
    if config.dataset in data.COUNTED:  # its labels are object counts, which AIR scores itself on
        test_data.counts = torch.from_numpy(splits["test"][1]).to(device)
    return train_data, test_data


def _fixed_images(images, config: Config, device) -> ImageBatches:
    # Binarised evaluation images are one draw from a fixed seed, the same for every run.
    mode = "none" if config.binarize == "none" else "static"
    return ImageBatches(images, mode, seed=TEST_BINARIZE_SEED, device=device)


def split_images(config: Config, split: str, device) -> ImageBatches:
    """Returns the images of `split` as evaluation sees them (any binarisation drawn once)."""
    return split_images_and_labels(config, split, device)[0]


def split_images_and_labels(config: Config, split: str, device):
    """Returns (images as evaluation sees them, labels (N,) int64) of `split`, read once."""
    images, labels = data.load(config.dataset, split, data_dir=config.data_dir)
    return _fixed_images(images, config, device), labels


@torch.no_grad()
def dataset_elbo(model, images: ImageBatches, batch_size=1000, seed=0) -> float:
    """Returns the mean hand-written ELBO (analytic KL) over `images`, in nats per image.

    The reparameterisation noise comes from `seed` in a forked RNG, so the
    number is reproducible and the training stream is left untouched.
    """
    was_training = model.training
    model.eval()
    device = images.pixels.device
    devices = [device] if device.type == "cuda" else []
    total = torch.zeros((), device=device)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for x in images.batches(batch_size):
            total += model.elbo(x).sum()
    model.train(was_training)
    return total.item() / len(images)


@torch.no_grad()
def model_scores(model, images: ImageBatches, batch_size=1000) -> dict:
    """Returns the model's own per-epoch scores on `images` (AIR: count accuracy), or {}."""
    counts = getattr(images, "counts", None)
    if not hasattr(model, "scores") or counts is None:
        return {}
    was_training = model.training
    model.eval()
    scores = model.scores(images.batches(batch_size), counts)
    model.train(was_training)
    return scores


def make_optimizer(model, config: Config) -> torch.optim.Optimizer:
    """Returns Adam over `model`'s parameters with the config's rate, betas and epsilon.

    A model with baselines (AIR) trains them in a second group at
    ``config.baseline_lr``. The fused kernel updates every parameter in one
    pass: 0.49 ms a step for the pyro-tutorial network on the 2-core CPU
    against 2.10 ms for the default per-parameter loop (benchmarks/results/README.md).
    """
    if hasattr(model, "baseline_parameters"):
        groups = [
            {"params": model.inference_parameters(), "lr": config.lr, "base_lr": config.lr},
            {"params": model.baseline_parameters(), "lr": config.baseline_lr, "base_lr": config.baseline_lr},
        ]
    else:
        groups = [{"params": list(model.parameters()), "lr": config.lr, "base_lr": config.lr}]
    return torch.optim.Adam(groups, betas=tuple(config.adam_betas), eps=config.adam_eps, fused=True)


def start_epoch(model, optimizer, config: Config, epoch: int) -> None:
    """Sets what changes from epoch to epoch: learning rates, and the model's own schedule."""
    factor = learning_rate(config, epoch) / config.lr
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    if hasattr(model, "start_epoch"):
        model.start_epoch(config, epoch)


class EpochResult(NamedTuple):
    """What an epoch of steps gave: its mean train ELBO and seconds, or where it stopped."""

    train_elbo: float
    seconds: float
    stopped_at: dict | None = None  # {"epoch", "step", "loss_total", "seen", "seconds"} if interrupted


def train_epoch(
    loss_fn,
    optimizer,
    images,
    config,
    epoch,
    progress=True,
    world: World | None = None,
    position: dict | None = None,
    should_stop=lambda: False,
) -> EpochResult:
    """Runs one epoch of steps from `position` (the start if None); returns an EpochResult.

    `loss_fn(x)` gives the summed -ELBO of a batch. Under torchrun each rank
    trains on its shard of every global batch (see vaelab.distributed).
    `should_stop()` is asked before each step; when it says so, the epoch stops
    there and the result says where, so a checkpoint can continue it exactly.
    """
    world = world or distributed.ALONE
    device = images.pixels.device
    order = images.epoch_order(config.seed, epoch)
    n, batch_size = len(images), config.batch_size
    steps = (n + batch_size - 1) // batch_size
    position = position or {"step": 0, "loss_total": 0.0, "seen": 0, "seconds": 0.0}
    # This rank's summed loss, kept on the device and read once per log interval.
    total = torch.tensor(position["loss_total"], device=device)
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
                "seen": seen,
                "seconds": time.perf_counter() - start,
            }
            return EpochResult(math.nan, stopped["seconds"], stopped)
        x = images.batch(world.shard(order[step * batch_size : (step + 1) * batch_size]))
        loss = loss_fn(x)
        optimizer.zero_grad(set_to_none=True)
        # Scaled so that DDP's gradient average is the gradient of the global batch's sum.
        (loss * world.size if world.size > 1 else loss).backward()
        if config.clip_grad is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad, foreach=True)
        optimizer.step()
        total += loss.detach()
        seen += len(x)
        if (step + 1) % config.log_interval == 0 or step + 1 == steps:
            running = total.item()  # the one host read per logging interval
            if not math.isfinite(running):
                raise Diverged(epoch, step + 1, running)
            bar.set_postfix(loss=f"{running / seen:.2f}")
        bar.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    return EpochResult(-world.sum(total).item() / n, seconds)


class Diverged(VaelabError):
    """The loss became NaN or infinite; found at the first logging interval after it happened."""

    def __init__(self, epoch, step, value):
        super().__init__(
            f"epoch {epoch}, step {step}: the loss became {value}; the last good checkpoint is kept; "
            "try a lower --lr, --clip-grad, or --detect-anomaly to find the operation"
        )


class Interrupted(VaelabError):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint; `signum` says which."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class _SignalCatcher:
    """Turns SIGINT/SIGTERM into a request to stop at the next step (a second Ctrl-C quits at once)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                # A signal the user chose to ignore (nohup ignores SIGINT) stays ignored.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


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
    candidate = from_json({**values, **overrides}, "command line").to_dict()
    differing = sorted(k for k in values if values[k] != candidate[k] and k not in RESUMABLE)
    if differing:
        listed = ", ".join(f"{k} ({values[k]!r} -> {candidate[k]!r})" for k in differing)
        raise ConfigError(f"--resume: {run_dir} was trained with other settings: {listed}")
    return from_json(candidate, "command line")


def train(config: Config, run_dir, resume=False, progress=True, echo=print, download=False) -> Path:
    """Trains `config` into `run_dir` (or continues it when `resume`); returns the run dir.

    `download` allows fetching the dataset when no local source has it. Under
    torchrun, every process calls this; rank 0 alone reads and writes the run
    directory and prints.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    world = distributed.setup(config.device)
    if not world.is_main:
        progress, echo = False, (lambda line: None)
    ckpt = None
    if world.is_main:
        if resume:
            ckpt = checkpoint.load(ckpt_path)
        elif (run_dir / "config.json").exists() or ckpt_path.exists():
            raise CheckpointError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        _check_writable(run_dir)
    ckpt = world.broadcast(ckpt)

    device = pick_device(config.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    checkpoint.seed_all(config.seed)
    clear_param_store()
    train_data, test_data = load_datasets(config, device, download)
    model_args = config.model_args(train_data.x_dim)
    model = build_model(config.model, **model_args).to(device)
    if world.rank > 0:  # same initial weights on every rank, then a stream of its own
        torch.manual_seed(distributed.rank_seed(config.seed, world.rank))
    optimizer = make_optimizer(model, config)
    objective = make_objective(config.backend, config.elbo)
    loss_fn = distributed.LossModule(model, objective)
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, device_ids=ids)

    metrics, first_epoch, position = [], 1, None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{ckpt_path}: does not fit this model ({first})") from None
        checkpoint.set_rng_state(ckpt["rng"])
        rank_rng = ckpt.get("rank_rng")
        if rank_rng is not None and len(rank_rng) == world.size:
            torch.set_rng_state(rank_rng[world.rank])
        first_epoch = ckpt["epoch"] + 1
        position = ckpt.get("position")
        if world.is_main:
            # Lines past the checkpoint's epoch were written by a run that died
            # before its checkpoint; those epochs are trained again.
            metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m["epoch"] <= ckpt["epoch"]]
    if world.is_main:
        write_json(run_dir / "config.json", config.to_dict())

    def save(epoch, rank_rng, position=None):
        checkpoint.save(
            ckpt_path,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            model_name=config.model,
            model_args=model_args,
            epoch=epoch,
            rng=checkpoint.rng_state(),
            rank_rng=rank_rng if world.size > 1 else None,
            position=position,
        )

    # Under torchrun the ranks could stop at different steps, so only a lone
    # process stops mid-epoch; a distributed run resumes from its last epoch.
    catcher = _SignalCatcher() if world.size == 1 else contextlib.nullcontext(lambda: False)
    with catcher as should_stop:
        for epoch in range(first_epoch, config.epochs + 1):
            start_epoch(model, optimizer, config, epoch)
            start_at = position if position is not None and position["epoch"] == epoch else None
            result = train_epoch(
                loss_fn, optimizer, train_data, config, epoch, progress, world, start_at, should_stop
            )
            if result.stopped_at is not None:
                save(epoch - 1, None, result.stopped_at)
                step = result.stopped_at["step"]
                echo(f"interrupted in epoch {epoch} before step {step + 1}; checkpoint written.")
                echo(f"resume with: vaelab train --resume --out {run_dir}")
                raise Interrupted(f"interrupted by signal {catcher.signum}", catcher.signum)
            train_elbo, seconds = result.train_elbo, result.seconds
            rank_rng = world.gather(torch.get_rng_state())
            if world.is_main:
                test_elbo = dataset_elbo(model, test_data, config.eval_batch_size, seed=config.seed)
                metrics.append(
                    {
                        "epoch": epoch,
                        "train_elbo": train_elbo,
                        "test_elbo": test_elbo,
                        "train_seconds": seconds,
                        **model_scores(model, test_data, config.eval_batch_size),
                    }
                )
                write_jsonl(run_dir / "metrics.jsonl", metrics)
                save(epoch, rank_rng)
                extra = "".join(
                    f"  {k.replace('_', ' ')} {v:.4f}" for k, v in metrics[-1].items() if k not in _LOGGED
                )
                echo(
                    f"epoch {epoch:3d}/{config.epochs}  train ELBO {train_elbo:9.3f}  "
                    f"test ELBO {test_elbo:9.3f}{extra}  ({seconds:.1f} s)"
                )
            world.barrier()
    return run_dir
