"""Convolutional encoders and decoders (--net conv): both halves equal on the same noise for every
image model that takes them; any image size; runs train, evaluate and draw from the command line."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from vaelab.cli import main
from vaelab.data.batches import Batch
from vaelab.evaluate import hand_log_weights, pyro_log_weights
from vaelab.models import build_model
from vaelab.objectives import make_objective

LABELS = torch.tensor([0, 1, 2, 0, 1])
MODELS = [
    ("vae", {}, None, "trace"),
    ("vae", {}, None, "meanfield"),
    ("beta-vae", {"beta": 3.0}, None, "trace"),
    ("cvae", {"num_classes": 3}, LABELS, "trace"),
    ("m2", {"num_classes": 3}, torch.tensor([0, -1, 2, -1, -1]), "enum"),
    ("vampprior", {"pseudo_inputs": 4}, None, "trace"),
]


def _model(name, extra, shape=(6, 5)):
    torch.manual_seed(0)
    arguments = dict(x_dim=shape[0] * shape[1], z_dim=3, hidden=[12], activation="softplus")
    return build_model(name, **arguments, **extra, net="conv", image_shape=list(shape)).double()


def _run(model, objective, batch):
    model.zero_grad()
    torch.manual_seed(4)
    out = objective(model, batch)
    out.loss.backward()
    return out, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("name", "extra", "labels", "elbo"), MODELS, ids=lambda v: str(v)[:12])
def test_pyro_and_hand_agree_on_the_same_noise_with_convolutions(name, extra, labels, elbo):
    model = _model(name, extra)
    assert isinstance(model.encoder.convs[0], nn.Conv2d)
    batch = Batch(torch.rand(5, 30, generator=torch.Generator().manual_seed(2), dtype=torch.double), labels)
    # The hand-written half: the closed-form KL where Pyro's meanfield takes it; else at the draws.
    hand, hand_grads = _run(model, make_objective("torch", None if elbo == "meanfield" else "trace"), batch)
    pyro, pyro_grads = _run(model, make_objective("pyro", elbo), batch)
    torch.testing.assert_close(hand.loss, pyro.loss, rtol=1e-5, atol=0)
    for a, b in zip(hand_grads, pyro_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert all(
        g.abs().sum() > 0
        for n, g in zip(dict(model.named_parameters()), hand_grads, strict=True)
        if "convs" in n
    )


@pytest.mark.parametrize("shape", [(28, 28), (8, 8), (5, 7), (2, 3), (1, 1)])
def test_any_image_size_gives_one_logit_per_pixel(shape):
    model = _model("cvae", {"num_classes": 3}, shape)
    x = torch.rand(5, shape[0] * shape[1], dtype=torch.double)
    assert model.decode(torch.zeros(5, 3, dtype=torch.double), LABELS).shape == (5, shape[0] * shape[1])
    assert torch.isfinite(model.elbo(Batch(x, LABELS))).all()
    # Enumerated classes and importance samples are leading dimensions the networks keep.
    assert model.encoder(torch.rand(4, 5, x.shape[1] + 3, dtype=torch.double))[0].shape == (4, 5, 3)


def test_the_evaluation_weights_of_both_halves_agree():
    model = _model("vae", {})
    batch = Batch(torch.rand(5, 30, dtype=torch.double))
    torch.manual_seed(3)
    hand = hand_log_weights(model, batch, 7)
    torch.manual_seed(3)
    torch.testing.assert_close(hand, pyro_log_weights(model, batch, 7), rtol=1e-6, atol=1e-6)


def test_a_conv_image_needs_its_shape():
    with pytest.raises(ValueError, match="a conv network needs the image shape"):
        build_model("vae", x_dim=30, net="conv")
    with pytest.raises(ValueError, match=r"image shape \(4, 4\) does not have x_dim 30 pixels"):
        build_model("vae", x_dim=30, net="conv", image_shape=[4, 4])


def test_cli_trains_evaluates_and_draws_conv_models_on_images_of_another_size(tmp_path, capsys):
    path = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    labels = dict(train_labels=rng.integers(0, 3, 120), test_labels=rng.integers(0, 3, 30))
    np.savez(path, train_images=rng.random((120, 10, 6)), test_images=rng.random((30, 10, 6)), **labels)
    flags = [
        "--dataset",
        f"npz:{path}",
        "--z-dim",
        "2",
        "--hidden",
        "8",
        "--epochs",
        "2",
        "--batch-size",
        "40",
    ]
    for model in ("vae", "cvae", "m2"):
        run = tmp_path / model
        extra = ["--labelled", "30"] if model == "m2" else []
        args = [
            "train",
            *flags,
            *extra,
            "--model",
            model,
            "--net",
            "conv",
            "--no-progress",
            "--out",
            str(run),
        ]
        assert main(args) == 0, capsys.readouterr().err
        assert json.loads((run / "config.json").read_text())["net"] == "conv"
        assert (run / "report.html").exists() and (run / "plots" / "samples.png").exists()
        assert main(["evaluate", str(run), "--iw-samples", "4", "--json", "--no-progress"]) == 0
        result = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert np.isfinite(result["test_log_likelihood"])


@pytest.mark.parametrize("model", ["two-layer-vae", "air"])
def test_models_without_a_conv_net_refuse_the_flag(tmp_path, capsys, model):
    out = tmp_path / "run"
    assert main(["train", "--model", model, "--dataset", "digits", "--net", "conv", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"net is a setting of model vae, beta-vae, cvae, vampprior, m2, not of {model}" in err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_an_encoder_given_its_condition_apart_equals_it_given_the_two_joined(net):
    """M2 hands q(z|x, y) the images once and the one-hot classes apart, (C, 1, C): the images'
    first-layer product is taken once, and values and gradients equal those of the joined input,
    which repeats each image once per class."""
    model = build_model(
        "m2",
        x_dim=30,
        num_classes=3,
        z_dim=3,
        hidden=[12],
        activation="softplus",
        net=net,
        image_shape=[6, 5],
    ).double()
    x = torch.rand(4, 30, generator=torch.Generator().manual_seed(1), dtype=torch.double)
    every = torch.eye(3, dtype=torch.double).unsqueeze(1)  # (C, 1, C)
    joined = torch.cat([x.expand(3, 4, 30), every.expand(3, 4, 3)], -1)
    results = []
    for inputs in ((joined,), (x, every)):
        model.zero_grad()
        loc, scale = model.encoder(*inputs)
        assert loc.shape == scale.shape == (3, 4, 3)
        (loc.square().sum() + scale.sum()).backward()
        results.append([loc, scale, *(p.grad.clone() for p in model.encoder.parameters())])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
