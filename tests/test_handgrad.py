"""--hand-gradients: the MLP VAE's step without autograd is autograd's step, to float rounding.

Gradients are held to autograd's on the same noise (1e-5 of each tensor's
largest gradient) for every objective, activation and particle count it
writes; Adam's fused kernel, called directly, to ``Adam.step`` bit for bit;
a run to the autograd run's metrics; a resumed run to one straight through,
bit for bit. The speed is measured in benchmarks/small_batch.py, not here.
"""

import copy
import itertools
import json

import pytest
import torch

from vaelab.cli import main
from vaelab.config import resolve
from vaelab.train import build_state, resume_config, train, train_step

TINY = dict(dataset="digits", z_dim=5, hidden=(32, 16), batch_size=16, binarize="dynamic", device="cpu")
TWO = {k: v for k, v in TINY.items() if k not in ("z_dim", "hidden")} | dict(
    model="two-layer-vae", z1_dim=6, z2_dim=4, hidden1=(16, 16), hidden2=(8, 8)
)
QUIET = dict(progress=False, echo=lambda s: None)


def _states(overrides, base=TINY):
    """Returns (autograd state, hand state) of the same config and weights."""
    config = resolve(overrides=base | overrides)
    autograd = build_state(config)
    hand = build_state(resolve(overrides=base | overrides | {"hand_gradients": True}))
    hand.model.load_state_dict(autograd.model.state_dict())
    return autograd, hand


@pytest.mark.parametrize(
    "activation, elbo, particles",
    list(itertools.product(["tanh", "relu", "softplus"], [None, "trace", "iwae", "dreg"], [1, 3])),
)
def test_the_hand_written_gradients_are_autograds_on_the_same_noise(activation, elbo, particles):
    overrides = {"activation": activation, "particles": particles} | ({"elbo": elbo} if elbo else {})
    _same_gradients(overrides)


@pytest.mark.parametrize(
    "model, elbo, particles",
    [("beta-vae", None, 1), ("beta-vae", "trace", 3), ("cvae", None, 1), ("cvae", "trace", 3)]
    + [("cvae", "iwae", 3), ("cvae", "dreg", 3)],
)
def test_the_beta_vae_and_the_cvae_have_autograds_gradients(model, elbo, particles):
    _same_gradients({"model": model, "particles": particles} | ({"elbo": elbo} if elbo else {}))


@pytest.mark.parametrize(
    "activation, elbo, particles",
    [("tanh", None, 1), ("tanh", None, 3), ("tanh", "iwae", 1), ("tanh", "iwae", 3)]
    + [
        ("relu", None, 3),
        ("softplus", "iwae", 3),
        ("tanh", "dreg", 1),
        ("tanh", "dreg", 3),
        ("relu", "dreg", 2),
    ],
)
def test_the_two_layer_vae_has_autograds_gradients(activation, elbo, particles):
    overrides = {"activation": activation, "particles": particles} | ({"elbo": elbo} if elbo else {})
    _same_gradients(overrides, TWO)


@pytest.mark.parametrize(
    "overrides",
    [{"hidden1": (16,), "hidden2": (8, 8, 8)}, {"hidden1": (16, 12, 8), "hidden2": (8,), "elbo": "trace"}]
    + [{"model": "beta-vae", "beta": 0.5, "particles": 3}, {"model": "cvae", "elbo": "iwae", "particles": 2}],
    ids=["two-layer-1-3", "two-layer-3-1-trace", "beta-half-k3", "cvae-iwae-k2"],
)
def test_one_image_and_other_depths_have_autograds_gradients(overrides):
    base = TWO if "hidden1" in overrides else TINY
    _same_gradients(overrides | {"particles": overrides.get("particles", 2)}, base, images=1)


def _same_gradients(overrides, base=TINY, images=16):
    autograd, hand = _states(overrides, base)
    batch = autograd.train_data.batch(torch.arange(images))
    torch.manual_seed(3)
    expected = autograd.loss_fn(batch)
    expected.loss.backward()
    after_autograd = torch.randn(4)
    torch.manual_seed(3)
    got = hand.hand._gradients(batch.x, batch.y)
    assert torch.equal(torch.randn(4), after_autograd)  # the same draws, so the random stream moves alike
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    if expected.neg_elbo is not None:  # a bound's, or the β-VAE's: the ELBO of the same draws too
        assert got.neg_elbo.item() == pytest.approx(expected.neg_elbo.item(), rel=1e-5)
    else:
        assert got.neg_elbo is None
    for (name, p), q in zip(autograd.model.named_parameters(), hand.model.parameters(), strict=True):
        grad = hand.hand.grads[q]
        assert (grad - p.grad).abs().max() <= 1e-5 * p.grad.abs().max(), name


@pytest.mark.parametrize("elbo", [None, "trace", "iwae", "dreg"])
def test_one_image_through_one_hidden_layer_has_autograds_gradients(elbo):
    overrides = {"hidden": (8,), "particles": 2} | ({"elbo": elbo} if elbo else {})
    autograd, hand = _states(overrides)
    batch = autograd.train_data.batch(torch.tensor([7]))
    torch.manual_seed(1)
    expected = autograd.loss_fn(batch)
    expected.loss.backward()
    torch.manual_seed(1)
    assert hand.hand._gradients(batch.x).loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    for p, q in zip(autograd.model.parameters(), hand.model.parameters(), strict=True):
        assert (hand.hand.grads[q] - p.grad).abs().max() <= 1e-5 * p.grad.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("elbo", [None, "iwae"])
def test_on_a_gpu_the_hand_step_trains_as_autograds(elbo):
    """Run where a GPU is lent (CI has none): three steps each way, the weights within float rounding."""
    extra = {"device": "cuda"} | ({"elbo": elbo, "particles": 3} if elbo else {})
    autograd, hand = _states(extra)
    for step in range(3):
        batch = autograd.train_data.batch(torch.arange(16 * step, 16 * step + 16, device="cuda"))
        for state in (autograd, hand):
            torch.manual_seed(step)
            train_step(state, batch)
    for p, q in zip(autograd.model.parameters(), hand.model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clip_grad", [None, 0.5])
def test_adams_kernel_called_directly_is_adam_step_bit_for_bit(clip_grad):
    autograd, hand = _states({"clip_grad": clip_grad})
    for step in range(6):  # the first builds Adam's state through Adam.step, the rest call its kernel
        if step == 2:  # a checkpoint loaded into the optimiser replaces its state's tensors
            hand.optimizer.load_state_dict(copy.deepcopy(autograd.optimizer.state_dict()))
        if step == 4:  # a checkpoint of another Adam (not fused): then Adam.step itself steps
            saved = autograd.optimizer.state_dict()
            saved["param_groups"][0]["fused"] = None
            for optimizer in (autograd.optimizer, hand.optimizer):
                optimizer.load_state_dict(copy.deepcopy(saved))
        for optimizer in (autograd.optimizer, hand.optimizer):  # a schedule's rate, read every step
            optimizer.param_groups[0]["lr"] = 1e-3 * 0.7**step
        batch = hand.train_data.batch(torch.arange(16 * step, 16 * step + 16))
        hand.hand._gradients(batch.x)
        autograd.optimizer.zero_grad(set_to_none=True)
        for p, q in zip(autograd.model.parameters(), hand.model.parameters(), strict=True):
            p.grad = hand.hand.grads[q].clone()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(list(autograd.model.parameters()), clip_grad, foreach=True)
            hand.hand._clip()
        autograd.optimizer.step()
        with torch.no_grad():
            hand.hand._adam_step()
        for p, q in zip(autograd.model.parameters(), hand.model.parameters(), strict=True):
            assert torch.equal(p, q)
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(autograd.optimizer.state[p][key], hand.optimizer.state[q][key]), key


def _metrics(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "train_seconds"} for line in lines]


@pytest.mark.parametrize(
    "extra",
    [{}, {"elbo": "iwae", "particles": 3}, {"elbo": "dreg", "particles": 3}, {"model": "beta-vae"}]
    + [{"model": "cvae"}],
    ids=["vae", "iwae", "dreg", "beta-vae", "cvae"],
)
def test_a_run_with_hand_gradients_trains_as_the_autograd_run(tmp_path, extra):
    _trains_alike(tmp_path, TINY | {"epochs": 2, "lr": 3e-3} | extra)


@pytest.mark.parametrize("elbo", [None, "iwae"])
def test_a_two_layer_run_with_hand_gradients_trains_as_the_autograd_run(tmp_path, elbo):
    _trains_alike(
        tmp_path, TWO | {"epochs": 2, "lr": 3e-3} | ({"elbo": elbo, "particles": 3} if elbo else {})
    )


def _trains_alike(tmp_path, overrides):
    runs = {}
    for hand in (False, True):
        runs[hand] = train(
            resolve(overrides=overrides | {"hand_gradients": hand}), tmp_path / str(hand), **QUIET
        )
    autograd, hand = (_metrics(runs[h]) for h in (False, True))
    assert [m["epoch"] for m in hand] == [1, 2]
    for a, b in zip(autograd, hand, strict=True):  # 180 steps apart only by float rounding
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    config = json.loads((runs[True] / "config.json").read_text())
    assert config["hand_gradients"] is True


def test_a_hand_gradient_run_resumes_bit_for_bit(tmp_path):
    config = resolve(overrides=TINY | {"epochs": 3, "hand_gradients": True})
    straight = train(config, tmp_path / "straight", **QUIET)
    train(resolve(overrides=TINY | {"epochs": 1, "hand_gradients": True}), tmp_path / "split", **QUIET)
    resumed = train(
        resume_config(tmp_path / "split", {"epochs": 3}), tmp_path / "split", resume=True, **QUIET
    )
    a, b = (torch.load(run / "checkpoint.pt", weights_only=True) for run in (straight, resumed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for ka, kb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(ka[k], kb[k]) for k in ka)
    assert _metrics(straight) == _metrics(resumed)


def test_a_run_resumed_with_hand_gradients_on_goes_on_as_the_autograd_run(tmp_path):
    straight = train(resolve(overrides=TINY | {"epochs": 2}), tmp_path / "straight", **QUIET)
    train(resolve(overrides=TINY | {"epochs": 1}), tmp_path / "split", **QUIET)
    config = resume_config(tmp_path / "split", {"epochs": 2, "hand_gradients": True})
    assert config.hand_gradients is True
    resumed = train(config, tmp_path / "split", resume=True, **QUIET)
    a, b = _metrics(straight), _metrics(resumed)
    assert a[0] == b[0]  # the first epoch is the autograd run's own
    assert all(b[1][k] == pytest.approx(a[1][k], rel=1e-4) for k in a[1])
    assert resume_config(resumed, {"hand_gradients": False}).hand_gradients is False


@pytest.mark.parametrize(
    "base, overrides, world, anomaly, expected",
    [
        (TINY, {}, 2, False, "--hand-gradients trains in one process; under torchrun"),
        (
            TINY,
            {"cuda_graph": True},
            1,
            False,
            "--hand-gradients and --cuda-graph are two ways to a fast step",
        ),
        (TINY, {}, 1, True, "--detect-anomaly watches autograd, which --hand-gradients does not use"),
    ],
    ids=["torchrun", "cuda-graph", "anomaly"],
)
def test_torchrun_a_cuda_graph_and_anomaly_detection_are_refused(base, overrides, world, anomaly, expected):
    from vaelab.handgrad import refusal

    config = resolve(overrides=base | overrides)
    model = build_state(resolve(overrides=base)).model
    with torch.autograd.set_detect_anomaly(anomaly):
        assert refusal(config, model, world).startswith(expected)


BASE = "train --dataset digits --z-dim 3 --hidden 16 --no-progress --no-plots --epochs 1".split() + [
    "--hand-gradients"
]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--backend", "pyro"], "--hand-gradients writes the torch backend's gradients; backend pyro"),
        (
            ["--model", "vampprior"],
            "--hand-gradients: models vae, beta-vae, cvae and two-layer-vae are written by hand, not",
        ),
        (
            ["--net", "conv"],
            "--hand-gradients: only the MLP networks' gradients are written by hand (--net mlp)",
        ),
        (
            ["--activation", "elu"],
            "--hand-gradients: activation elu is not written by hand (tanh, relu, softplus",
        ),
    ],
)
def test_what_is_not_written_by_hand_is_refused_in_one_line_and_writes_nothing(
    tmp_path, capsys, flags, expected
):
    run = tmp_path / "run"
    assert main([*BASE, *flags, "--out", str(run)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vaelab: error: {expected}"), err
    assert not run.exists()


def test_a_stacked_sweep_refuses_hand_gradients(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--dataset", "digits", "--seeds", "0,1", "--stack", "--hand-gradients", "--epochs", "1"]
    assert main([*args, "--device", "cpu", "--no-progress", "--out", str(out)]) != 0
    assert "--hand-gradients steps one seed at a time" in capsys.readouterr().err
    assert not out.exists()
