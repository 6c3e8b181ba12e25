"""Nothing is lost: failed writes leave the previous file, bad files get one clear line."""

import errno

import pytest
import torch
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vaelab.checkpoint
from vaelab.cli import main
from vaelab.config import from_mapping, load_yaml, resolve
from vaelab.errors import CheckpointError, ConfigError
from vaelab.fileio import write_bytes

TINY = "--dataset digits --z-dim 3 --hidden 16 --batch-size 128 --device cpu --no-progress --no-plots".split()


@pytest.fixture
def run(tmp_path):
    """A one-epoch run directory on digits."""
    path = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(path)]) == 0
    return path


def _half_then(error):
    def failing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise error

    return failing_save


@pytest.mark.parametrize(
    "error,message",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (RuntimeError("the writer broke"), "the writer broke"),
    ],
)
def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_one(
    run, monkeypatch, capsys, error, message
):
    before = (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(vaelab.checkpoint.torch, "save", _half_then(error))
    capsys.readouterr()
    if isinstance(error, OSError):
        assert (
            main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress", "--no-plots"])
            == 1
        )
        err = capsys.readouterr().err
        assert err.strip() == f"vaelab: error: {run / 'checkpoint.pt'}: {message}"
    else:  # torch's writer raises RuntimeError on a full disk: one line too, naming the checkpoint
        assert (
            main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress", "--no-plots"])
            == 1
        )
        err = capsys.readouterr().err
        assert f"{run / 'checkpoint.pt'}: cannot write the checkpoint ({message}); the previous one" in err
        assert err.count("\n") == 1 and ".tmp" not in err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def test_a_failed_write_of_any_file_leaves_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    write_bytes(target, b'{"old": true}')

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vaelab.fileio.os.replace", broken_replace)
    with pytest.raises(OSError, match="No space left on device") as raised:
        write_bytes(target, b'{"new": true}')
    assert raised.value.filename == str(target)
    assert target.read_bytes() == b'{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_a_truncated_checkpoint_is_named_and_nothing_loads(run, capsys):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: not a readable vaelab checkpoint"):
        vaelab.checkpoint.load(run / "checkpoint.pt")
    assert main(["evaluate", str(run), "--iw-samples", "2"]) == 1
    assert "checkpoint.pt: not a readable vaelab checkpoint" in capsys.readouterr().err


def test_a_checkpoint_from_a_newer_vaelab_is_refused(run):
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["format_version"] = vaelab.checkpoint.FORMAT_VERSION + 1
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"made by a newer vaelab \(format 2, this one reads up to 1\)"):
        vaelab.load_run(run)


def test_a_checkpoint_of_another_model_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *TINY, "--z-dim", "5", "--epochs", "1", "--out", str(other)]) == 0
    (run / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress", "--no-plots"]) == 1
    err = capsys.readouterr().err.strip()
    assert "checkpoint.pt: does not fit this model (size mismatch for " in err and err.count("\n") == 0
    assert "from checkpoint, the shape in current model is" in err  # both shapes, not a bare header
    assert main(["evaluate", str(run), "--iw-samples", "2"]) == 1  # not scored under this run's name
    err = capsys.readouterr().err.strip()
    assert err.endswith("checkpoint.pt: holds a model of other settings: z_dim 5 (config.json: 3)"), err
    assert not (run / "eval.json").exists()


def test_a_pickle_is_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format_version": 1, "x": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a readable vaelab checkpoint"):
        vaelab.checkpoint.load(tmp_path / "checkpoint.pt")


def test_clip_grad_bounds_the_adam_first_moment(tmp_path):
    for clip, out in ((None, "free"), (0.5, "clipped")):
        args = ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / out)]
        assert main(args + (["--clip-grad", str(clip)] if clip else [])) == 0
    norms = {}
    for out in ("free", "clipped"):
        state = torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
        norms[out] = torch.cat([s["exp_avg"].flatten() for s in state.values()]).norm().item()
    # exp_avg is a weighted mean of past gradients (weights < 1), so its norm is at most the clip.
    assert norms["clipped"] <= 0.5 + 1e-6 < norms["free"]


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_detect_anomaly_runs(tmp_path):
    assert main(["train", *TINY, "--epochs", "1", "--detect-anomaly", "--out", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--clip-grad", "0", "clip_grad must be positive, got 0.0"),
        ("--seed", str(2**70), "seed must be in [0, 2^32)"),
        ("--batch-size", "0", "batch_size must be at least 1, got 0"),
        ("--z-dim", "0", "z_dim must be at least 1, got 0"),
    ],
)
def test_out_of_range_numbers_are_refused_before_training(capsys, tmp_path, flag, value, message):
    assert main(["train", *TINY, flag, value, "--out", str(tmp_path / "r")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was written


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
@example(text="?")  # {None: None}: a key that is not a string
@example(text="1: 2\n0.5: 3\nlr: 1")  # keys of mixed types
def test_any_config_text_gives_fields_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        values = load_yaml(path)
    except ConfigError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert isinstance(values, dict)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["z_dim", "lr", "hidden", "backend", "adam_betas", "seed", "data_dir", "nope"]),
        st.one_of(scalars, st.lists(scalars, max_size=3)),
    )
)
def test_any_mapping_gives_a_valid_config_or_a_config_error(values):
    try:
        fields = from_mapping(values, "test")
        config = resolve(overrides=values)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert set(fields) == set(values)
    yaml.safe_dump(config.to_dict())  # a valid config is plain data


def test_kill_9_mid_run_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = [*TINY, "--epochs", "60", "--batch-size", "32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(
        [sys.executable, "-m", "vaelab", "train", *flags, "--out", str(straight)],
        env=env,
        check=True,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    with subprocess.Popen(
        [sys.executable, "-m", "vaelab", "train", *flags, "--out", str(killed)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        for line in process.stdout:  # wait until a few epochs are done, then kill without warning
            if line.startswith("epoch   3/"):
                break
        time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    done = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    assert 3 <= done < 60  # killed mid-run, with a whole checkpoint

    resume = [
        sys.executable,
        "-m",
        "vaelab",
        "train",
        "--resume",
        "--out",
        str(killed),
        "--no-progress",
        "--no-plots",
    ]
    subprocess.run(resume, env=env, check=True, capture_output=True)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    def metrics(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(m).items() if k != "train_seconds"} for m in lines]

    assert metrics(straight) == metrics(killed)
