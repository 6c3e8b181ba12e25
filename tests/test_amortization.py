"""The amortisation gap: a Normal fitted per image, in Pyro and by hand, from the encoder's output."""

import json

import pytest
import torch

from vaelab.amortization import amortization_gap, fit_local
from vaelab.cli import main
from vaelab.data.batches import Batch, ImageBatches
from vaelab.models import VAE, build_model
from vaelab.objectives import clear_param_store


def _model_and_images():
    torch.manual_seed(0)
    model = VAE(x_dim=64, z_dim=4, hidden=(32,), activation="tanh")
    images = ImageBatches((torch.rand(30, 8, 8) * 255).to(torch.uint8).numpy())
    return model, images


@pytest.mark.parametrize(
    ("model_name", "subsample"), [("vae", None), ("vae", 3), ("beta-vae", 3), ("cvae", 3)]
)
def test_pyro_local_guide_and_the_hand_written_fit_agree_on_the_same_noise(model_name, subsample):
    torch.manual_seed(0)
    args = dict(x_dim=64, z_dim=4, hidden=(32,), activation="tanh")
    if model_name == "beta-vae":
        args["beta"] = 3.0
    if model_name == "cvae":
        args["num_classes"] = 3
    model = build_model(model_name, **args)
    batch = Batch(torch.rand(7, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0]) if model_name == "cvae" else None)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fitted = {}
    for backend in ("torch", "pyro"):
        clear_param_store()
        torch.manual_seed(3)
        fitted[backend] = fit_local(model, batch, steps=20, lr=0.01, backend=backend, batch_size=subsample)
    for hand, pyro_ in zip(fitted["torch"], fitted["pyro"], strict=True):
        torch.testing.assert_close(hand, pyro_, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        start = model.encode(batch)
    assert fitted["torch"][0].shape == (7, 4)
    assert (fitted["torch"][0] != start[0]).all(dim=1).all()  # every image's row moved
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # no gradient taken
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # weights as they were


def test_fitting_each_image_raises_its_elbo_and_the_gap_is_their_difference():
    model, images = _model_and_images()
    result = amortization_gap(model, images, num_images=25, steps=200, batch_size=10, particles=50)
    assert result["optimized_elbo"] > result["amortized_elbo"]
    assert result["amortization_gap"] == pytest.approx(result["optimized_elbo"] - result["amortized_elbo"])
    assert result["gap_images"] == 25 and result["gap_steps"] == 200
    longer = amortization_gap(model, images, num_images=25, steps=600, batch_size=10, particles=50)
    assert longer["amortized_elbo"] == result["amortized_elbo"]  # same draws, same encoder
    assert longer["optimized_elbo"] > result["optimized_elbo"]


def test_evaluate_writes_the_gap_to_eval_json(tiny_run, capsys):
    code = main(
        ["evaluate", str(tiny_run), "--iw-samples", "5", "--amortization-gap", "--gap-images", "20",
         "--gap-steps", "30", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    saved = json.loads((tiny_run / "eval.json").read_text())
    assert saved["gap_images"] == 20 and saved["amortization_gap"] > 0
    assert "amortization gap" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gap-steps", "0"], "--gap-steps must be in [1, 10^7], got 0"),
        (["--gap-images", "-3"], "--gap-images must be in [1, 10^7], got -3"),
    ],
)
def test_bad_gap_settings_are_one_line(tiny_run, capsys, extra, message):
    assert main(["evaluate", str(tiny_run), "--amortization-gap", *extra]) == 1
    assert capsys.readouterr().err.strip() == f"vaelab: error: {message}"


def test_the_gap_is_refused_for_models_without_one_gaussian_latent(tmp_path, capsys):
    run = tmp_path / "two"
    flags = "--model two-layer-vae --dataset digits --epochs 1 --device cpu --no-progress --z1-dim 4"
    assert main(["train", *flags.split(), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--amortization-gap"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vaelab: error: --amortization-gap: ") and "two-layer-vae" in err
    assert not (run / "eval.json").exists()


def test_gap_settings_without_the_gap_are_refused(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run), "--gap-steps", "5"]) == 1
    assert capsys.readouterr().err.strip() == "vaelab: error: --gap-steps applies with --amortization-gap"
