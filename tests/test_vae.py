"""The Pyro program and the hand-written ELBO: same weights, same noise, same numbers."""

import pyro
import pytest
import torch

from vaelab.models import VAE, Loss
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
    loss = loss.loss if isinstance(loss, Loss) else loss  # an objective gives a Loss record
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


def _compiled_graphs(objective):
    # Each compiled Pyro ELBO keeps its graphs in a pyro.ops.jit.CompiledFunction.
    counts = []
    for elbo, _, _ in objective._programs.values():
        function = getattr(elbo, "_differentiable_loss", None) or elbo._loss_and_surrogate_loss
        counts.append(len(function.compiled))
    return counts


@pytest.mark.parametrize(("compiled", "python"), [("jit", "trace"), ("jit-meanfield", "meanfield")])
def test_compiled_elbos_equal_their_python_forms_on_the_same_noise(vae_and_batch, compiled, python):
    vae, x = vae_and_batch
    fast, slow = make_objective("pyro", compiled), make_objective("pyro", python)
    # A smaller last batch between full ones: each shape has its own graph.
    for seed, batch in enumerate([x, x, x[:5], x, x[:5]]):
        _assert_same(
            _loss_and_grads(vae, seed, lambda b=batch: slow(vae, b)),
            _loss_and_grads(vae, seed, lambda b=batch: fast(vae, b)),
        )
    assert _compiled_graphs(fast) == [1, 1]  # traced once per shape, not once per step


@pytest.mark.parametrize("compile_first", [True, False])
def test_a_compiled_elbo_reads_its_own_weights_when_another_model_took_their_names(
    vae_and_batch, compile_first
):
    vae, x = vae_and_batch
    fast, slow = make_objective("pyro", "jit-meanfield"), make_objective("pyro", "meanfield")
    if compile_first:
        fast(vae, x)
        pyro.clear_param_store()
    other = VAE(x_dim=64, z_dim=5, hidden=(32, 16), activation="softplus")
    slow(other, x)  # registers other's weights under the same names
    _assert_same(
        _loss_and_grads(vae, 7, lambda: slow(vae, x)),
        _loss_and_grads(vae, 7, lambda: fast(vae, x)),
    )
    assert all(p.grad is None for p in other.parameters())


def test_elbo_is_one_value_per_image_and_a_lower_bound_shape(vae_and_batch):
    vae, x = vae_and_batch
    elbo = vae.elbo(x)
    assert elbo.shape == (16,) and (elbo < 0).all()


@pytest.mark.parametrize("objective", ["torch", "trace", "meanfield", "mc", "iwae", "dreg", "torch-dreg"])
def test_images_instead_of_flat_pixels_fail_loudly(vae_and_batch, objective):
    vae, _ = vae_and_batch
    images = torch.rand(4, 1, 8, 8)
    if objective.startswith("torch"):
        loss = make_objective("torch", objective.partition("-")[2] or None, 3)
    else:
        loss = make_objective("pyro", objective, 3)
    with pytest.raises(ValueError, match=r"x must be \(batch, 64\) flattened pixels"):
        loss(vae, images)


def test_samples_and_reconstructions_are_pixel_means(vae_and_batch):
    vae, x = vae_and_batch
    samples = vae.sample(7)
    assert samples.shape == (7, 64) and samples.min() >= 0 and samples.max() <= 1
    assert vae.reconstruct(x).shape == x.shape


def test_the_loss_is_one_graph_for_torch_compile():
    """The input checks read values back; under torch.compile they step aside, so nothing splits the graph."""
    import torch._dynamo

    model = VAE(x_dim=16, z_dim=2, hidden=(8,))
    x = torch.rand(4, 16)
    explained = torch._dynamo.explain(lambda x: model.loss(x).loss)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):  # eager still checks
        model.loss(x * 3)
