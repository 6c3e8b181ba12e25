"""A validation split (--validation N) and the completion CVAE's early-stopped baseline.

The split is the training split's last N images, never trained on, scored
each epoch; the baseline stops on it (never on the test set), keeps its best
epoch's weights, and a run resumed across the stop, alone or under torchrun,
is the run trained straight through.
"""

import json
import math

import pytest
import torch

from vaelab.cli import main
from vaelab.config import resolve
from vaelab.fileio import read_jsonl
from vaelab.models import build_model
from vaelab.models.base import dataset_elbo
from vaelab.train import build_state, load_datasets, train

DIGITS = dict(dataset="digits", z_dim=3, hidden=(16,), batch_size=64, epochs=1, device="cpu")
QUIET = dict(progress=False, echo=lambda line: None)


@pytest.mark.parametrize("binarize", ["none", "dynamic", "static"])
def test_the_validation_images_are_the_training_splits_last_and_never_trained_on(binarize):
    everything = load_datasets(resolve(overrides={**DIGITS, "binarize": binarize}), "cpu")
    state = build_state(resolve(overrides={**DIGITS, "binarize": binarize, "validation": 300}))
    full = everything.train.pixels  # a static run's are its own seed's draw, the same with a split
    assert torch.equal(state.train_data.pixels, full[:-300])
    assert len(state.val_data) == 300 and everything.validation is None
    order = state.model.training_order(state.train_data.epoch_order(0, 1), None, state.config, 1)
    assert sorted(order.tolist()) == list(range(len(full) - 300))  # an epoch visits the rest, once each
    assert state.val_data.pixels.untyped_storage().nbytes() == state.val_data.pixels.nbytes  # its own copy
    if binarize == "none":
        assert torch.equal(state.val_data.pixels, full[-300:])
    else:  # one draw, the same for every seed: each epoch scores the same images
        assert not state.val_data.dynamic
        other = {**DIGITS, "binarize": binarize, "validation": 300, "seed": 5}
        other_seed = build_state(resolve(overrides=other))
        assert torch.equal(state.val_data.pixels, other_seed.val_data.pixels)
        assert set(state.val_data.pixels.unique().tolist()) <= {0, 255}
        grey = load_datasets(resolve(overrides=DIGITS), "cpu").train.pixels[-300:]
        assert ((state.val_data.pixels == 255) == (grey > 0)).float().mean() < 1  # a draw, not a threshold


@pytest.mark.parametrize("binarize", ["none", "static"])
def test_each_epoch_logs_the_validation_elbo_that_evaluate_gives(tmp_path, capsys, binarize):
    config = resolve(overrides={**DIGITS, "validation": 200, "epochs": 2, "binarize": binarize})
    run = train(config, tmp_path / "run", **QUIET)
    lines = read_jsonl(run / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2] and all("val_elbo" in line for line in lines)
    state = build_state(config)
    state.model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    assert lines[-1]["val_elbo"] == dataset_elbo(state.model, state.val_data, seed=config.seed)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "validation", "--iw-samples", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (result["split"], result["num_images"]) == ("validation", 200)
    assert result["test_elbo"] == pytest.approx(lines[-1]["val_elbo"], rel=1e-6)
    unsplit = train(resolve(overrides=DIGITS), tmp_path / "unsplit", **QUIET)
    assert main(["evaluate", str(unsplit), "--split", "validation", "--iw-samples", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("has no validation split (it was trained without --validation N)"), err


def test_m2_draws_its_labelled_images_from_what_is_left():
    overrides = {**DIGITS, "model": "m2", "labelled": 50, "labelled_per_batch": 10, "validation": 400}
    state = build_state(resolve(overrides=overrides))
    assert int((state.train_data.labels >= 0).sum()) == 50  # the labelled draw, from the first 1040
    assert bool((state.val_data.labels >= 0).all())  # the validation images keep every label


def test_each_epoch_logs_the_models_scores_on_the_validation_images_too(tmp_path, capsys):
    overrides = {**DIGITS, "model": "m2", "labelled": 50, "labelled_per_batch": 10, "validation": 400}
    config = resolve(overrides=overrides)
    run = train(config, tmp_path / "run", **QUIET)
    line = read_jsonl(run / "metrics.jsonl")[-1]
    state = build_state(config)
    state.model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    on_val, on_test = (state.model.scores(data) for data in (state.val_data, state.test_data))
    assert on_val["classifier_accuracy"] != on_test["classifier_accuracy"]  # two sets of images
    assert line["val_classifier_accuracy"] == on_val["classifier_accuracy"]
    assert line["classifier_accuracy"] == on_test["classifier_accuracy"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "validation", "--iw-samples", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["classifier_accuracy"] == line["val_classifier_accuracy"]
    unsplit = train(resolve(overrides={**overrides, "validation": 0}), tmp_path / "unsplit", **QUIET)
    assert not [k for k in read_jsonl(unsplit / "metrics.jsonl")[-1] if k.startswith("val_")]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--validation", "1440"], "--validation 1440 is not less than the 1440 training images of digits"),
        (
            ["--validation", "300", "--batch-size", "1200"],
            "batch_size 1200 is larger than the 1140 training images of digits left after --validation 300",
        ),
        (
            ["--model", "cvae-completion", "--baseline-patience", "2"],
            "--baseline-patience 2 stops on held-out training images: give a validation split",
        ),
        (["--validation", "-1"], "validation must be at least 0, got -1"),
        (
            ["--model", "cvae-completion", "--validation", "300", "--baseline-patience", "2"]
            + ["--restarts", "2"],
            "--baseline-patience 2 with --restarts 2: the starts' baselines may stop at different epochs",
        ),
    ],
    ids=["all", "batch", "patience-alone", "negative", "restarts"],
)
def test_bad_validation_requests_get_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--device", "cpu", *flags, "--out", str(run)]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def _completion(**overrides):
    values = dict(model="cvae-completion", quadrants=3, z_dim=2, hidden=(16,), validation=300)
    return resolve(overrides={**DIGITS, **values, **overrides})


def _epochs(model, settings, val_elbos):
    """Runs epochs 1.. of `val_elbos` through on_epoch and epoch_done, the baseline's weights = epoch."""
    trained = []
    for epoch, val in enumerate(val_elbos, start=1):
        model.on_epoch(epoch, settings)
        trained.append(model.training_baseline)
        if model.training_baseline:
            with torch.no_grad():
                for p in model.baseline.parameters():
                    p.fill_(epoch)
        model.epoch_done(epoch, {"val_elbo": val}, settings)
    return trained


@pytest.mark.parametrize(
    "patience, baseline_epochs, val_elbos, stopped, best",
    [
        (2, 10, [-5.0, -4.0, -4.5, -4.1, -3.0, -2.0], 4, 2),  # two epochs without a better one
        (1, 10, [-5.0, -4.0, -4.5, -3.0], 3, 2),
        (3, 3, [-5.0, -4.0, -3.0, -2.0], 3, 3),  # baseline_epochs comes first
        (2, 10, [-5.0, math.nan, math.nan, -1.0], 3, 1),  # NaN is never better
        (1, 10, [math.nan, -3.0, -2.0], 1, 0),  # nothing better than -inf: its own weights stay
    ],
)
def test_the_baseline_stops_after_patience_epochs_with_its_best_weights(
    patience, baseline_epochs, val_elbos, stopped, best
):
    config = _completion(baseline_patience=patience, baseline_epochs=baseline_epochs)
    model = build_model("cvae-completion", **config.model_args(load_datasets(config, "cpu").train.spec))
    trained = _epochs(model, config.settings, val_elbos)
    assert trained == [epoch <= stopped for epoch in range(1, len(val_elbos) + 1)]
    kept = best or stopped  # the best epoch's weights, or (none better) the last epoch's
    assert all(bool((p == kept).all()) for p in model.baseline.parameters())
    assert (int(model.baseline_best_epoch), int(model.baseline_stopped)) == (best, stopped)


def test_without_patience_the_baseline_trains_its_epochs_and_the_checkpoint_keeps_its_keys():
    config = _completion(baseline_epochs=2)
    args = config.model_args(load_datasets(config, "cpu").train.spec)
    assert "early_stopping" not in args  # runs made before build and load as they did
    model = build_model("cvae-completion", **args)
    assert not any(name.startswith("baseline_") for name in model.state_dict())
    assert _epochs(model, config.settings, [-5.0, -6.0, -7.0, -8.0]) == [True, True, False, False]
    assert all(bool((p == 2).all()) for p in model.baseline.parameters())  # its last epoch's weights


def completion_flags(backend="torch"):
    """A completion run on digits whose baseline stops early (seed 0: after epoch 4 with torch)."""
    flags = ["--model", "cvae-completion", "--dataset", "digits", "--quadrants", "3", "--z-dim", "2"]
    flags += ["--hidden", "16", "--validation", "300", "--baseline-epochs", "10", "--baseline-patience", "1"]
    return flags + ["--lr", "0.1", "--batch-size", "96", "--backend", backend, "--device", "cpu"]


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_a_run_resumed_across_the_stop_is_the_run_trained_straight(tmp_path, capsys, backend):
    flags = [*completion_flags(backend), "--no-progress", "--no-plots"]
    assert main(["train", *flags, "--epochs", "9", "--out", str(tmp_path / "straight")]) == 0
    for epochs in (3, 5, 9):  # epochs, written ahead of the stop, then past it
        split = ["train", *(flags if epochs == 3 else ["--resume", "--no-progress", "--no-plots"])]
        assert main([*split, "--epochs", str(epochs), "--out", str(tmp_path / "split")]) == 0
        if epochs == 3:  # not stopped yet: evaluate says so, and names no best epoch
            capsys.readouterr()
            evaluate = ["evaluate", str(tmp_path / "split"), "--iw-samples", "5", "--json", "--no-progress"]
            assert main(evaluate) == 0
            early = json.loads(capsys.readouterr().out.splitlines()[-1])
            assert early["baseline_stopped"] == 0 and "baseline_best_epoch" not in early
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    stopped, best = int(a["baseline_stopped"]), int(a["baseline_best_epoch"])
    assert 1 <= best < stopped < 9  # it stopped early, before its 10 epochs, and the CVAE trained
    lines = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    # The epoch after the stop scores the best epoch's baseline again; the validation split chose it.
    assert lines[stopped]["baseline_nll"] == lines[best - 1]["baseline_nll"]
    assert max(lines[:stopped], key=lambda line: line["val_elbo"])["epoch"] == best
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "straight"), "--iw-samples", "5", "--json", "--no-progress"]) == 0
    scores = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (scores["baseline_best_epoch"], scores["baseline_stopped"]) == (best, stopped)
    assert scores["baseline_nll"] == pytest.approx(lines[best - 1]["baseline_nll"], rel=1e-6)
