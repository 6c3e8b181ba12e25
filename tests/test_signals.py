"""Every command stops on the first Ctrl-C or SIGTERM, with its exit code and no temporary file left."""

import signal
import subprocess
import sys
import time

import pytest

from vaelab.cli import main

TINY = "--dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress".split()


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run


def _default_signals():
    """In the child: SIGINT and SIGTERM as a terminal's Ctrl-C finds them, whatever started pytest.

    A shell's background job (nohup, `cmd &`) starts with SIGINT ignored, and a
    child inherits that: Python then installs no KeyboardInterrupt at all.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stopped(command, signum, after: float):
    """Starts `command`, signals it after `after` s; returns (exit code, stderr, seconds to stop)."""
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals
    ) as process:
        time.sleep(after)
        assert process.poll() is None, "ended before the signal"
        sent = time.perf_counter()
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        return process.returncode, err, time.perf_counter() - sent


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_long_evaluation_stops_at_once_and_leaves_no_temporary_file(run_dir, signum, code, word):
    command = [
        sys.executable,
        "-m",
        "vaelab",
        "evaluate",
        str(run_dir),
        "--iw-samples",
        "2000000",
        "--no-progress",
    ]
    returncode, err, seconds = _stopped(command, signum, after=4.0)
    assert returncode == code and f"vaelab: {word}" in err and "Traceback" not in err
    assert seconds < 5  # measured: well under a second
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("signum", "code", "after"),
    [(signal.SIGINT, 130, 0.3), (signal.SIGINT, 130, 1.0), (signal.SIGTERM, 143, 0.6)],
)
def test_a_signal_while_the_command_is_still_importing_is_its_exit_code_without_a_traceback(
    run_dir, signum, code, after
):
    # Importing torch and matplotlib takes over a second. A Ctrl-C inside a C
    # extension's start once gave a fatal error (exit -6) or a death by SIGINT (-2).
    command = [sys.executable, "-m", "vaelab", "evaluate", str(run_dir), "--no-progress"]
    returncode, err, _ = _stopped(command, signum, after=after)
    assert returncode == code and "Traceback" not in err and "Fatal" not in err, err


@pytest.mark.parametrize("command", ["report", "plot"])
def test_sigterm_while_a_file_is_being_written_leaves_no_temporary_file(run_dir, monkeypatch, command):
    import os

    real_fsync = os.fsync

    def terminated_mid_write(fd):
        real_fsync(fd)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the write, before the rename

    monkeypatch.setattr("vaelab.fileio.os.fsync", terminated_mid_write)
    assert main([command, str(run_dir), "--tsne-points", "50"]) == 143
    left = [p.name for p in run_dir.rglob(".*.tmp")]
    assert not left, left
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was
