"""`--tensorboard`: RUN/tensorboard/ read back with TensorBoard's own reader, against metrics.jsonl."""

import json

import pytest
import torch

from vaelab import checkpoint
from vaelab.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = "--model vae --dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress --no-plots".split()


def board(run):
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_the_board_holds_every_epoch_once_and_resume_appends(tmp_path):
    run = tmp_path / "run"
    flags = ["--epochs", "2", "--tensorboard", "--lr", "0.002", "--validation", "200"]
    assert main(["train", *TINY, *flags, "--out", str(run)]) == 0
    assert main(["train", "--resume", "--out", str(run), "--epochs", "4", "--no-progress", "--no-plots"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = board(run)
    assert "scores/val_elbo" not in events.Tags()["scalars"]  # a curve beside the others, not a score
    for tag in ("train_elbo", "test_elbo", "val_elbo", "seconds"):
        key = "train_seconds" if tag == "seconds" else tag
        got = scalars(events, tag)
        assert [s for s, _ in got] == [1, 2, 3, 4]
        assert [v for _, v in got] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    assert [v for _, v in scalars(events, "learning_rate")] == pytest.approx([0.002] * 4)
    images = events.Tags()["images"]
    assert {"reconstructions", "samples"} <= set(images)
    assert [e.step for e in events.Images("reconstructions")] == [1, 2, 3, 4]
    picture = events.Images("samples")[-1]
    assert (picture.height, picture.width) == (2 * 9, 8 * 9)  # 16 draws of 8×8, in two rows, spaced


def test_a_resumed_run_purges_what_a_killed_one_logged_past_its_checkpoint(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--tensorboard", "--out", str(run)]) == 0
    with SummaryWriter(str(run / "tensorboard")) as stale:  # epoch 3 logged, then the process died
        stale.add_scalar("test_elbo", 123.0, 3)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3", "--no-progress", "--no-plots"]) == 0
    got = scalars(board(run), "test_elbo")
    assert [s for s, _ in got] == [1, 2, 3] and got[-1][1] != 123.0


def test_the_board_changes_nothing_in_the_run_and_scores_are_logged(tmp_path):
    plain, logged = tmp_path / "plain", tmp_path / "logged"
    args = ["--model", "cvae", "--dataset", "digits", "--z-dim", "2", "--hidden", "8", "--epochs", "2"]
    args += ["--device", "cpu", "--no-progress", "--no-plots"]
    assert main(["train", *args, "--out", str(plain)]) == 0
    assert main(["train", *args, "--tensorboard", "--out", str(logged)]) == 0
    a, b = (checkpoint.load(r / "checkpoint.pt")["model"] for r in (plain, logged))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (plain / "tensorboard").exists()


def test_m2_scores_reach_the_board(tmp_path):
    run = tmp_path / "m2"
    args = ["--model", "m2", "--dataset", "digits", "--labelled", "50", "--z-dim", "2", "--hidden", "8"]
    assert (
        main(
            [
                "train",
                *args,
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--tensorboard",
                *TINY[4:],
                "--out",
                str(run),
            ]
        )
        == 0
    )
    accuracy = json.loads((run / "metrics.jsonl").read_text())["classifier_accuracy"]
    assert scalars(board(run), "scores/classifier_accuracy") == [(1, pytest.approx(accuracy))]


def test_a_lone_start_resumed_into_its_starts_takes_its_board_with_it(tmp_path):
    """A --restarts run too short to choose logs its own start; once its starts are compared, RUN's
    board is the chosen start's from after the starts, as the one-command run's is."""
    args = [*TINY, "--seed", "2", "--restarts", "2", "--restart-epochs", "2", "--tensorboard"]
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["train", *args, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", *args, "--epochs", "3", "--resume", "--out", str(run)]) == 0
    assert main(["train", *args, "--epochs", "3", "--out", str(whole)]) == 0
    assert scalars(board(run), "train_elbo") == scalars(board(whole), "train_elbo")
    assert [s for s, _ in scalars(board(run), "train_elbo")] == [3]
    assert [s for s, _ in scalars(board(run / "starts" / "start-0"), "train_elbo")] == [1]
