"""Semi-supervised M2: Pyro's enumerated program equals the explicit sum by hand on the same noise;
the labelled images are chosen per class from the seed; evaluation sees the images alone;
bad requests get one line."""

import json
import math

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.config import resolve
from vaelab.data.batches import Batch, ImageBatches
from vaelab.errors import ConfigError, DataError
from vaelab.evaluate import log_likelihood, pyro_log_weights
from vaelab.models.base import dataset_elbo
from vaelab.models.m2 import M2
from vaelab.objectives import make_objective
from vaelab.train import load_datasets

TINY = "--dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress".split()


@pytest.fixture
def m2():
    torch.manual_seed(0)
    return M2(x_dim=20, num_classes=3, z_dim=4, hidden=(8, 6), activation="softplus", aux_weight=2.5).double()


X = torch.rand(7, 20, generator=torch.Generator().manual_seed(1), dtype=torch.double)
MIXED = torch.tensor([0, -1, 2, -1, -1, 1, -1])


def _run(model, loss_fn):
    model.zero_grad()
    torch.manual_seed(11)
    out = loss_fn()
    out.loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    return out, grads


@pytest.mark.parametrize(
    "labels", [MIXED, torch.full((7,), -1), None, torch.tensor([0, 1, 2, 0, 1, 2, 0])], ids=str
)
def test_the_enumerated_pyro_program_equals_the_sum_by_hand_on_the_same_noise(m2, labels):
    """Loss (with α's classification term), ELBO and every gradient, labelled and unlabelled images mixed."""
    batch = Batch(X, labels)
    hand, hand_grads = _run(m2, lambda: m2.loss(batch, analytic_kl=False))
    pyro, pyro_grads = _run(m2, lambda: make_objective("pyro", "enum")(m2, batch))
    torch.testing.assert_close(hand.loss, pyro.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(hand.neg_elbo, pyro.neg_elbo, rtol=1e-5, atol=0)
    for a, b in zip(hand_grads, pyro_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert any(g.abs().sum() > 0 for g in hand_grads)
    # The classifier learns from the unlabelled sum and, where labels are known, from α's term.
    classifier_grad = sum(
        g.abs().sum()
        for g, (name, _) in zip(hand_grads, m2.named_parameters(), strict=True)
        if name.startswith("classifier")
    )
    assert classifier_grad > 0


def test_the_unlabelled_elbo_is_the_classifier_weighted_sum_over_classes_plus_its_entropy(m2):
    """Written out per class with the labelled bound, on the same (closed-form KL) terms."""
    x = X[:3]
    with torch.no_grad():
        torch.manual_seed(5)
        eps = torch.randn(3, 3, 4, dtype=torch.double)  # (C, B, z): the draws the sum uses
        torch.manual_seed(5)
        summed = m2.elbo(Batch(x, torch.full((3,), -1)))
        log_q = torch.log_softmax(m2.classifier(x), -1)
        expected = torch.zeros(3, dtype=torch.double)
        for c in range(3):
            one_hot = torch.nn.functional.one_hot(torch.full((3,), c), 3).double()
            loc, scale = m2.encoder(torch.cat([x, one_hot], -1))
            z = loc + scale * eps[c]
            logits = m2.decoder(torch.cat([z, one_hot], -1))
            log_px = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(
                -1
            )
            kl = 0.5 * (loc**2 + scale**2 - 1).sum(-1) - torch.log(scale).sum(-1)
            expected += log_q[:, c].exp() * (log_px - math.log(3) - kl - log_q[:, c])
    torch.testing.assert_close(summed, expected, rtol=1e-10, atol=1e-10)


def test_no_classification_term_without_labels_or_with_alpha_zero(m2):
    torch.manual_seed(3)
    unlabelled = m2.loss(Batch(X))
    assert torch.equal(unlabelled.loss, unlabelled.neg_elbo)  # logged apart all the same
    m2.aux_weight = 0.0
    assert not m2.weighted and m2.loss(Batch(X, MIXED)).neg_elbo is None


def _config(**overrides):
    return resolve(overrides=dict(model="m2", dataset="digits", z_dim=3, hidden=(16,), **overrides))


def test_the_labelled_images_are_balanced_seeded_and_the_rest_unknown():
    labels = torch.arange(10).repeat(30)
    config = _config(labelled=40)
    kept = M2.training_labels(labels, 10, config)
    known = kept >= 0
    assert known.sum() == 40 and torch.equal(kept[known], labels[known])
    assert torch.equal(torch.bincount(kept[known], minlength=10), torch.full((10,), 4))
    assert (kept[~known] == -1).all()
    assert torch.equal(kept, M2.training_labels(labels, 10, config))
    assert not torch.equal(kept, M2.training_labels(labels, 10, _config(labelled=40, seed=1)))
    with pytest.raises(ConfigError, match="--labelled 301 is more than the 300 training images"):
        M2.training_labels(labels, 10, _config(labelled=301))
    with pytest.raises(ConfigError, match="--labelled 45 does not divide into the 10 classes"):
        M2.training_labels(labels, 10, _config(labelled=45))
    few_nines = torch.cat([labels, torch.zeros(20, dtype=torch.long)])  # classes 1-9 have 30, class 0 50
    with pytest.raises(ConfigError, match="--labelled 310: class 1 has 30 training images, fewer than 31"):
        M2.training_labels(few_nines, 10, _config(labelled=310))


def test_a_run_trains_on_the_labels_kept_and_is_scored_on_the_images_alone(m2):
    config = resolve(overrides=dict(model="m2", dataset="digits", labelled=50, z_dim=3, hidden=(16,)))
    train, test, _ = load_datasets(config, "cpu")
    assert (train.labels >= 0).sum() == 50 and (test.labels >= 0).all()
    model = m2.float()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 4, 5), dtype=np.uint8)
    labelled = ImageBatches(pixels, labels=np.array([0, 1, 2, 0]), label_kind="classes")
    alone = ImageBatches(pixels)
    assert dataset_elbo(model, labelled, seed=3) == dataset_elbo(model, alone, seed=3)
    with_labels = log_likelihood(model, labelled, iw_samples=50, progress=False)
    torch.testing.assert_close(with_labels, log_likelihood(model, alone, iw_samples=50, progress=False))
    # The Pyro program would take a label it is given as observed: evaluation must not give it one.
    for backend in ("torch", "pyro"):
        with_labels = log_likelihood(model, labelled, iw_samples=20, backend=backend, progress=False)
        torch.testing.assert_close(
            with_labels, log_likelihood(model, alone, 20, backend=backend, progress=False)
        )


def _estimate(log_w):
    """log mean w over the draws (dim 0), and its standard error by the delta method."""
    k = len(log_w)
    w = torch.exp(log_w - log_w.max(0).values)
    return torch.logsumexp(log_w, 0) - math.log(k), w.std(0) / (w.mean(0) * math.sqrt(k))


def test_the_log_likelihood_estimates_of_both_halves_agree(m2):
    """Both sample y ~ q(y|x), then z ~ q(z|x, y): within 4 standard errors of each other."""
    x = X[:4]
    with torch.no_grad():
        hand = m2.log_importance_weights(
            Batch(x, MIXED[:4]), 50_000, generator=torch.Generator().manual_seed(0)
        )
        torch.manual_seed(0)
        traced = pyro_log_weights(m2, Batch(x), 1000)  # one trace per draw
    (a, se_a), (b, se_b) = _estimate(hand), _estimate(traced)
    assert ((a - b).abs() < 4 * (se_a + se_b)).all(), (a - b, se_a + se_b)
    assert (a > m2.elbo(Batch(x)) - 0.5).all()


def test_labels_outside_the_classes_are_refused(m2):
    with pytest.raises(
        DataError, match=r"labels must be classes 0-2, or -1 for unlabelled; got values in \[-2, 0\]"
    ):
        m2.elbo(Batch(X[:2], torch.tensor([-2, 0])))


def test_cli_train_both_backends_evaluate_and_the_classifier_accuracy(tmp_path, capsys):
    for backend in ("torch", "pyro"):
        run = tmp_path / backend
        flags = [
            "--model",
            "m2",
            "--labelled",
            "100",
            "--epochs",
            "2",
            "--backend",
            backend,
            "--out",
            str(run),
        ]
        assert main(["train", *TINY, *flags]) == 0
        line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert 0 <= line["classifier_accuracy"] <= 1 and "train_objective" in line
        assert main(["evaluate", str(run), "--iw-samples", "5", "--json", "--no-progress"]) == 0
        result = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert "classifier_accuracy" in json.dumps(result)
        assert result["test_log_likelihood"] > result["test_elbo"] - 5
    assert json.loads((tmp_path / "pyro" / "config.json").read_text())["elbo"] == "enum"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--labelled", "2000"], "--labelled 2000 is more than the 1440 training images"),
        (["--labelled", "55"], "--labelled 55 does not divide into the 10 classes"),
        (["--backend", "pyro", "--elbo", "trace"], "model m2's Pyro program needs --elbo enum, got 'trace'"),
        (["--particles", "3"], "--particles 3: model m2 takes one particle"),
    ],
)
def test_bad_m2_requests_get_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--model", "m2", *flags, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_a_dataset_without_labels_is_refused(tmp_path, capsys):
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.random((200, 8, 8)), test_images=rng.random((20, 8, 8)))
    assert (
        main(["train", *TINY, "--model", "m2", "--dataset", f"npz:{path}", "--out", str(tmp_path / "r")]) == 1
    )
    assert "model m2 needs class labels" in capsys.readouterr().err


def test_the_preset_is_pyros_example(capsys):
    config = resolve(preset="m2-pyro")
    assert (config.settings.labelled, config.settings.aux_weight, config.batch_size) == (100, 46.0, 200)
    assert (config.settings.z_dim, tuple(config.settings.hidden), config.lr) == (50, (500,), 4.2e-4)


def test_labelled_images_in_every_batch_and_each_unlabelled_one_once_an_epoch():
    config = _config(labelled=20, labelled_per_batch=3, batch_size=10, seed=4)
    labels = M2.training_labels(torch.arange(10).repeat(20), 10, config)  # 200 images, 20 labelled
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    m2 = M2(x_dim=4, num_classes=10)
    visited = m2.training_order(order, labels, config, epoch=2)
    batches = visited.split(10)
    assert all((labels[b[:3]] >= 0).all() and (labels[b[3:]] < 0).all() for b in batches)
    unlabelled = visited[labels[visited] < 0]
    assert torch.equal(unlabelled, order[labels[order] < 0])  # once each, in the epoch's shuffle
    assert len(batches) == 26 and torch.bincount(visited[labels[visited] >= 0]).max() <= 4
    again = m2.training_order(order, labels, config, epoch=2)
    assert torch.equal(visited, again)  # a function of the epoch: resumable
    assert not torch.equal(visited, m2.training_order(order, labels, config, epoch=3))
    plain = _config(labelled=20)
    assert m2.training_order(order, labels, plain, epoch=2) is order
    with pytest.raises(ConfigError, match="--labelled-per-batch 10 leaves no room for unlabelled images"):
        M2.training_labels(labels, 10, _config(labelled=20, labelled_per_batch=10, batch_size=10))
