"""Several starts of one seed, the best one trained on: ``vaelab train --restarts K --restart-epochs E``.

Some objectives have local optima that a run falls into in its first epochs
and never leaves. AIR's count of objects is the known case: the same preset
succeeds from some seeds and not from others (a digit split over two
windows, or three windows kept on two digits), and the runs that fail end
with a lower ELBO. Random restarts judged by the objective itself (no labels,
no test data) are the classical remedy: train K starts of the seed for E
epochs each, keep the one whose last epoch's training objective is highest,
and train it on to --epochs.

Each start is a run directory of its own, RUN/starts/start-I: the run
``vaelab train --seed S --start I --epochs E`` would write (start 0 is the
seed's own run; start I draws its weights, noise and batch order from
another seed, :func:`vaelab.config.run_seed`, on the same data). The chosen
start's checkpoint and metrics become RUN's, RUN/config.json records
``start: I``, and RUN/starts.json what every start reached. So the run is
exactly the chosen start trained for --epochs alone, and a phase that was
interrupted continues start by start with ``--resume``.
"""

import dataclasses
import math
import os
import shutil
from pathlib import Path

from vaelab import checkpoint
from vaelab.config import Config, run_config_json
from vaelab.errors import CheckpointError, ConfigError, VaelabError
from vaelab.fileio import atomic_path, read_json, write_json
from vaelab.records import read_metrics
from vaelab.runlock import LOCK_NAME
from vaelab.stopping import Diverged, Interrupted

STARTS_FILE = "starts.json"


def refusal(config: Config) -> str | None:
    """Why a new run of `config` cannot start, or None: a start named and --restarts to choose one."""
    if config.restarts > 1 and config.start:
        return f"--start {config.start}: --restarts {config.restarts} chooses the start; give one"
    return None


def begun(config: Config, run_dir) -> list:
    """The starts of `config` that RUN already holds a checkpoint of."""
    return [i for i in range(config.restarts) if (start_dir(run_dir, i) / "checkpoint.pt").exists()]


def start_dir(run_dir, start: int) -> Path:
    return Path(run_dir) / "starts" / f"start-{start}"


def lone_start_to_compare(config: Config, run_dir) -> bool:
    """True if RUN holds the seed's own start trained alone, and `config` now gives the starts a choice.

    A first command of no more --epochs than --restart-epochs trains start 0
    in RUN alone (nothing to choose before its end). Resumed to more epochs,
    the run is to be what a run of those epochs from the first would be: its
    starts compared after --restart-epochs, the best trained on
    (:func:`adopt_lone_start` makes RUN's own run start 0 for that).
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoint.pt"
    if config.restarts <= 1 or config.epochs <= config.restart_epochs or not path.exists():
        return False
    if (run_dir / STARTS_FILE).exists() or begun(config, run_dir):
        return False
    ckpt = checkpoint.load(path, mmap=True)
    position = ckpt.get("position")  # an epoch begun past the starts' is the lone run's own (an old run)
    return ckpt["epoch"] <= config.restart_epochs and (
        position is None or position["epoch"] <= config.restart_epochs
    )


def adopt_lone_start(config: Config, run_dir, echo=print) -> None:
    """Moves RUN's own run (start 0, trained alone) to RUN/starts/start-0, losing nothing if stopped.

    Everything the lone run wrote goes (its metrics, pictures, report,
    evaluation, TensorBoard log), RUN keeping its config.json and lock; the
    checkpoint goes last: until it has moved, RUN is still the lone run, and
    moving again takes what is left. Called under RUN's lock, it checks
    again that RUN is still that run (another process may have moved it
    since the command began).
    """
    run_dir = Path(run_dir)
    if not lone_start_to_compare(config, run_dir):
        raise CheckpointError(f"{run_dir} changed while this command started; give it again")
    where = start_dir(run_dir, 0)
    where.mkdir(parents=True, exist_ok=True)
    start = dataclasses.replace(config, restarts=1, start=0, epochs=config.restart_epochs, tensorboard=False)
    write_json(where / "config.json", run_config_json(start))
    staying = {"config.json", "checkpoint.pt", "starts", LOCK_NAME}
    for path in sorted(run_dir.iterdir()):
        if path.name not in staying and not (where / path.name).exists():
            os.replace(path, where / path.name)
    os.replace(run_dir / "checkpoint.pt", where / "checkpoint.pt")
    echo(
        f"--restarts {config.restarts}: --epochs {config.epochs} is more than --restart-epochs "
        f"{config.restart_epochs}: the seed's own start, trained alone so far, is start 0 of {where.parent}"
    )


def _reached(run_dir: Path, epochs: int) -> dict | None:
    """Epoch `epochs`' metrics of a start whose checkpoint is at that epoch, else None (not there yet)."""
    path = run_dir / "checkpoint.pt"
    if not path.exists() or checkpoint.load(path, mmap=True)["epoch"] != epochs:
        return None
    lines = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["epoch"] == epochs]
    return lines[-1] if lines else None


def read_starts(run_dir) -> dict | None:
    """RUN/starts.json, checked; None for a run without one. Raises CheckpointError naming the file."""
    path = Path(run_dir) / STARTS_FILE
    try:
        record = read_json(path, default=None)
    except CheckpointError:
        raise CheckpointError(f"{path}: not valid JSON; train the run's starts again") from None
    if record is None:
        return None
    starts = record.get("starts")
    rows_ok = isinstance(starts, list) and all(
        isinstance(r, dict)
        and isinstance(r.get("start"), int)
        and (r.get("objective") is None or isinstance(r.get("objective"), (int, float)))
        for r in starts
    )
    if not rows_ok or not isinstance(record.get("chosen"), int):
        raise CheckpointError(f"{path}: not a record of starts (a list of starts and the one chosen)")
    return record


def passed_over_seconds(run_dir) -> float:
    """The training seconds of the starts RUN did not go on with (0 for a run without --restarts)."""
    record = read_starts(run_dir)
    if record is None:
        return 0.0
    seconds = 0.0
    for row in record["starts"]:
        path = start_dir(run_dir, row["start"]) / "metrics.jsonl"
        if row["start"] != record["chosen"] and path.exists():
            try:
                seconds += sum(m["train_seconds"] for m in read_metrics(path))
            except VaelabError:  # a start's unreadable metrics: its time is not known, the run's still is
                continue
    return seconds


def objective(line: dict) -> float:
    """What training maximised, as the epoch's metrics give it: the train objective, else the train ELBO."""
    return line.get("train_objective", line["train_elbo"])


def choose_start(
    config: Config,
    run_dir,
    resume: bool,
    progress=True,
    echo=print,
    download=False,
    data=None,
    resume_hint=True,
) -> Config:
    """Trains `config`'s starts not yet trained, makes the best one RUN's run; returns RUN's config.

    Refuses (CheckpointError) starts already trained unless `resume`. A
    start whose loss becomes NaN is passed over; if every start does, raises.
    The returned config is `config` with the chosen ``start``; RUN then holds
    that start's checkpoint at its last epoch, for :func:`vaelab.train.train`
    to continue. `data`: the Datasets, shared by the starts.
    `resume_hint`: an interruption echoes the command that continues the
    run (a start's own would name the start, so the starts give none).
    """
    from vaelab.train import train

    run_dir = Path(run_dir)
    trained = begun(config, run_dir)
    if trained and not resume:
        raise CheckpointError(
            f"{run_dir} already holds the starts of a run ({start_dir(run_dir, trained[0])}); "
            "pass --resume to continue them or choose another --out"
        )
    if config.epochs <= config.restart_epochs:
        raise ConfigError(
            f"--epochs {config.epochs}: the run's starts are compared after --restart-epochs "
            f"{config.restart_epochs}; give more epochs"
        )
    # RUN/config.json first, so that `vaelab train --resume --out RUN` finds the run during its starts.
    write_json(run_dir / "config.json", run_config_json(config))
    epochs = config.restart_epochs
    rows = []
    for i in range(config.restarts):
        start = dataclasses.replace(config, restarts=1, start=i, epochs=epochs, tensorboard=False)
        where = start_dir(run_dir, i)
        line = _reached(where, epochs)
        problem = None
        if line is None:
            again = (where / "checkpoint.pt").exists()
            echo(f"start {i} (of 0-{config.restarts - 1}; training seed {start.run_seed}): {where}")
            try:
                train(start, where, again, progress, echo, download, data, resume_hint=False)
                line = _reached(where, epochs)
            except Diverged as e:
                problem = str(e)
                echo(f"start {i}: error: {e}")
            except Interrupted:
                if resume_hint:
                    echo(f"continue the run's starts with: vaelab train --resume --out {run_dir}")
                raise
        value = objective(line) if line is not None else None
        if value is not None and not math.isfinite(value):
            value, problem = None, f"its training objective is {value}"
        rows.append({"start": i, "training_seed": start.run_seed, "objective": value, "problem": problem}
                    | ({} if line is None else {"metrics": line}))  # fmt: skip
    scored = [r for r in rows if r["objective"] is not None]
    if not scored:
        raise VaelabError(f"{run_dir}: all {config.restarts} starts diverged; none to go on from")
    best = max(scored, key=lambda r: r["objective"])  # the first of equals
    chosen = dataclasses.replace(config, start=best["start"])
    echo(
        f"starts after {epochs} epoch(s), training objective: "
        + ", ".join("diverged" if r["objective"] is None else f"{r['objective']:.3f}" for r in rows)
        + f"; start {best['start']} goes on"
    )
    source = start_dir(run_dir, best["start"])
    # The record and RUN's config before the checkpoint: a checkpoint in RUN means the choice is made.
    write_json(run_dir / STARTS_FILE, {"restart_epochs": epochs, "chosen": best["start"], "starts": rows})
    write_json(run_dir / "config.json", run_config_json(chosen))
    for name in ("metrics.jsonl", "checkpoint.pt"):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(source / name, tmp)
    return chosen
