"""The importance-sampled log-likelihood: two implementations, one number."""

import json

import pytest
import torch

import vaelab
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches
from vaelab.evaluate import evaluate_run, hand_log_weights, log_likelihood, plan_chunks, pyro_log_weights
from vaelab.models import VAE, build_model
from vaelab.train import train


@pytest.fixture
def vae_and_images():
    torch.manual_seed(0)
    vae = VAE(x_dim=64, z_dim=5, hidden=(32,), activation="tanh")
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8).numpy()
    return vae, ImageBatches(images, "static", seed=0)


def test_pyro_log_weights_equal_the_hand_written_ones_on_the_same_noise(vae_and_images):
    vae, images = vae_and_images
    x = images.batch(torch.arange(12))
    torch.manual_seed(3)
    hand = hand_log_weights(vae, x, 7)
    torch.manual_seed(3)
    pyro_ = pyro_log_weights(vae, x, 7)
    assert hand.shape == pyro_.shape == (7, 12)
    torch.testing.assert_close(hand, pyro_, rtol=1e-4, atol=1e-4)


def test_the_two_layer_models_log_weights_agree_pyro_and_hand_and_bound_its_elbo():
    torch.manual_seed(0)
    model = build_model("two-layer-vae", x_dim=64, z1_dim=6, z2_dim=4, hidden1=[16, 16], hidden2=[8, 8])
    images = ImageBatches(torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8).numpy(), "static")
    x = images.batch(torch.arange(12))
    generator = torch.Generator().manual_seed(3)
    hand = hand_log_weights(model, x, 7, generator)
    torch.manual_seed(3)
    pyro_ = pyro_log_weights(model, x, 7)
    torch.testing.assert_close(hand, pyro_, rtol=1e-5, atol=1e-4)
    ll = log_likelihood(model, images, 500, progress=False)
    torch.manual_seed(0)
    elbo = torch.stack([model.elbo(x) for _ in range(50)]).mean(0)
    assert (ll > elbo).all()  # K = 500 above the mean ELBO, image by image


def test_the_two_log_likelihoods_agree_across_chunks(vae_and_images):
    vae, images = vae_and_images
    plan = (5, 30)  # 5 images a batch, 30 samples a chunk: 4 chunks of K=100 with a short last one
    hand = log_likelihood(vae, images, 100, backend="torch", plan=plan, progress=False)
    pyro_ = log_likelihood(vae, images, 100, backend="pyro", plan=plan, progress=False)
    torch.testing.assert_close(hand, pyro_, rtol=1e-4, atol=1e-4)
    # Chunking changes the noise, not the estimate's value beyond Monte Carlo error.
    whole = log_likelihood(vae, images, 100, plan=(12, 100), progress=False)
    assert (whole - hand).abs().max() < 1.0


def test_more_samples_tighten_the_bound(vae_and_images):
    # Means over 20 seeds (measured: K=1 -45.43 ± 0.32, K=10 -44.74 ± 0.17,
    # K=500 -44.64 ± 0.02 per seed); the bound must rise with K.
    vae, images = vae_and_images

    def mean_bound(k):
        runs = [log_likelihood(vae, images, k, progress=False, seed=s).mean() for s in range(20)]
        return torch.stack(runs).mean().item()

    k1, k10, k500 = mean_bound(1), mean_bound(10), mean_bound(500)
    assert k1 + 0.3 < k10 < k500


def test_chunk_plan_fits_the_memory_budget(vae_and_images):
    vae, _ = vae_and_images
    per_particle = 4 * vae.floats_per_particle()
    images, samples = plan_chunks(vae, 10000, 5000, max_memory=2**30)
    assert samples == 5000 and images * samples * per_particle <= 2**30 and images >= 1
    images, samples = plan_chunks(vae, 10000, 5000, max_memory=100 * per_particle)
    assert (images, samples) == (1, 100)


def test_evaluate_run_is_reproducible_and_writes_eval_json(tmp_path):
    config = resolve(
        overrides=dict(dataset="digits", z_dim=4, hidden=(32,), epochs=1, binarize="dynamic", device="cpu")
    )
    train(config, tmp_path / "run", progress=False, echo=lambda s: None)
    run = vaelab.load_run(tmp_path / "run")
    first = evaluate_run(run, iw_samples=50, progress=False)
    second = evaluate_run(run, iw_samples=50, progress=False)
    assert first["test_log_likelihood"] == second["test_log_likelihood"]
    assert first["test_elbo"] == second["test_elbo"]
    assert first["test_log_likelihood"] > first["test_elbo"]
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert {"test_elbo", "test_log_likelihood", "iw_samples", "split", "binarize"} <= set(saved)
    assert saved["binarize"] == "dynamic" and saved["iw_samples"] == 50 and saved["split"] == "test"


def test_threads_do_not_change_the_numbers(vae_and_images):
    vae, images = vae_and_images
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # sequential path
        sequential = log_likelihood(vae, images, 40, plan=(2, 15), progress=False)
        torch.set_num_threads(2)  # one Python thread per core
        threaded = log_likelihood(vae, images, 40, plan=(2, 15), progress=False)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(sequential, threaded, rtol=1e-6, atol=1e-5)
