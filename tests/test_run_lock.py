"""One writer per run directory; a run that stopped before its first checkpoint starts again."""

import os
import subprocess
import sys
import time

import pytest

from vaelab.cli import main
from vaelab.config import resolve
from vaelab.errors import CheckpointError
from vaelab.runlock import RunLock
from vaelab.train import Diverged, train

TINY = "--dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress --no-plots".split()
QUIET = dict(progress=False, echo=lambda s: None)


def _config(**overrides):
    values = dict(dataset="digits", z_dim=3, hidden=(16,), batch_size=64, epochs=1, device="cpu")
    return resolve(overrides={**values, **overrides})


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(CheckpointError, match=rf"is being trained by process {os.getpid()}; wait"):
            train(_config(), run, **QUIET)
        with pytest.raises(CheckpointError, match="is being trained by process"):
            train(_config(), run, resume=True, **QUIET)
    assert not (run / "checkpoint.pt").exists() and not (run / ".lock").exists()
    train(_config(), run, **QUIET)  # free again once the holder is done
    assert (run / "checkpoint.pt").exists()


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    holder = (
        "import sys, time\nfrom vaelab.runlock import RunLock\n"
        "with RunLock(sys.argv[1]): print('held', flush=True); time.sleep(60)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(run)], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=f"process {process.pid}"):
            train(_config(), run, **QUIET)
        process.kill()
        process.wait()
    assert (run / ".lock").exists()  # left behind by the killed process
    train(_config(), run, **QUIET)


def test_two_trainings_started_together_leave_one_whole_run(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "vaelab", "train", *TINY, "--epochs", "3", "--out", str(run)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.run(command, capture_output=True, text=True)
    _, first_err = first.communicate(timeout=120)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 1], (first.returncode, second.returncode, first_err, second.stderr)
    loser = second.stderr if second.returncode else first_err
    assert ("is being trained by process" in loser or "already holds a run" in loser) and loser.count(
        "\n"
    ) == 1
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 3


def test_a_run_that_stopped_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(Diverged, match="no checkpoint had been written yet"):
        train(_config(lr=1e6), run, **QUIET)
    assert (run / "config.json").exists() and not (run / "checkpoint.pt").exists()
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    assert "has no checkpoint yet" in capsys.readouterr().out
    (run / "checkpoint.pt").unlink()
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--no-plots"]) == 0
    assert "starting afresh" in capsys.readouterr().out and (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_number_that_is_not_finite_is_refused(value, capsys, tmp_path):
    assert main(["train", *TINY, f"--lr={value}", "--out", str(tmp_path / "r")]) == 1
    assert f"lr must be a finite number, got {float(value)}" in capsys.readouterr().err
