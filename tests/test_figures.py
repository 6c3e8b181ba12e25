"""Pictures and the report, from a run directory trained on 8×8 digits."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from vaelab.cli import main
from vaelab.config import resolve
from vaelab.figures import PLOT_NAMES, make_plots
from vaelab.models.latent_pictures import interpolation_rows, traversal_rows
from vaelab.plots import image_grid
from vaelab.train import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("figures") / "run"
    config = resolve(overrides=dict(dataset="digits", z_dim=2, hidden=(32,), epochs=2, lr=3e-3, device="cpu"))
    train(config, run_dir, progress=False, echo=lambda s: None)
    return run_dir


def test_every_picture_is_written_and_is_a_real_png(trained_run):
    written = make_plots(vaelab.load_run(trained_run), tsne_points=200, echo=lambda s: None)
    assert set(PLOT_NAMES) <= set(written)  # a 2-D latent also gets the manifold
    for name in PLOT_NAMES:
        with Image.open(written[name]) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100, name
    assert 0 <= written["num_active_units"] <= 2


def test_interpolation_ends_are_the_reconstructions():
    torch.manual_seed(0)
    vae = vaelab.models.VAE(x_dim=64, z_dim=3, hidden=(16,))
    a, b = torch.rand(2, 64), torch.rand(2, 64)
    rows = interpolation_rows(vae, (a, b), 5, (8, 8))
    assert rows.shape == (2, 5, 8, 8)
    np.testing.assert_allclose(rows[:, 0].reshape(2, 64), vae.reconstruct(a).numpy(), rtol=1e-5)
    np.testing.assert_allclose(rows[:, -1].reshape(2, 64), vae.reconstruct(b).numpy(), rtol=1e-5)


def test_traversal_changes_only_the_chosen_dimension():
    torch.manual_seed(0)
    vae = vaelab.models.VAE(x_dim=64, z_dim=3, hidden=(16,))
    z_ref = torch.zeros(1, 3)
    rows = traversal_rows(vae, z_ref, [2], np.array([0.0, 1.0]), (8, 8))
    expected = torch.sigmoid(vae.decoder(torch.tensor([[0.0, 0.0, 1.0]]))).detach().numpy()
    np.testing.assert_allclose(rows[0, 1].reshape(1, 64), expected, rtol=1e-5)


def test_image_grid_places_each_image():
    images = np.stack([np.full((2, 3), v) for v in (0.0, 0.5, 1.0)])
    grid = image_grid(images, ncol=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
    assert grid[1, 1] == 0 and grid[1, 5] == 128 and grid[4, 1] == 255


def test_report_is_self_contained_with_every_picture_and_the_eval(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--iw-samples", "20", "--no-progress"]) == 0
    assert "log p(x), K=20" in capsys.readouterr().out
    assert main(["plot", str(trained_run), "--tsne-points", "100"]) == 0
    html = (trained_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOT_NAMES)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched from a network
    assert "test_log_likelihood" in html and "Configuration" in html and "torch" in html
    assert f"<td>{vaelab.load_run(trained_run).metrics[-1]['test_elbo']:.3f}</td>" in html


def test_evaluate_rejects_bad_numbers(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--iw-samples", "0"]) == 1
    assert "--iw-samples must be at least 1, got 0" in capsys.readouterr().err
    assert main(["evaluate", str(trained_run), "--max-memory", "lots"]) == 1
    assert "--max-memory must be a size like 2G" in capsys.readouterr().err
