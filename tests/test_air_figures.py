"""Pictures and the report of an AIR run, from a one-epoch run on a tiny fake Multi-MNIST."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from fakes import fake_digit_source
from vaelab import plots
from vaelab.cli import main
from vaelab.config import resolve
from vaelab.data import multi_mnist
from vaelab.figures import AIR_PLOT_NAMES, ALL_PLOT_NAMES, PLOT_NAMES, make_plots
from vaelab.models.air_scores import samples_by_count
from vaelab.train import train

VAE_ONLY = sorted(set(PLOT_NAMES) - set(AIR_PLOT_NAMES))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("air-data")


@pytest.fixture(autouse=True)
def _own_data(_isolated, data_dir, monkeypatch):
    """The fake multi-mnist file lives in a cache of this module's own, not the session's."""
    monkeypatch.setenv("VAELAB_DATA", str(data_dir))


@pytest.fixture(scope="module")
def air_run(tmp_path_factory, data_dir):
    """A one-epoch AIR run (2 steps on 32 canvases), evaluated and plotted: (run_dir, written)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAELAB_DATA", str(data_dir))
        multi_mnist.make(train_size=32, test_size=32, source=fake_digit_source(24, 24))
        run_dir = tmp_path_factory.mktemp("air") / "run"
        overrides = {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "device": "cpu"}
        train(resolve(preset="air", overrides=overrides), run_dir, progress=False, echo=lambda s: None)
        assert main(["evaluate", str(run_dir), "--iw-samples", "2", "--no-progress"]) == 0
        written = make_plots(vaelab.load_run(run_dir), echo=lambda s: None)
    return run_dir, written


def _pixels(path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def _pixels_of(picture: np.ndarray, colour: str, tolerance=12) -> int:
    """Counts the pixels within `tolerance` of `colour` ("#rrggbb") in each channel."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(picture.astype(int) - rgb).max(-1) <= tolerance).sum())


def test_air_run_gets_its_own_pictures_and_not_the_vae_ones(air_run):
    run_dir, written = air_run
    assert list(written) == list(AIR_PLOT_NAMES)  # in the report's order, no num_active_units
    for name, path in written.items():
        assert path == run_dir / "plots" / f"{name}.png"
        picture = _pixels(path)
        assert min(picture.shape[:2]) > 100, name
        assert picture.std() > 10 and len(np.unique(picture.reshape(-1, 3) @ [1, 256, 65536])) > 20, name
    for name in VAE_ONLY:
        assert not (run_dir / "plots" / f"{name}.png").exists(), name
    assert [n for n in ALL_PLOT_NAMES if n in written] == list(AIR_PLOT_NAMES)


def test_air_boxes_of_the_run_draw_every_step_s_windows(air_run):
    _, written = air_run
    # A fresh AIR's guide starts with every step present: each step's colour is all over the picture.
    picture = _pixels(written["air_boxes"])
    for colour in plots.STEP_COLOURS[:3]:
        assert _pixels_of(picture, colour) > 300, colour


def test_report_of_an_air_run_shows_the_counts(air_run, capsys):
    run_dir, _ = air_run
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(AIR_PLOT_NAMES)
    assert "<th>count accuracy</th>" in html  # the metrics table's column
    assert '<td class="key">count_accuracy</td>' in html and '<td class="key">box_iou</td>' in html
    assert "count_confusion" not in html.split("<h2>Pictures</h2>")[0]  # a table of its own, not a list
    assert "true (rows) against inferred (columns)" in html
    assert "windows AIR" in html  # the AIR captions
    assert "interpolations" not in html and "latent_map" not in html


def test_air_boxes_captions_are_red_only_where_the_count_is_wrong(tmp_path):
    images = np.zeros((4, 50, 50))
    images[:, 10:30, 12:24] = 0.8
    boxes = np.tile(np.array([[8.0, 6.0, 20.0, 26.0], [25.0, 20.0, 20.0, 20.0], [0, 0, 0, 0]]), (4, 1, 1))
    present = np.array([[True, False, False], [True, True, False], [False] * 3, [True, False, False]])
    right, wrong = tmp_path / "right.png", tmp_path / "wrong.png"
    plots.air_boxes(images, boxes, present, np.array([1, 2, 0, 1]), right, "all right")
    plots.air_boxes(images, boxes, present, np.array([1, 1, 0, 2]), wrong, "two wrong")
    red = "#d62728"
    assert _pixels_of(_pixels(right), red, 40) == 0
    assert _pixels_of(_pixels(wrong), red, 40) > 20
    # Step 2 is drawn once (image 2); step 1 in three images: more of its colour than the legend's swatch.
    picture = _pixels(right)
    step1, step2 = (_pixels_of(picture, c) for c in plots.STEP_COLOURS[:2])
    assert step1 > step2 > 0


def test_air_boxes_without_true_counts_and_boxes_past_the_edge(tmp_path):
    images = np.random.default_rng(0).random((3, 40, 40))
    boxes = np.array([[[-10.0, -10.0, 30.0, 30.0], [30.0, 30.0, 25.0, 25.0]]] * 3)
    present = np.ones((3, 2), bool)
    path = tmp_path / "boxes.png"
    plots.air_boxes(images, boxes, present, None, path, "no truth")
    picture = _pixels(path)
    assert picture.shape[1] > 300 and picture.shape[0] < picture.shape[1]  # one row of three
    assert _pixels_of(picture, "#d62728", 40) == 0


def test_count_accuracy_curve_and_confusion_draw_what_they_get(tmp_path):
    metrics = [{"epoch": e, "train_elbo": 0.0, "test_elbo": 0.0} for e in range(1, 6)]
    for m in metrics[1:]:
        m["count_accuracy"] = m["epoch"] / 6
    plots.count_accuracy_curve(metrics, tmp_path / "curve.png")
    assert _pixels_of(_pixels(tmp_path / "curve.png"), "#2ca02c") > 50  # the curve, in C2
    assert _pixels_of(_pixels(tmp_path / "curve.png"), "#9467bd") == 0  # no validation split
    for m in metrics[1:]:
        m["val_count_accuracy"] = 1 - m["epoch"] / 6
    plots.count_accuracy_curve(metrics, tmp_path / "curve.png")
    assert _pixels_of(_pixels(tmp_path / "curve.png"), "#9467bd") > 50  # the validation curve, in C4
    confusion = [[5, 1, 0, 0], [0, 7, 2, 0], [0, 1, 9, 0], [0, 0, 0, 0]]  # nobody holds 3 objects
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty row is no division by zero
        plots.count_confusion(confusion, tmp_path / "confusion.png")
    picture = _pixels(tmp_path / "confusion.png")
    assert min(picture.shape[:2]) > 200 and picture.std() > 10


def test_samples_by_count_draws_each_count_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    air = vaelab.models.AIR(x_dim=32 * 32, glimpse_size=8, z_what_dim=4, rnn_hidden=16)
    rows = samples_by_count(air, 20)
    assert rows.shape == (3, 20, 32 * 32)
    assert air.max_steps == 3 and air.z_pres_prior == 0.01
    ink = rows.sum(-1).mean(1)
    assert ink[0] > 0 and ink[0] < ink[1] < ink[2]  # more objects, more ink
