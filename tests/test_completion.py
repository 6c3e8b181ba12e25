"""Pyro's CVAE task, completing digits from quadrants: the baseline's and the CVAE's programs equal their
hand-written objectives on the same noise; the quadrants cut as Pyro's example cuts them; the baseline
trains first; the table's numbers come out of evaluate."""

import json

import pytest
import torch

from vaelab.cli import main
from vaelab.config import resolve
from vaelab.data.batches import ImageBatches
from vaelab.evaluate import hand_log_weights, pyro_log_weights
from vaelab.models import build_model
from vaelab.models.completion import given_mask
from vaelab.objectives import make_objective

X = torch.rand(5, 30, generator=torch.Generator().manual_seed(0), dtype=torch.double)


def _model(quadrants=2):
    torch.manual_seed(0)
    return build_model(
        "cvae-completion", image_shape=[6, 5], quadrants=quadrants, z_dim=3, hidden=[8, 7]
    ).double()


def _run(model, objective):
    model.zero_grad()
    torch.manual_seed(3)
    out = objective(model, X)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("baseline", [True, False], ids=["baseline", "cvae"])
@pytest.mark.parametrize(("hand", "pyro"), [("trace", "trace"), (None, "meanfield"), ("trace", "mc")])
def test_pyro_and_hand_agree_on_the_same_noise(baseline, hand, pyro):
    model = _model()
    model.training_baseline = baseline
    by_hand, hand_grads = _run(model, make_objective("torch", hand))
    traced, pyro_grads = _run(model, make_objective("pyro", pyro))
    torch.testing.assert_close(by_hand, traced, rtol=1e-5, atol=0)
    assert set(hand_grads) == set(pyro_grads)
    for name, grad in hand_grads.items():
        torch.testing.assert_close(grad, pyro_grads[name], rtol=1e-5, atol=1e-8)
    trained = {name.split(".")[0] for name, g in hand_grads.items() if g.abs().sum() > 0}
    # The baseline trains alone first; then it is frozen and the CVAE's three networks train.
    assert trained == ({"baseline"} if baseline else {"prior_net", "recognition_net", "generation_net"})


def test_the_quadrants_are_pyros_cut():
    # Given, one entry per quadrant: the bottom-left; the left half; all but the bottom-right.
    for quadrants, wanted in [(1, [[0, 0], [1, 0]]), (2, [[1, 0], [1, 0]]), (3, [[1, 1], [1, 0]])]:
        mask = given_mask((4, 6), quadrants).reshape(4, 6)
        assert torch.equal(mask[::2, ::3], torch.tensor(wanted, dtype=torch.bool)), quadrants
    assert given_mask((5, 7), 1).reshape(5, 7)[2:, :3].all() and not given_mask((5, 7), 1)[:14].any()


def test_the_evaluation_weights_agree_and_the_bound_sits_below_them():
    model = _model(quadrants=1)
    torch.manual_seed(4)
    hand = hand_log_weights(model, X, 6)
    torch.manual_seed(4)
    torch.testing.assert_close(hand, pyro_log_weights(model, X, 6), rtol=1e-6, atol=1e-6)
    many = hand_log_weights(model, X, 4000, torch.Generator().manual_seed(0))
    estimate = torch.logsumexp(many, 0) - torch.log(torch.tensor(4000.0, dtype=torch.double))
    assert (estimate > model.elbo(X) - 0.5).all()


def test_the_baseline_epochs_come_first_and_the_table_is_in_eval_json(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--model", "cvae-completion", "--dataset", "digits", "--quadrants", "3", "--z-dim", "2"]
    flags += ["--hidden", "16", "--baseline-epochs", "2", "--epochs", "3", "--no-progress", "--out", str(run)]
    assert main(["train", *flags]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [round(line["baseline_nll"], 6) for line in lines[1:]] == [round(lines[1]["baseline_nll"], 6)] * 2
    assert (run / "plots" / "completions.png").exists()
    assert main(["evaluate", str(run), "--iw-samples", "20", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    scores = json.dumps(result)
    assert "baseline_nll" in scores and "cvae_nll_elbo" in scores
    assert main(["sample", str(run)]) == 1
    assert "completes given images" in capsys.readouterr().err


def test_the_presets_are_pyros_example():
    for q in (1, 2, 3):
        config = resolve(preset=f"pyro-cvae-q{q}")
        assert (config.settings.quadrants, config.settings.z_dim, tuple(config.settings.hidden)) == (
            q,
            200,
            (500, 500),
        )
        assert (config.batch_size, config.lr, config.binarize) == (128, 1e-3, "none")
    images = ImageBatches(torch.zeros(3, 1, 1, 4, dtype=torch.uint8).numpy())
    with pytest.raises(Exception, match="needs images of at least 2x2"):
        resolve(overrides={"model": "cvae-completion"}).model_args(images.spec)
