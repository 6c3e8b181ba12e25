"""Attend-Infer-Repeat: the Pyro and hand-written surrogates agree; the spatial
transformer, scores and the CLI path work on tiny data."""

import json

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

from fakes import fake_digit_source
from vaelab import cli
from vaelab.config import resolve
from vaelab.data import multi_mnist
from vaelab.data.batches import DataSpec
from vaelab.errors import ConfigError
from vaelab.models.air import AIR, annealed_prior, boxes_from_where, image_to_window, window_to_image
from vaelab.models.air_scores import box_iou, count_scores, ink_boxes, matched_iou
from vaelab.objectives import make_objective


def small_air(**kwargs):
    torch.manual_seed(0)
    args = dict(
        x_dim=400,
        glimpse_size=8,
        z_what_dim=5,
        rnn_hidden=16,
        encoder_hidden=12,
        decoder_hidden=12,
        predict_hidden=12,
        baseline_hidden=12,
    )
    return AIR(**{**args, **kwargs})


def grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("seed", range(4))
def test_hand_written_surrogate_equals_tracegraph_elbo(seed):
    """Same noise: the same ELBO, surrogate loss and gradients (baselines' included), to 1e-5."""
    model = small_air()
    with torch.no_grad():  # a guide that turns steps on and off about half the time
        model.predict[-1].bias[0] = 0.0
    x = torch.rand(32, 400)
    torch.manual_seed(seed)
    hand_elbo, hand_surrogate = model.surrogate(x)
    hand_surrogate.backward()
    hand_grads = grads(model)
    model.zero_grad()
    torch.manual_seed(seed)
    pyro_elbo, pyro_surrogate = TraceGraph_ELBO(max_plate_nesting=1)._loss_and_surrogate_loss(
        model.model, model.guide, (x,), {}
    )
    pyro_surrogate.backward()
    assert torch.allclose(hand_elbo, torch.as_tensor(pyro_elbo), rtol=1e-5)
    assert torch.allclose(hand_surrogate, pyro_surrogate, rtol=1e-5)
    names = [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, hand_grads, grads(model), strict=True):
        scale = b.abs().max().clamp(min=1e-6)
        assert (a - b).abs().max() / scale < 1e-5, name


@pytest.mark.parametrize("max_steps", [1, 3])
def test_declared_dependencies_are_what_pyro_tracks(max_steps):
    """AIR's discrete_upstream names, for every site of model and guide, the sites provenance finds."""
    from pyro.infer.enum import get_importance_trace
    from pyro.infer.tracegraph_elbo import TrackNonReparam
    from pyro.ops.provenance import get_provenance

    model = small_air(max_steps=max_steps)
    torch.manual_seed(0)
    with TrackNonReparam():
        traces = get_importance_trace("dense", 1, model.model, model.guide, (torch.rand(8, 400),), {})
    sites = [(n, s) for trace in traces for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert len(sites) == 3 * max_steps * 2 + 1  # every step's three sites in both, and x
    for name, site in sites:
        assert model.discrete_upstream(name) == get_provenance(site["log_prob_sum"]), name


@pytest.mark.parametrize("seed", range(3))
def test_the_declared_tracegraph_elbo_is_pyros_bit_for_bit(seed):
    """vaelab's tracegraph objective (declared dependencies) against TraceGraph_ELBO (tracked), same draws."""
    from vaelab.objectives import DeclaredTraceGraph_ELBO

    model = small_air()
    with torch.no_grad():
        model.predict[-1].bias[0] = 0.0
    x = torch.rand(32, 400)
    results = []
    for elbo in (TraceGraph_ELBO(max_plate_nesting=1), make_objective("pyro", "tracegraph").elbo_for(model)):
        model.zero_grad()
        torch.manual_seed(seed)
        value, surrogate = elbo._loss_and_surrogate_loss(model.model, model.guide, (x,), {})
        surrogate.backward()
        results.append((torch.as_tensor(value), surrogate.detach(), grads(model), type(elbo)))
    assert results[1][3] is DeclaredTraceGraph_ELBO
    (v0, s0, g0, _), (v1, s1, g1, _) = results
    assert torch.equal(v0, v1) and torch.equal(s0, s1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))


def test_both_sides_see_absent_and_present_steps():
    """The comparison above is only worth something if masks are exercised both ways."""
    model = small_air()
    with torch.no_grad():
        model.predict[-1].bias[0] = 0.0
    torch.manual_seed(0)
    terms = model._run(torch.rand(32, 400))
    present = terms["log_q_reparam"] != 0
    assert present.any() and (~present).any()


def test_objectives_report_the_elbo_and_follow_the_surrogate():
    """The loop's loss is -ELBO in value and the surrogate in gradient, for both backends."""
    x = torch.rand(16, 400)
    for backend, elbo in (("torch", "trace"), ("pyro", "tracegraph")):
        model = small_air()
        torch.manual_seed(1)
        loss = make_objective(backend, elbo)(model, x).loss
        loss.backward()
        loop_grads = grads(model)
        model.zero_grad()
        torch.manual_seed(1)
        neg_elbo, surrogate = model.surrogate(x)
        surrogate.backward()
        assert loss.item() == pytest.approx(-neg_elbo.item(), rel=1e-6)
        for a, b in zip(loop_grads, grads(model), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the Pyro side sums in another order


def test_elbo_matches_the_surrogates_elbo():
    model = small_air()
    x = torch.rand(8, 400)
    torch.manual_seed(3)
    per_image = model.elbo(x)
    torch.manual_seed(3)
    total, _ = model.surrogate(x)
    assert per_image.shape == (8,)
    assert per_image.sum().item() == pytest.approx(total.item(), rel=1e-6)


def test_window_at_scale_one_is_the_identity():
    """align_corners=False: a window of the whole image, glimpse as large as the image, copies it."""
    image = torch.rand(3, 1, 10, 10)
    where = torch.tensor([[1.0, 0.0, 0.0]]).repeat(3, 1)
    torch.testing.assert_close(image_to_window(where, image, 10), image.view(3, 100))
    torch.testing.assert_close(window_to_image(where, image[:, 0], 10), image.view(3, 100))


def test_a_glimpse_written_then_read_back_is_itself():
    """Scale 2.5 on a 50-pixel canvas: a 20-pixel window holding a 20-pixel glimpse, pixel for pixel."""
    glimpse = torch.rand(2, 20, 20)
    # Centres on the pixel grid: the window starts at a whole pixel (15 and 5).
    where = torch.tensor([[2.5, 0.0, 0.0], [2.5, -0.4, 0.2]])
    image = window_to_image(where, glimpse, 50).view(2, 1, 50, 50)
    torch.testing.assert_close(image_to_window(where, image, 20), glimpse.view(2, 400))
    assert image[0, 0, 15:35, 15:35].sum() == pytest.approx(glimpse[0].sum().item(), rel=1e-5)
    assert image[0].sum() == pytest.approx(glimpse[0].sum().item(), rel=1e-5)  # nothing outside


def test_boxes_from_where_in_pixels():
    boxes = boxes_from_where(torch.tensor([[2.5, 0.0, 0.0], [5.0, -0.5, 0.5]]), 50)
    torch.testing.assert_close(boxes, torch.tensor([[15.0, 15.0, 20.0, 20.0], [7.5, 32.5, 10.0, 10.0]]))


def test_box_iou_and_matching():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    assert box_iou(a, a).item() == 1.0
    assert box_iou(a, torch.tensor([5.0, 0.0, 10.0, 10.0])).item() == pytest.approx(50 / 150)
    assert box_iou(a, torch.tensor([20.0, 20.0, 5.0, 5.0])).item() == 0.0
    truth = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 10.0, 10.0]]])
    # Inferred in the other order, plus a third window marked absent over the first digit.
    inferred = torch.tensor([[[30.0, 30.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]])
    present = torch.tensor([[True, True, False]])
    torch.testing.assert_close(matched_iou(inferred, present, truth, torch.tensor([2])), torch.ones(2))
    # Only one window present: the second digit is matched to nothing and scores 0.
    present = torch.tensor([[False, True, False]])
    torch.testing.assert_close(
        matched_iou(inferred, present, truth, torch.tensor([2])), torch.tensor([1.0, 0])
    )
    torch.testing.assert_close(
        ink_boxes(torch.tensor([0.0, 0.0, 28.0, 28.0])), torch.tensor([4.0, 4.0, 20.0, 20.0])
    )


def test_annealed_prior():
    assert annealed_prior(None, 0.01, 10, 1) == 0.01
    assert annealed_prior(0.5, 0.01, 10, 1) == 0.5
    assert annealed_prior(0.5, 0.01, 2, 2) == pytest.approx((0.5 * 0.01) ** 0.5)
    assert annealed_prior(0.5, 0.01, 10, 11) == 0.01


def test_config_checks_for_air():
    with pytest.raises(ConfigError, match="tracegraph"):
        resolve(preset="air", overrides={"backend": "pyro", "elbo": "trace"})
    with pytest.raises(ConfigError, match="z_pres_prior must be a probability"):
        resolve(preset="air", overrides={"z_pres_prior": 1.5})
    with pytest.raises(ConfigError, match="baseline_lr must be positive"):
        resolve(preset="air", overrides={"baseline_lr": 0})
    for bad in (0, 1):  # its logit would be infinite
        with pytest.raises(ConfigError, match="z_pres_init must be a probability"):
            resolve(preset="air", overrides={"z_pres_init": bad})


@pytest.mark.parametrize("present", [0.95, 0.5, 0.2])
def test_the_guide_starts_each_object_present_with_z_pres_init(present):
    config = resolve(preset="air", overrides={"z_pres_init": present, "device": "cpu"})
    air = AIR(**config.model_args(DataSpec((50, 50))))
    logit = air.predict[-1].bias[0]  # the z_pres head's bias, its weights near 0 at the start
    assert torch.sigmoid(logit).item() == pytest.approx(present, abs=1e-6)


def test_the_default_start_is_the_one_the_preset_always_had():
    config = resolve(preset="air", overrides={"device": "cpu"})
    air = AIR(**config.model_args(DataSpec((50, 50))))
    assert air.predict[-1].bias[0].item() == 3.0  # a logit of 3 (sigmoid 0.9526), exactly


def test_air_refuses_non_square_images():
    with pytest.raises(ValueError, match="square"):
        AIR(x_dim=500)


@pytest.fixture
def tiny_multi_mnist():
    multi_mnist.make(train_size=32, test_size=16, source=fake_digit_source(40, 20))


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_train_and_evaluate_a_few_steps(tiny_multi_mnist, tmp_path, backend, capsys):
    """The CLI smoke: `vaelab train --preset air` for 2 steps, then `vaelab evaluate`."""
    run = tmp_path / backend
    code = cli.main(
        ["train", "--preset", "air", "--backend", backend, "--epochs", "1", "--batch-size", "16"]
        + ["--out", str(run), "--no-progress", "--no-plots"]
    )
    assert code == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= metrics[0]["count_accuracy"] <= 1
    assert np.isfinite(metrics[0]["test_elbo"])
    assert cli.main(["evaluate", str(run), "--iw-samples", "2", "--no-progress"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["iw_samples"] == 2
    assert sum(map(sum, result["count_confusion"])) == 16
    assert 0 <= result["box_iou"] <= 1
    assert result["test_log_likelihood"] >= result["test_elbo"] - 50  # a bound above one sample's, noisy
    assert "count accuracy" in capsys.readouterr().out


def test_evaluate_scores_the_validation_canvases_against_their_own_counts(tiny_multi_mnist, tmp_path):
    run = tmp_path / "run"
    flags = ["--preset", "air", "--epochs", "1", "--batch-size", "8", "--validation", "12"]
    flags += ["--max-steps", "2"]
    assert cli.main(["train", *flags, "--out", str(run), "--no-progress", "--no-plots"]) == 0
    evaluate = ["evaluate", str(run), "--split", "validation", "--iw-samples", "2", "--no-progress"]
    assert cli.main(evaluate) == 0
    result = json.loads((run / "eval.json").read_text())
    assert (result["split"], result["num_images"]) == ("validation", 12)
    truth = multi_mnist.load_split("train")["counts"][-12:]
    confusion = np.array(result["count_confusion"])
    assert confusion.sum(1)[: len(np.bincount(truth))].tolist() == np.bincount(truth).tolist()


def test_count_scores_confusion_counts_every_image():
    model = small_air()
    from vaelab.data.batches import ImageBatches

    images = ImageBatches(np.random.default_rng(0).integers(0, 255, (10, 1, 20, 20), dtype=np.uint8))
    truth = {"counts": np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]), "boxes": np.zeros((10, 2, 4), np.float32)}
    scores = count_scores(model, images, truth, batch_size=4)
    confusion = np.array(scores["count_confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == 10
    assert confusion.sum(1)[:3].tolist() == [4, 3, 3]
    assert scores["count_accuracy"] == pytest.approx(np.trace(confusion) / 10)


def test_pyro_log_weights_loop_over_particles_for_air():
    """AIR's Pyro log-weights (one trace per particle) equal its hand-written ones on the same noise."""
    from vaelab.evaluate import pyro_log_weights

    model = small_air()
    x = torch.rand(6, 400)
    pyro.clear_param_store()
    torch.manual_seed(5)
    hand = model.log_importance_weights(x, 3)
    torch.manual_seed(5)
    traced = pyro_log_weights(model, x, 3)
    torch.testing.assert_close(hand, traced, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_air_resumes_bitwise_with_its_annealed_prior_and_baseline_rate(tiny_multi_mnist, tmp_path, backend):
    """Two epochs straight equal one epoch then --resume: weights, both Adam groups, metrics."""
    from vaelab.train import resume_config, train

    quiet = dict(progress=False, echo=lambda s: None)
    # On the CPU: on a GPU grid_sample's backward adds with atomics, in any order (seen on an H100).
    settings = dict(backend=backend, batch_size=16, eval_batch_size=16, device="cpu")
    settings.update(z_pres_prior_start=0.5, anneal_epochs=2)
    straight = train(resolve(preset="air", overrides={**settings, "epochs": 2}), tmp_path / "a", **quiet)
    train(resolve(preset="air", overrides={**settings, "epochs": 1}), tmp_path / "b", **quiet)
    resumed = train(resume_config(tmp_path / "b", {"epochs": 2}), tmp_path / "b", resume=True, **quiet)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    groups = a["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-3] and len(groups[1]["params"]) == 4  # the baseline's
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    strip = [{k: v for k, v in m.items() if k != "train_seconds"} for m in vaelab_metrics(straight)]
    assert strip == [{k: v for k, v in m.items() if k != "train_seconds"} for m in vaelab_metrics(resumed)]


def vaelab_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_prior_is_annealed_per_epoch(tiny_multi_mnist, tmp_path, monkeypatch):
    from vaelab.run import load_run
    from vaelab.train import train

    config = resolve(
        preset="air",
        overrides=dict(batch_size=16, eval_batch_size=16, epochs=2, z_pres_prior_start=0.5, anneal_epochs=4),
    )
    seen = []  # the prior each training step's loss was computed with
    surrogate = AIR.surrogate
    monkeypatch.setattr(
        AIR, "surrogate", lambda self, x: seen.append(self.z_pres_prior) or surrogate(self, x)
    )
    model = load_run(train(config, tmp_path / "run", progress=False, echo=lambda s: None)).model
    # 2 steps an epoch; the loop sets each epoch's prior before its steps.
    second = 0.5 * (0.01 / 0.5) ** 0.25
    assert seen == pytest.approx([0.5, 0.5, second, second])
    # load_run rebuilds the model from its arguments: the final prior, not epoch 1's.
    assert model.z_pres_prior == 0.01
    model.on_epoch(1, config.settings)
    assert model.z_pres_prior == 0.5
    model.on_epoch(3, config.settings)
    assert model.z_pres_prior == pytest.approx(0.5 * (0.01 / 0.5) ** 0.5)


def test_air_on_plain_mnist_like_images_has_no_count_scores(tmp_path):
    """Digit labels are not counts: no count accuracy is made up for them."""
    from vaelab.train import train

    config = resolve(
        preset="air",
        overrides=dict(dataset="digits", batch_size=64, eval_batch_size=64, epochs=1, z_dim=4, max_steps=1),
    )
    run = train(config, tmp_path / "run", progress=False, echo=lambda s: None)
    assert "count_accuracy" not in vaelab_metrics(run)[0]
