"""The β-VAE: Pyro's scaled latent site and the hand-written rec - β·KL give the same numbers;
β = 1 is the VAE exactly; the ELBO is logged beside the weighted objective."""

import json

import pytest
import torch

from vaelab.cli import main
from vaelab.config import resolve
from vaelab.models import VAE, Loss
from vaelab.models.beta_vae import BetaVAE
from vaelab.objectives import make_objective
from vaelab.train import resume_config, train

SMALL = dict(x_dim=64, z_dim=5, hidden=(32, 16), activation="softplus")
QUIET = dict(progress=False, echo=lambda s: None)


@pytest.fixture
def beta_vae_and_batch():
    torch.manual_seed(0)
    return BetaVAE(**SMALL, beta=3.0), torch.rand(16, 64)


def _run(model, seed, loss_fn):
    """Returns (loss, neg_elbo, gradients, random state after) of `loss_fn()` on seed `seed`."""
    model.zero_grad()
    torch.manual_seed(seed)
    out = loss_fn()
    if not isinstance(out, Loss):
        out = Loss(out)
    after = torch.get_rng_state()
    out.loss.backward()
    return out.loss.detach(), out.neg_elbo, [p.grad.clone() for p in model.parameters()], after


def _assert_same(a, b, compare_neg_elbo=True):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=0)
    if compare_neg_elbo:
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=0)
    for ga, gb in zip(a[2], b[2], strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def test_scaled_mean_field_elbo_equals_the_hand_written_weighted_objective(beta_vae_and_batch):
    model, x = beta_vae_and_batch
    hand = _run(model, 1, lambda: make_objective("torch")(model, x))
    pyro_ = _run(model, 1, lambda: make_objective("pyro", "meanfield")(model, x))
    _assert_same(hand, pyro_)
    assert torch.equal(hand[3], pyro_[3])  # the ELBO's pass draws no noise of its own
    torch.manual_seed(1)
    assert hand[1].item() == pytest.approx(-model.elbo(x).sum().item(), rel=1e-6)  # β = 1 inside
    assert hand[0] > hand[1]  # β > 1 and KL > 0: the objective lies below the ELBO


@pytest.mark.parametrize("seed", [2, 3])
def test_scaled_trace_elbo_equals_the_hand_written_monte_carlo_objective(beta_vae_and_batch, seed):
    model, x = beta_vae_and_batch

    def hand():
        log_px_z, kl = model.elbo_terms(x, analytic_kl=False)
        return Loss(-(log_px_z - 3.0 * kl).sum(), (kl - log_px_z).sum())

    _assert_same(
        _run(model, seed, hand), _run(model, seed, lambda: make_objective("pyro", "trace")(model, x))
    )


@pytest.mark.parametrize(("compiled", "python"), [("jit", "trace"), ("jit-meanfield", "meanfield")])
def test_compiled_weighted_elbos_equal_their_python_forms(beta_vae_and_batch, compiled, python):
    model, x = beta_vae_and_batch
    fast, slow = make_objective("pyro", compiled), make_objective("pyro", python)
    for seed, batch in enumerate([x, x[:5], x]):
        _assert_same(
            _run(model, seed, lambda b=batch: slow(model, b)),
            _run(model, seed, lambda b=batch: fast(model, b)),
        )


@pytest.mark.parametrize("objective", [("torch", None), ("pyro", "trace"), ("pyro", "meanfield")])
def test_at_beta_1_the_beta_vae_is_the_vae_exactly(objective):
    torch.manual_seed(0)
    vae = VAE(**SMALL)
    beta_vae = BetaVAE(**SMALL, beta=1.0)
    beta_vae.load_state_dict(vae.state_dict())
    x = torch.rand(16, 64)
    loss = make_objective(*objective)
    a, b = _run(vae, 4, lambda: loss(vae, x)), _run(beta_vae, 4, lambda: loss(beta_vae, x))
    assert torch.equal(a[0], b[0]) and b[1] is None and torch.equal(a[3], b[3])
    assert all(torch.equal(ga, gb) for ga, gb in zip(a[2], b[2], strict=True))


def _config(**overrides):
    values = dict(dataset="digits", z_dim=4, hidden=(32,), batch_size=64, epochs=2, lr=3e-3, device="cpu")
    return resolve(overrides={**values, **overrides})


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(m).items() if k != "train_seconds"} for m in lines]


def test_training_at_beta_1_gives_the_vae_s_run_exactly(tmp_path):
    vae = train(_config(model="vae"), tmp_path / "vae", **QUIET)
    beta_vae = train(_config(model="beta-vae", beta=1.0), tmp_path / "beta", **QUIET)
    assert _metrics(vae) == _metrics(beta_vae)
    a = torch.load(vae / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(beta_vae / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_weighted_run_logs_the_elbo_and_the_objective_the_same_on_both_backends(tmp_path):
    hand = _metrics(train(_config(model="beta-vae", beta=2.0), tmp_path / "torch", **QUIET))
    pyro_ = _metrics(
        train(
            _config(model="beta-vae", beta=2.0, backend="pyro", elbo="meanfield"), tmp_path / "pyro", **QUIET
        )
    )
    for line in hand:
        assert set(line) == {"epoch", "train_elbo", "test_elbo", "train_objective"}
        assert line["train_objective"] < line["train_elbo"]
    # TraceMeanField_ELBO on the scaled program is the hand-written objective: the same run.
    for a, b in zip(hand, pyro_, strict=True):
        for key in ("train_elbo", "train_objective", "test_elbo"):
            assert a[key] == pytest.approx(b[key], abs=1e-3), key


@pytest.mark.parametrize(("backend", "elbo"), [("torch", None), ("pyro", "jit-meanfield")])
def test_a_beta_vae_run_resumes_bitwise(tmp_path, backend, elbo):
    settings = dict(model="beta-vae", beta=4.0, backend=backend, elbo=elbo, binarize="dynamic")
    straight = train(_config(**settings, epochs=3), tmp_path / "a", **QUIET)
    train(_config(**settings, epochs=1), tmp_path / "b", **QUIET)
    resumed = train(resume_config(tmp_path / "b", {"epochs": 3}), tmp_path / "b", resume=True, **QUIET)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(straight) == _metrics(resumed)


def test_the_cli_trains_a_beta_vae_and_refuses_beta_elsewhere(tmp_path, capsys):
    tiny = "--dataset digits --z-dim 3 --hidden 16 --epochs 1 --device cpu --no-progress --no-plots".split()
    run = tmp_path / "run"
    assert main(["train", *tiny, "--model", "beta-vae", "--beta", "2.5", "--out", str(run)]) == 0
    assert "train objective" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["beta"] == 2.5
    assert main(["train", *tiny, "--beta", "2", "--out", str(tmp_path / "vae")]) == 1
    assert "beta is a setting of model beta-vae, not of vae" in capsys.readouterr().err
    assert main(["train", *tiny, "--model", "beta-vae", "--beta", "0", "--out", str(tmp_path / "zero")]) == 1
    assert "beta must be positive, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "vae").exists() and not (tmp_path / "zero").exists()


def test_evaluation_weights_are_the_elbo_s_whatever_beta_trained(beta_vae_and_batch):
    from vaelab.evaluate import hand_log_weights, pyro_log_weights

    model, x = beta_vae_and_batch
    torch.manual_seed(6)
    hand = hand_log_weights(model, x, 5)
    torch.manual_seed(6)
    traced = pyro_log_weights(model, x, 5)  # the program's z site is scaled by β in training
    torch.testing.assert_close(hand, traced, rtol=1e-4, atol=1e-4)


def test_the_weight_follows_beta_and_nested_unweighted_blocks(beta_vae_and_batch):
    model, x = beta_vae_and_batch
    meanfield = make_objective("pyro", "meanfield")
    with model.unweighted():
        with model.unweighted():
            pass
        torch.manual_seed(7)
        inside = meanfield(model, x).loss  # still unweighted after the inner block
    torch.manual_seed(7)
    assert inside.item() == pytest.approx(-model.elbo(x).sum().item(), rel=1e-6)
    model.beta = 1.0  # changed after construction: the program is the VAE's
    torch.manual_seed(7)
    out = meanfield(model, x)
    assert out.neg_elbo is None and out.loss.item() == pytest.approx(inside.item(), rel=1e-6)


def test_resume_names_a_changed_backend_or_model_setting(tmp_path):
    run = train(_config(model="beta-vae", beta=2.0, epochs=1), tmp_path / "run", **QUIET)
    with pytest.raises(Exception, match=r"trained with other settings: backend \('torch' -> 'pyro'\)"):
        resume_config(run, {"backend": "pyro"})
    with pytest.raises(Exception, match=r"trained with other settings: beta \(2.0 -> 3.0\)"):
        resume_config(run, {"beta": 3.0})


def test_a_setting_of_another_model_is_named_with_model_given(tmp_path, capsys):
    args = ["train", "--model", "vae", "--beta", "2", "--dataset", "digits", "--out", str(tmp_path / "r")]
    assert main(args) == 1
    assert "beta is a setting of model beta-vae, not of vae" in capsys.readouterr().err
