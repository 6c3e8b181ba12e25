"""Commands given sizes that cannot work, odd devices and numbers, odd datasets: one line, or it works."""

import numpy as np
import pytest

import vaelab
from vaelab.cli import main

TINY = "--dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress".split()


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", *TINY, "--z-dim", "1000000000"], "z_dim must be at most 100000, got 1000000000"),
        (["train", *TINY, "--z-dim", "90000", "--hidden", "90000"], "weights: with their gradients and Adam"),
        (["train", *TINY, "--batch-size", "10000000"], "batch_size must be at most 1000000"),
        (["train", *TINY, "--hidden", "16,,8"], "hidden '16,,8' has an empty item"),
        (["train", *TINY, "--particles", "100000", "--elbo", "iwae"], "--particles 100000 with --batch-size"),
        (
            ["train", "--dataset", "digits", "--model", "air", "--max-steps", "9"],
            "max_steps must be at most 6",
        ),
        (
            ["data", "make", "multi-mnist", "--train-size", str(10**12)],
            "--train-size must be at most 10000000",
        ),
        (["data", "make", "multi-mnist", "--canvas", str(10**6)], "--canvas must be at most 1024"),
        (["data", "make", "multi-mnist", "--train-size", "5000000", "--canvas", "1000"], "of canvases"),
    ],
)
def test_sizes_that_cannot_work_are_refused_before_any_work(args, message, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "r")] if args[0] == "train" else args) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "{run}", "-n", str(10**10)], "-n must be from 1 to 10000"),
        (["sample", "{run}", "--seed", str(10**23)], "--seed must be in [0, 2^32)"),
        (["sample", "{run}", "--out", "grid.jpg"], "--out grid.jpg: the samples are a PNG picture"),
        (["evaluate", "{run}", "--device", "foo"], "device must be auto, cpu or cuda[:N], got 'foo'"),
        (["evaluate", "{run}", "--max-memory", "nan"], "--max-memory must be a size like 2G"),
        (["evaluate", "{run}", "--max-memory", "inf"], "--max-memory must be a size like 2G"),
    ],
)
def test_numbers_and_devices_that_cannot_work_are_one_line(run_dir, args, message, capsys):
    assert main([a.format(run=run_dir) for a in args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_non_square_images_train_sample_and_plot(tmp_path, capsys):
    path = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.random((200, 6, 10)), test_images=rng.random((1, 6, 10)))
    run = tmp_path / "run"
    flags = [
        "--dataset",
        f"npz:{path}",
        "--z-dim",
        "2",
        "--hidden",
        "8",
        "--batch-size",
        "50",
        "--device",
        "cpu",
    ]
    assert (
        main(["train", *flags, "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    )  # a 1-image test set
    assert "no latent map: 1 test image(s)" in capsys.readouterr().out
    assert vaelab.load_run(run).image_shape == (6, 10)
    assert main(["sample", str(run), "-n", "3"]) == 0


def test_the_starting_command_with_resume_added_continues_the_run(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("hidden: 16\nz_dim: 3\n")
    run = tmp_path / "run"
    start = ["train", "--preset", "pytorch-examples", "--config", str(config), "--dataset", "digits"]
    start += ["--device", "cpu", "--no-progress", "--no-plots", "--out", str(run)]
    assert main([*start, "--epochs", "1"]) == 0
    assert main([*start, "--epochs", "2", "--resume"]) == 0
    assert [m["epoch"] for m in vaelab.load_run(run).metrics] == [1, 2]
    capsys.readouterr()
    assert main([*start, "--epochs", "3", "--resume", "--lr", "0.01"]) == 1
    assert "was trained with other settings: lr (0.001 -> 0.01)" in capsys.readouterr().err


def test_tensorboard_without_its_package_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import now fails
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--tensorboard", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pip install 'vaelab[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_yes_or_no_setting_reads_words_and_refuses_others(tmp_path, capsys):
    from vaelab.config import resolve

    assert resolve(overrides={"tensorboard": "yes"}).tensorboard is True
    assert resolve(overrides={"tensorboard": "off"}).tensorboard is False
    config = tmp_path / "c.yaml"
    config.write_text("tensorboard: maybe\n")
    assert main(["train", *TINY, "--config", str(config), "--out", str(tmp_path / "r")]) == 1
    assert "tensorboard must be true or false, got 'maybe'" in capsys.readouterr().err


def test_a_data_dir_that_is_no_folder_is_refused_not_passed_over(tmp_path, capsys):
    """A misspelt --data-dir would otherwise fall through to the next source, silently."""
    gone = tmp_path / "nosuch"
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {gone}\n")
    for command, message in (
        (["train", *TINY, "--data-dir", str(gone), "--out", str(tmp_path / "a")], f"--data-dir {gone}: "),
        (
            ["train", *TINY, "--config", str(config), "--out", str(tmp_path / "b")],
            f"{config}: data_dir {gone}: ",
        ),
        (["data", "list", "--data-dir", str(gone)], f"--data-dir {gone}: "),
    ):
        assert main(command) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"vaelab: error: {message}no such folder", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no run directory begun
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0  # a folder without the files is fine


def test_an_out_that_is_a_file_is_named_as_one(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    for command in (
        ["train", *TINY, "--epochs", "1", "--out", str(file)],
        ["sweep", *TINY, "--epochs", "1", "--seeds", "0", "--out", str(file)],
        ["compare", str(tmp_path), "--out", str(file)],
    ):
        assert main(command) == 1
        assert capsys.readouterr().err.strip() == f"vaelab: error: --out {file}: a file, not a folder"
    assert file.read_text() == "mine"


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: -2\n", "epochs must be at least 1, got -2"),
        ("batch_size: 0\n", "batch_size must be at least 1, got 0"),
        ("model: vea\n", "unknown model 'vea'"),
        ("beta: -1\nmodel: beta-vae\n", "beta must be"),
    ],
)
def test_a_value_out_of_range_in_a_config_file_names_the_file(tmp_path, capsys, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["train", *TINY, "--config", str(config), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vaelab: error: {config}: {message}") and "\n" not in err, err
    assert main(["train", *TINY, "--epochs", "-2", "--out", str(tmp_path / "run")]) == 1  # a flag: no file
    assert capsys.readouterr().err.strip() == "vaelab: error: epochs must be at least 1, got -2"
    assert not (tmp_path / "run").exists()


def test_a_run_config_json_out_of_range_names_the_file(tmp_path, capsys, tiny_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    saved = (run / "config.json").read_text()
    (run / "config.json").write_text(saved.replace('"batch_size": 128', '"batch_size": -5'))
    assert '"batch_size": -5' in (run / "config.json").read_text()
    assert main(["evaluate", str(run), "--iw-samples", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"vaelab: error: {run / 'config.json'}: batch_size must be at least 1, got -5", err


def test_a_list_setting_may_end_in_a_comma_as_a_python_tuple_does():
    from vaelab.config import resolve

    assert resolve(overrides={"hidden": "16,"}).hidden == (16,)
    assert resolve(overrides={"hidden": "16, 8"}).hidden == (16, 8)
