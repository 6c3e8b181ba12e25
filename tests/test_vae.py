"""The Pyro program and the hand-written ELBO: same weights, same noise, same numbers."""

import pytest
import torch

from vaelab.models import VAE
from vaelab.objectives import make_objective, mc_elbo_loss


@pytest.fixture
def vae_and_batch():
    torch.manual_seed(0)
    vae = VAE(x_dim=64, z_dim=5, hidden=(32, 16), activation="softplus")
    x = torch.rand(16, 64)
    return vae, x


def _loss_and_grads(vae, seed, loss_fn):
    vae.zero_grad()
    torch.manual_seed(seed)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in vae.parameters()]


def _assert_same(a, b):
    loss_a, grads_a = a
    loss_b, grads_b = b
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [1, 2])
def test_trace_elbo_equals_the_hand_written_monte_carlo_elbo(vae_and_batch, seed):
    vae, x = vae_and_batch
    hand = _loss_and_grads(vae, seed, lambda: -vae.elbo(x, analytic_kl=False).sum())
    pyro_ = _loss_and_grads(vae, seed, lambda: make_objective("pyro", "trace")(vae, x))
    _assert_same(hand, pyro_)


def test_mean_field_elbo_equals_the_hand_written_analytic_elbo(vae_and_batch):
    vae, x = vae_and_batch
    hand = _loss_and_grads(vae, 3, lambda: make_objective("torch")(vae, x))
    pyro_ = _loss_and_grads(vae, 3, lambda: make_objective("pyro", "meanfield")(vae, x))
    _assert_same(hand, pyro_)


def test_poutine_elbo_equals_the_hand_written_monte_carlo_elbo(vae_and_batch):
    vae, x = vae_and_batch
    hand = _loss_and_grads(vae, 4, lambda: -vae.elbo(x, analytic_kl=False).sum())
    ours = _loss_and_grads(vae, 4, lambda: mc_elbo_loss(vae.model, vae.guide, x))
    _assert_same(hand, ours)


def test_analytic_and_monte_carlo_kl_differ_per_draw_but_agree_on_average(vae_and_batch):
    vae, x = vae_and_batch
    torch.manual_seed(5)
    analytic = vae.elbo(x)
    torch.manual_seed(5)
    sampled = vae.elbo(x, analytic_kl=False)
    assert not torch.allclose(analytic, sampled)
    # Same z, so the reconstruction terms cancel: the gap is KL's MC error,
    # zero on average. 2000 draws per image, within 4 standard errors.
    gaps = []
    with torch.no_grad():
        for seed in range(2000):
            torch.manual_seed(seed)
            sampled = vae.elbo(x, analytic_kl=False)
            torch.manual_seed(seed)
            gaps.append(sampled - vae.elbo(x))
    gaps = torch.stack(gaps)
    assert (gaps.mean(0).abs() < 4 * gaps.std(0) / 2000**0.5).all()


def test_jit_elbo_is_unbiased_against_the_hand_written_elbo(vae_and_batch):
    # JitTrace_ELBO draws its noise with another kernel, so it can only agree
    # in distribution: 400 draws each, means within 4 standard errors.
    vae, x = vae_and_batch
    jit = make_objective("pyro", "jit")
    with torch.no_grad():
        jit_draws = torch.stack([jit(vae, x) for _ in range(400)])
        hand_draws = torch.stack([-vae.elbo(x, analytic_kl=False).sum() for _ in range(400)])
    stderr = (jit_draws.var() / 400 + hand_draws.var() / 400).sqrt()
    assert abs(jit_draws.mean() - hand_draws.mean()) < 4 * stderr
    assert jit_draws.std() > 0  # the noise is drawn afresh, not frozen into the trace


def test_jit_elbo_handles_a_smaller_last_batch(vae_and_batch):
    vae, x = vae_and_batch
    jit = make_objective("pyro", "jit")
    jit(vae, x).backward()
    loss = jit(vae, x[:5])
    assert loss.shape == () and torch.isfinite(loss)


def test_elbo_is_one_value_per_image_and_a_lower_bound_shape(vae_and_batch):
    vae, x = vae_and_batch
    elbo = vae.elbo(x)
    assert elbo.shape == (16,) and (elbo < 0).all()


@pytest.mark.parametrize("objective", ["torch", "trace", "meanfield", "mc"])
def test_images_instead_of_flat_pixels_fail_loudly(vae_and_batch, objective):
    vae, _ = vae_and_batch
    images = torch.rand(4, 1, 8, 8)
    loss = make_objective("torch" if objective == "torch" else "pyro", objective)
    with pytest.raises(ValueError, match=r"x must be \(batch, 64\) flattened pixels"):
        loss(vae, images)


def test_samples_and_reconstructions_are_pixel_means(vae_and_batch):
    vae, x = vae_and_batch
    samples = vae.sample(7)
    assert samples.shape == (7, 64) and samples.min() >= 0 and samples.max() <= 1
    assert vae.reconstruct(x).shape == x.shape
