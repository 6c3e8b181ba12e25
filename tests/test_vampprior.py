"""The VampPrior: a mixture prior at learned pseudo-inputs, Pyro and by hand on the same noise."""

import json
import math

import pytest
import torch

from vaelab.data.batches import Batch, ImageBatches
from vaelab.errors import ConfigError
from vaelab.evaluate import hand_log_weights, log_likelihood, pyro_log_weights
from vaelab.models import build_model
from vaelab.objectives import make_objective


def _model():
    torch.manual_seed(0)
    return build_model("vampprior", x_dim=64, z_dim=4, hidden=[32], activation="tanh", pseudo_inputs=7)


def _run(model, objective, x, seed=1):
    model.zero_grad()
    torch.manual_seed(seed)
    out = objective(model, x)
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("hand_elbo", "pyro_elbo", "particles"),
    [
        ("trace", "trace", 1),
        (None, "meanfield", 1),
        ("trace", "trace", 3),
        ("iwae", "iwae", 5),
        ("dreg", "dreg", 5),
    ],
)
def test_pyro_and_hand_written_agree_on_the_same_noise(hand_elbo, pyro_elbo, particles):
    """Hand: log p(z) as a logsumexp over components; Pyro: MixtureSameFamily (meanfield falls back to it)."""
    model, x = _model(), torch.rand(16, 64)
    hand = _run(model, make_objective("torch", hand_elbo, particles), x)
    pyro_ = _run(model, make_objective("pyro", pyro_elbo, particles), x)
    torch.testing.assert_close(hand[0], pyro_[0], rtol=1e-5, atol=0)
    for a, b in zip(hand[1], pyro_[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    pseudo = [name for name, _ in model.named_parameters()].index("pseudo.logits")
    assert hand[1][pseudo].abs().sum() > 0  # the pseudo-inputs learn through the prior


def test_the_prior_is_the_mean_of_the_posteriors_at_the_pseudo_inputs():
    model = _model()
    z = torch.randn(5, 4)
    loc, scale = model.encoder(model.pseudo_inputs())
    direct = (
        torch.stack([torch.distributions.Normal(loc[k], scale[k]).log_prob(z).sum(-1) for k in range(7)])
        .exp()
        .mean(0)
        .log()
    )
    torch.testing.assert_close(model.log_prior(z), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.prior(z).log_prob(z), direct, rtol=1e-5, atol=1e-5)


def test_evaluation_weights_agree_and_the_bound_sits_above_the_elbo():
    model = _model()
    images = ImageBatches(torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8).numpy(), "static")
    x = images.batch(torch.arange(12))
    hand = hand_log_weights(model, x, 6, torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    torch.testing.assert_close(hand, pyro_log_weights(model, x, 6), rtol=1e-5, atol=1e-4)
    ll = log_likelihood(model, images, 300, progress=False)
    torch.manual_seed(0)
    elbo = torch.stack([model.elbo(Batch(x.x)) for _ in range(50)]).mean(0)
    assert (ll > elbo).all()
    assert math.isfinite(ll.mean().item())


def test_samples_are_images():
    out = _model().sample(10)
    assert out.shape == (10, 64) and 0 <= out.min() and out.max() <= 1


def test_the_warm_up_weights_the_kl_term_alike_in_both_halves_and_logs_the_elbo_apart(tmp_path):
    """Tomczak & Welling's warm-up: weight epoch/N, in Pyro's scaled z site and in rec - w·KL by hand."""
    from vaelab.config import resolve
    from vaelab.models.vampprior import VampPrior

    model, x = _model(), torch.rand(16, 64)
    settings = VampPrior.Settings(warmup_epochs=4)
    weights = []
    for epoch in (1, 2, 4, 9):
        model.on_epoch(epoch, settings)
        weights.append(model.kl_weight)
    assert weights == [0.25, 0.5, 1.0, 1.0] and model.weighted
    model.on_epoch(2, settings)
    hand = _run(model, make_objective("torch", "trace"), x)
    pyro_ = _run(model, make_objective("pyro", "trace"), x)
    torch.testing.assert_close(hand[0], pyro_[0], rtol=1e-5, atol=0)
    for a, b in zip(hand[1], pyro_[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    torch.manual_seed(1)
    out = model.loss(Batch(x), analytic_kl=False)
    torch.manual_seed(1)
    log_px, kl = model.elbo_terms(Batch(x), analytic_kl=False)
    torch.testing.assert_close(out.loss, -(log_px - 0.5 * kl).sum())
    torch.testing.assert_close(out.neg_elbo, -(log_px - kl).sum())

    from vaelab.train import train

    overrides = dict(model="vampprior", dataset="digits", z_dim=2, hidden=(8,), pseudo_inputs=5, epochs=3)
    run = train(
        resolve(overrides={**overrides, "warmup_epochs": 2}), tmp_path / "run", progress=False, echo=print
    )
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("train_objective" in line for line in lines)
    assert lines[0]["train_objective"] > lines[0]["train_elbo"]  # half the KL in the first epoch
    with pytest.raises(
        ConfigError, match="--warmup-epochs: a warm-up weights a KL term, and --elbo iwae has none"
    ):
        resolve(overrides={**overrides, "warmup_epochs": 2, "elbo": "iwae"})


@pytest.mark.parametrize("compiled", ["jit", "jit-meanfield"])
def test_a_compiled_pyro_elbo_follows_the_warm_up_as_the_python_one_does(tmp_path, compiled):
    """A compiled graph freezes the KL weight it was traced at; program_state makes it trace anew.

    Without that, the first epoch's weight 0.5 trained every later epoch: train_objective stayed
    apart from train_elbo after the warm-up, and the run drifted from the Python ELBO's."""
    from vaelab.config import resolve
    from vaelab.train import train

    overrides = dict(model="vampprior", dataset="digits", z_dim=2, hidden=(8,), pseudo_inputs=5, epochs=3)
    runs = {}
    for elbo in ("trace", compiled):
        config = resolve(overrides={**overrides, "warmup_epochs": 2, "backend": "pyro", "elbo": elbo})
        run = train(config, tmp_path / elbo, progress=False, echo=lambda s: None)
        runs[elbo] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for python, graph in zip(runs["trace"], runs[compiled], strict=True):
        for key in ("train_elbo", "train_objective", "test_elbo"):
            assert graph[key] == pytest.approx(python[key], rel=1e-5), (python["epoch"], key)
    assert [line["train_objective"] == line["train_elbo"] for line in runs[compiled]] == [False, True, True]
