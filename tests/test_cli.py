"""One smoke run of every command, and the one-line errors a user meets."""

import subprocess
import sys

import pytest
from PIL import Image

from vaelab.cli import main

TINY = "--dataset digits --z-dim 3 --hidden 16 --batch-size 128 --device cpu --no-progress".split()


def test_train_resume_and_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *TINY,
                "--epochs",
                "1",
                "--backend",
                "pyro",
                "--elbo",
                "meanfield",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and f"report: {run / 'report.html'}" in out
    assert (run / "plots" / "samples.png").exists()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress", "--no-plots"]) == 0
    assert "epoch   2/2" in capsys.readouterr().out
    drawn = (run / "plots" / "samples.png").read_bytes()
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert (run / "samples-4-seed0.png").exists()
    assert (run / "plots" / "samples.png").read_bytes() == drawn  # the report's picture is left alone
    assert main(["sample", str(run), "-n", "6", "--out", str(tmp_path / "s.png")]) == 0
    with Image.open(tmp_path / "s.png") as picture:
        size = picture.size
    # 6 samples in a 3×2 grid of 8×8 images 2 pixels apart, drawn at 2×.
    assert size == (2 * (3 * 10 + 2), 2 * (2 * 10 + 2))


def test_flags_override_the_config_file_which_overrides_the_preset(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("z_dim: 7\nbatch_size: 100\nepochs: 1\n")
    run = tmp_path / "run"
    args = [
        "train",
        "--no-plots",
        "--preset",
        "pyro-tutorial",
        "--config",
        str(config),
        "--batch-size",
        "64",
        "--dataset",
        "digits",
        "--hidden",
        "16",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(run),
    ]
    assert main(args) == 0
    import vaelab

    saved = vaelab.load_run(run).config
    assert (saved.z_dim, saved.batch_size, saved.activation, saved.epochs) == (7, 64, "softplus", 1)


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--dataset", "cifar"], "unknown dataset 'cifar'; choose one of: mnist"),
        (["train", "--backend", "jax"], "unknown backend 'jax'; choose one of: torch, pyro"),
        (["train", "--backend", "pyro", "--elbo", "renyi"], "unknown elbo 'renyi'"),
        (["train", "--particles", "0"], "particles must be at least 1, got 0"),
        (["train", "--model", "air", "--elbo", "dreg"], "--elbo dreg: an importance-weighted bound"),
        (
            ["train", "--preset", "nope"],
            "unknown preset 'nope'; choose one of: air, burda-1layer-iwae-k1, ",
        ),
        (["train", "--lr", "0"], "lr must be positive, got 0.0"),
        (["train", "--epochs", "0"], "epochs must be at least 1, got 0"),
        (["train", "--resume", "--out", "no-such-run"], "no-such-run is not a run directory"),
        (["sample", "no-such-run"], "no-such-run: no such run directory"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_1(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_yaml_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("z_dim: [1\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert f"{bad}: not valid YAML" in capsys.readouterr().err
    bad.write_text("z_dimm: 3\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert f"{bad}: unknown key(s) z_dimm" in capsys.readouterr().err
    bad.write_text("z_dim: three\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert f"{bad}: z_dim must be int, got 'three'" in capsys.readouterr().err


def test_a_checkpoint_that_is_not_one_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--no-plots", "--epochs", "1", "--out", str(run)]) == 0
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["sample", str(run)]) == 1
    assert "checkpoint.pt: not a readable vaelab checkpoint" in capsys.readouterr().err


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["mnist", "fashion-mnist", "digits", "multi-mnist"]


def test_python_dash_m_and_the_console_script_answer_help():
    result = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--resume" in result.stdout and "--preset" in result.stdout
