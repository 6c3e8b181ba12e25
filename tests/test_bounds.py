"""IWAE and DReG, and --particles: Pyro and by hand on the same noise, and what DReG's gradient is."""

import json
import math

import pytest
import torch

from vaelab.bounds import bound_loss
from vaelab.config import resolve
from vaelab.data.batches import Batch
from vaelab.errors import ConfigError
from vaelab.models import VAE, build_model
from vaelab.objectives import make_objective


def _vae():
    torch.manual_seed(0)
    return VAE(x_dim=64, z_dim=5, hidden=(32, 16), activation="tanh")


def _two_layer():
    torch.manual_seed(0)
    return build_model("two-layer-vae", x_dim=64, z1_dim=6, z2_dim=4, hidden1=[16, 16], hidden2=[8, 8])


MODELS = {"vae": _vae, "two-layer-vae": _two_layer}


def _run(model, objective, x, seed=1):
    model.zero_grad()
    torch.manual_seed(seed)
    out = objective(model, x)
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters()]


def _assert_same(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=1e-5, atol=0)
    if out_a.neg_elbo is not None or out_b.neg_elbo is not None:
        torch.testing.assert_close(out_a.neg_elbo, out_b.neg_elbo, rtol=1e-5, atol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5 * gb.abs().max().item())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    ("elbo", "particles"), [("iwae", 1), ("iwae", 5), ("dreg", 5), ("trace", 4), ("mc", 3)]
)
def test_pyro_and_hand_written_objectives_agree_on_the_same_noise(name, elbo, particles):
    model, x = MODELS[name](), torch.rand(16, 64)
    hand_elbo = "trace" if elbo == "mc" else elbo  # mc is Pyro's trace written with poutine
    hand = _run(model, make_objective("torch", hand_elbo, particles), x)
    pyro_ = _run(model, make_objective("pyro", elbo, particles), x)
    _assert_same(hand, pyro_)


def test_mean_field_particles_agree_and_are_the_mean_over_draws():
    model, x = _vae(), torch.rand(16, 64)
    hand = _run(model, make_objective("torch", "meanfield", 4), x)
    _assert_same(hand, _run(model, make_objective("pyro", "meanfield", 4), x))
    torch.manual_seed(1)
    eps = torch.randn(4, 16, 5)
    z_loc, z_scale = model.encode(Batch(x))
    logits = model.decode(z_loc + z_scale * eps)
    rec = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    expected = -(rec.sum(-1).mean(0) - model.kl(None, z_loc, z_scale)).sum()
    torch.testing.assert_close(hand[0].loss, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_the_bound_is_the_log_mean_weight_and_one_particle_is_the_elbo(name):
    model, x = MODELS[name](), torch.rand(16, 64)
    torch.manual_seed(3)
    log_w = model.log_weights(x, 7)
    torch.manual_seed(3)
    out = make_objective("torch", "iwae", 7)(model, x)
    torch.testing.assert_close(out.loss, -(torch.logsumexp(log_w, 0) - math.log(7)).sum())
    torch.testing.assert_close(out.neg_elbo, -log_w.mean(0).sum())
    assert out.loss < out.neg_elbo  # log-mean-exp >= mean (Jensen), strictly for unequal weights
    torch.manual_seed(4)
    one = make_objective("torch", "iwae", 1)(model, x).loss
    torch.manual_seed(4)
    torch.testing.assert_close(one, -model.elbo(x, analytic_kl=False).sum())


def _encoder_and_decoder_grads(model):
    return (
        torch.cat([p.grad.flatten() for p in model.encoder.parameters()]),
        torch.cat([p.grad.flatten() for p in model.decoder.parameters()]),
    )


@pytest.mark.parametrize("name", MODELS)
def test_dregs_hook_gives_the_squared_weights_for_the_encoder_and_iwaes_gradient_for_the_decoder(name):
    """The hook against the estimator written out: Σ w̃² ∇φ log w (q stopped) and Σ w̃ ∇θ log w."""
    model, x, k = MODELS[name](), torch.rand(8, 64), 6
    _run(model, make_objective("torch", "dreg", k), x, seed=5)
    hooked = _encoder_and_decoder_grads(model)

    model.zero_grad()
    torch.manual_seed(5)
    log_w = model.log_weights(x, k, stop_guide=True)
    weights = torch.softmax(log_w.detach(), 0)
    encoder = list(model.encoder.parameters())
    decoder = list(model.decoder.parameters())
    by_formula_encoder = torch.autograd.grad(-(weights**2 * log_w).sum(), encoder, retain_graph=True)
    by_formula_decoder = torch.autograd.grad(-(weights * log_w).sum(), decoder)
    torch.testing.assert_close(hooked[0], torch.cat([g.flatten() for g in by_formula_encoder]))
    torch.testing.assert_close(hooked[1], torch.cat([g.flatten() for g in by_formula_decoder]))


def _gradient_draws(model, x, elbo, k, draws):
    objective, rows = make_objective("torch", elbo, k), []
    for seed in range(draws):
        _run(model, objective, x, seed=seed)
        rows.append(_encoder_and_decoder_grads(model)[0])
    return torch.stack(rows)


def test_dreg_and_iwae_encoder_gradients_share_their_mean_and_dreg_varies_less_at_k_50(capsys):
    """Tucker et al. (2018): DReG is unbiased for IWAE's encoder gradient; its variance falls with K.

    Tolerance: each coordinate's mean difference within 4.5 standard errors of
    the difference (400 draws each; for 467 Gaussian coordinates the largest
    |z| exceeds 4.5 with probability about 0.3%).
    """
    model, x, draws = _vae(), torch.rand(4, 64).round(), 400
    iwae = _gradient_draws(model, x, "iwae", 50, draws)
    dreg = _gradient_draws(model, x, "dreg", 50, draws)
    se = (iwae.var(0) / draws + dreg.var(0) / draws).sqrt()
    z = (iwae.mean(0) - dreg.mean(0)) / se.clamp_min(1e-12)
    assert z.abs().max() < 4.5, z.abs().max()
    iwae_var, dreg_var = iwae.var(0).sum().item(), dreg.var(0).sum().item()
    with capsys.disabled():
        print(f"\n  encoder-gradient variance, K=50, over weights: IWAE {iwae_var:.4g}, DReG {dreg_var:.4g}")
    assert dreg_var < iwae_var / 2


def test_bound_loss_without_dreg_leaves_gradients_alone():
    z = torch.randn(3, 2, 4, requires_grad=True)
    out = bound_loss(lambda use: -(use(z) ** 2).sum(-1), 3, dreg=False)
    out.loss.backward()
    expected = torch.autograd.grad(-(torch.logsumexp(-(z**2).sum(-1), 0) - math.log(3)).sum(), z)[0]
    torch.testing.assert_close(-z.grad, -expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "air", "dataset": "multi-mnist", "elbo": "iwae"}, "--elbo iwae: .* air has discrete"),
        ({"model": "air", "dataset": "multi-mnist", "backend": "pyro", "elbo": "dreg"}, "--elbo dreg: .*air"),
        ({"model": "air", "dataset": "multi-mnist", "particles": 3}, "--particles 3: model air takes one"),
        ({"model": "beta-vae", "elbo": "iwae"}, "--elbo iwae: .* beta-vae does not train on them"),
        ({"model": "two-layer-vae", "backend": "pyro", "elbo": "meanfield"}, "not mean-field"),
        ({"elbo": "jit"}, "elbo jit is Pyro's own; backend torch writes trace, meanfield, iwae, dreg"),
        ({"particles": 0}, "particles must be at least 1"),
        (
            {"model": "air", "dataset": "multi-mnist", "elbo": "meanfield"},
            "model air's guide is not mean-field",
        ),
        (
            {"model": "cvae-completion", "backend": "pyro", "elbo": "jit"},
            "model cvae-completion's Pyro program needs --elbo trace or meanfield",
        ),
    ],
)
def test_objectives_a_model_cannot_train_on_are_one_line_naming_the_flag(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(overrides=overrides)


def test_a_bound_run_logs_its_objective_beside_the_elbo(tmp_path):
    from vaelab.train import train

    config = resolve(
        overrides=dict(
            dataset="digits", z_dim=3, hidden=(16,), epochs=1, elbo="iwae", particles=4, device="cpu"
        )
    )
    train(config, tmp_path / "run", progress=False, echo=lambda s: None)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["train_objective"] > line["train_elbo"]  # the bound is above the ELBO of the same draws
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["elbo"] == "iwae" and saved["particles"] == 4 and saved["backend"] == "torch"


def test_dreg_refuses_a_model_whose_log_weights_skip_use():
    with pytest.raises(NotImplementedError, match="must pass each draw through use"):
        bound_loss(lambda use: torch.zeros(3, 2, requires_grad=True), 3, dreg=True)


def test_a_torch_run_records_meanfield_as_its_default_so_resume_agrees_either_way():
    assert "elbo" not in resolve(overrides={"elbo": "meanfield"}).to_dict()
    assert resolve(overrides={"elbo": "trace"}).to_dict()["elbo"] == "trace"


def test_compare_sets_the_presets_own_objective_aside_and_refuses_bounds():
    from vaelab.compare import _config_of

    torch_row = _config_of("burda-1layer-iwae-k5", "torch", {})
    pyro_row = _config_of("burda-1layer-iwae-k5", "pyro:trace", {})
    assert (torch_row.elbo, pyro_row.elbo, torch_row.particles, pyro_row.particles) == (None, "trace", 5, 5)
    with pytest.raises(ConfigError, match="compare sets Pyro's ELBOs beside the hand-written one"):
        _config_of("pytorch-examples", "pyro:iwae", {})
