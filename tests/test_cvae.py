"""The conditional VAE: Pyro and hand-written halves agree; labels travel with the images;
drawn samples are of the class asked for; missing or foreign labels get one line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

import vaelab
from vaelab import data
from vaelab.cli import main
from vaelab.config import resolve
from vaelab.data.batches import Batch
from vaelab.errors import ConfigError, DataError
from vaelab.evaluate import hand_log_weights, pyro_log_weights
from vaelab.models import Loss
from vaelab.models.cvae import CVAE
from vaelab.objectives import make_objective
from vaelab.train import resume_config, train

QUIET = dict(progress=False, echo=lambda s: None)
TINY = "--dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress".split()


@pytest.fixture
def cvae_and_batch():
    torch.manual_seed(0)
    model = CVAE(x_dim=64, num_classes=10, z_dim=5, hidden=(32, 16), activation="softplus")
    return model, Batch(torch.rand(16, 64), torch.randint(0, 10, (16,)))


def _run(model, seed, loss_fn):
    model.zero_grad()
    torch.manual_seed(seed)
    out = loss_fn()
    loss = out.loss if isinstance(out, Loss) else out
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=0)
    for ga, gb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("hand", "pyro"), [("mc", "trace"), ("analytic", "meanfield"), ("mc", "jit")])
def test_the_pyro_program_equals_the_hand_written_elbo(cvae_and_batch, hand, pyro):
    model, batch = cvae_and_batch
    analytic = hand == "analytic"
    by_hand = _run(model, 1, lambda: -model.elbo(batch, analytic_kl=analytic).sum())
    _assert_same(by_hand, _run(model, 1, lambda: make_objective("pyro", pyro)(model, batch)))


def test_the_label_changes_the_elbo_and_the_two_log_weights_agree(cvae_and_batch):
    model, batch = cvae_and_batch
    torch.manual_seed(2)
    own = model.elbo(batch)
    torch.manual_seed(2)
    other = model.elbo(Batch(batch.x, (batch.y + 1) % 10))
    assert not torch.allclose(own, other)  # y reaches the networks
    torch.manual_seed(3)
    hand = hand_log_weights(model, batch, 7)
    torch.manual_seed(3)
    traced = pyro_log_weights(model, batch, 7)  # y broadcast over a particles plate
    assert hand.shape == traced.shape == (7, 16)
    torch.testing.assert_close(hand, traced, rtol=1e-4, atol=1e-4)


def test_images_without_labels_or_with_foreign_ones_are_refused(cvae_and_batch):
    model, batch = cvae_and_batch
    with pytest.raises(ValueError, match="CVAE needs class labels y"):
        model.elbo(batch.x)
    with pytest.raises(
        DataError, match=r"labels must be classes 0-9 for this model, got values in \[\d, 10\]"
    ):
        model.elbo(Batch(batch.x, torch.cat([batch.y[:-1], torch.tensor([10])])))
    with pytest.raises(ConfigError, match="label 12 is outside the classes 0-9"):
        model.sample(3, y=torch.tensor(12))
    assert model.sample(4, y=torch.tensor([0, 1, 2, 3])).shape == (4, 64)
    assert model.sample(5).shape == (5, 64)  # random classes


def _config(**overrides):
    values = dict(
        model="cvae", dataset="digits", z_dim=4, hidden=(64,), batch_size=32, epochs=10, lr=3e-3, device="cpu"
    )
    return resolve(overrides={**values, **overrides})


@pytest.fixture(scope="module")
def digit_classifier():
    """Logistic regression on the 1,440 training digits (pixels / 255): 89.9% on the 357 test digits."""
    images, labels = data.load("digits", "train")
    return LogisticRegression(max_iter=2000).fit(images.reshape(len(images), -1) / 255.0, labels)


def _class_accuracy(model, classifier, per_class=50) -> float:
    labels = torch.arange(10).repeat_interleave(per_class)
    torch.manual_seed(0)
    drawn = model.sample(len(labels), y=labels).numpy()
    return float((classifier.predict(drawn) == labels.numpy()).mean())


def test_samples_of_each_class_are_recognised_as_that_class(tmp_path, digit_classifier):
    """Measured: 1.000 after 10 epochs for seeds 0, 1 and 2; an untrained CVAE's 0.100-0.114 (chance)."""
    trained = vaelab.load_run(train(_config(), tmp_path / "run", **QUIET)).model
    assert _class_accuracy(trained, digit_classifier) >= 0.9
    torch.manual_seed(0)
    untrained = CVAE(x_dim=64, num_classes=10, z_dim=4, hidden=(64,))
    assert _class_accuracy(untrained, digit_classifier) <= 0.3


@pytest.mark.parametrize(("backend", "elbo"), [("torch", None), ("pyro", "trace")])
def test_a_cvae_run_resumes_bitwise(tmp_path, backend, elbo):
    settings = dict(backend=backend, elbo=elbo, binarize="dynamic", batch_size=64)
    straight = train(_config(**settings, epochs=3), tmp_path / "a", **QUIET)
    train(_config(**settings, epochs=1), tmp_path / "b", **QUIET)
    resumed = train(resume_config(tmp_path / "b", {"epochs": 3}), tmp_path / "b", resume=True, **QUIET)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert a["model_args"]["num_classes"] == 10
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (straight / "metrics.jsonl").read_text().count("\n") == 3


def test_cli_train_sample_by_label_and_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--model", "cvae", "--epochs", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    html = (run / "report.html").read_text()
    assert "one row per class" in html and '<td class="key">elbo</td>' not in html
    with Image.open(run / "plots" / "samples.png") as picture:
        assert picture.size[1] > 200  # ten rows
    for backend in ("torch", "pyro"):
        args = ["evaluate", str(run), "--iw-samples", "5", "--backend", backend, "--json", "--no-progress"]
        assert main(args) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["test_log_likelihood"] > result["test_elbo"] - 5  # the bound, on the labelled test set
    assert main(["sample", str(run), "--label", "7", "-n", "8"]) == 0
    assert (run / "samples-8-label7-seed0.png").exists()
    assert main(["sample", str(run), "--label", "12"]) == 1
    err = capsys.readouterr().err
    assert "label 12 is outside the classes 0-9" in err and err.count("\n") == 1


def test_a_vae_run_refuses_a_label(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--no-plots", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--label", "3"]) == 1
    assert "does not draw by label" in capsys.readouterr().err


def test_a_dataset_without_labels_is_refused_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.random((200, 8, 8)), test_images=rng.random((20, 8, 8)))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--model", "cvae", "--dataset", f"npz:{path}", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"model cvae needs class labels; the train split of npz:{path} has no labels" in err
    assert err.count("\n") == 1 and not out.exists()
    saved = json.dumps(_config().to_dict())
    assert '"num_classes"' not in saved  # a data property, kept in the checkpoint's model_args


def test_labels_that_are_not_classes_are_refused_for_the_cvae_and_taken_by_the_vae(tmp_path, capsys):
    path = tmp_path / "odd.npz"
    rng = np.random.default_rng(0)
    arrays = dict(train_images=rng.random((200, 8, 8)), test_images=rng.random((20, 8, 8)))
    np.savez(path, **arrays, train_labels=np.zeros(200, np.int64), test_labels=np.full(20, 3))
    flags = [*TINY, "--dataset", f"npz:{path}", "--epochs", "1", "--batch-size", "50", "--no-plots"]
    assert main(["train", *flags, "--model", "cvae", "--out", str(tmp_path / "c")]) == 1
    assert "test label 3 is outside the training classes 0-0" in capsys.readouterr().err
    assert main(["train", *flags, "--out", str(tmp_path / "v")]) == 0  # the VAE reads no labels
    np.savez(path, **arrays, train_labels=np.full(200, -1), test_labels=np.zeros(20, np.int64))
    assert main(["train", *flags, "--model", "cvae", "--out", str(tmp_path / "c2")]) == 1
    assert "train labels must be classes 0, 1, …, got -1" in capsys.readouterr().err


def test_labels_numbered_past_ten_thousand_classes_are_refused_before_a_giant_one_hot(tmp_path, capsys):
    """Labels up to 9,000,000 on 200 images once trained a 9M-column one-hot (a 3.4 GB checkpoint)."""
    path = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    labels = np.arange(200, dtype=np.int64) * 45_000
    arrays = dict(train_images=rng.random((200, 8, 8)), test_images=rng.random((20, 8, 8)))
    np.savez(path, **arrays, train_labels=labels, test_labels=labels[:20])
    flags = [*TINY, "--dataset", f"npz:{path}", "--epochs", "1", "--batch-size", "50", "--no-plots"]
    assert main(["train", *flags, "--model", "cvae", "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "train labels run up to 8955000, more than 10,000 classes" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()
    many = np.arange(200, dtype=np.int64) * 50  # 9,951 classes on 200 images: more than the images, allowed
    np.savez(path, **arrays, train_labels=many, test_labels=many[:20])
    assert main(["train", *flags, "--model", "cvae", "--out", str(tmp_path / "ok")]) == 0
