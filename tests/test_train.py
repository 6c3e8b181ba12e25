"""The training loop, run directories, resume and load_run, on 8×8 digits."""

import json
import os
import signal

import pytest
import torch

import vaelab
import vaelab.train
from vaelab.cli import main
from vaelab.config import learning_rate, resolve
from vaelab.errors import CheckpointError, ConfigError
from vaelab.fileio import read_jsonl
from vaelab.train import resume_config, train


def _config(**overrides):
    values = dict(dataset="digits", z_dim=4, hidden=(32,), batch_size=64, epochs=2, lr=3e-3, device="cpu")
    values.update(overrides)
    return resolve(overrides=values)


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_a_run_directory_holds_config_metrics_and_a_safe_checkpoint(tmp_path, backend):
    run_dir = train(_config(backend=backend), tmp_path / "run", progress=False, echo=lambda s: None)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) == {"epoch", "train_elbo", "test_elbo", "train_seconds"}
    assert all(m["train_elbo"] < 0 and m["test_elbo"] < 0 and m["train_seconds"] > 0 for m in metrics)
    assert metrics[1]["test_elbo"] > metrics[0]["test_elbo"]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "rng", "model_args"} <= set(ckpt)
    assert json.loads((run_dir / "config.json").read_text())["backend"] == backend
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files left


# jit-meanfield compiles again on resume; the compiling runs must not move the random stream.
@pytest.mark.parametrize(("backend", "elbo"), [("torch", None), ("pyro", "trace"), ("pyro", "jit-meanfield")])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, backend, elbo):
    quiet = dict(progress=False, echo=lambda s: None)
    config = _config(backend=backend, elbo=elbo, binarize="dynamic", epochs=3)
    straight = train(config, tmp_path / "straight", **quiet)
    train(_config(backend=backend, elbo=elbo, binarize="dynamic", epochs=1), tmp_path / "split", **quiet)
    resumed = train(
        resume_config(tmp_path / "split", {"epochs": 3}), tmp_path / "split", resume=True, **quiet
    )
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    metrics_a = (straight / "metrics.jsonl").read_text().splitlines()
    metrics_b = (resumed / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(m).items() if k != "train_seconds"} for m in metrics_a]
    assert strip == [{k: v for k, v in json.loads(m).items() if k != "train_seconds"} for m in metrics_b]


def test_a_run_directory_is_not_overwritten(tmp_path):
    train(_config(epochs=1), tmp_path / "run", progress=False, echo=lambda s: None)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        train(_config(epochs=1), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_changed_settings_and_names_them(tmp_path):
    train(_config(epochs=1), tmp_path / "run", progress=False, echo=lambda s: None)
    with pytest.raises(ConfigError, match=r"z_dim \(4 -> 8\)"):
        resume_config(tmp_path / "run", {"z_dim": 8, "epochs": 2})
    assert resume_config(tmp_path / "run", {"epochs": 5}).epochs == 5


def test_load_run_gives_the_trained_model_in_eval_mode(tmp_path):
    train(_config(epochs=1), tmp_path / "run", progress=False, echo=lambda s: None)
    run = vaelab.load_run(tmp_path / "run")
    assert not run.model.training and run.epoch == 1 and run.config.z_dim == 4
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, ckpt["model"][name])
    x = torch.rand(3, 64)
    torch.manual_seed(0)
    first = run.model.elbo(x)
    torch.manual_seed(0)
    assert torch.equal(first, run.model.elbo(x))


def test_a_batch_larger_than_the_training_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="batch_size 5000 is larger than the 1440 training images"):
        train(_config(batch_size=5000), tmp_path / "run", progress=False)


def test_a_diverging_run_stops_with_one_line_and_writes_no_checkpoint(tmp_path):
    with pytest.raises(
        vaelab.train.Diverged, match=r"^epoch 1, step \d+: the loss became nan; .* --detect-anomaly"
    ):
        train(_config(lr=1e6, epochs=2), tmp_path / "run", progress=False, echo=lambda s: None)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_divergence_is_found_at_the_first_logging_interval_after_it(tmp_path, monkeypatch):
    real = vaelab.train.make_objective

    def nan_from_step_30(*args):
        objective, calls = real(*args), [0]

        def call(model, x):
            calls[0] += 1
            out = objective(model, x)
            return out._replace(loss=out.loss * float("nan")) if calls[0] >= 30 else out

        return call

    monkeypatch.setattr(vaelab.train, "make_objective", nan_from_step_30)
    config = _config(epochs=3, log_interval=5)  # 23 steps an epoch: step 30 is epoch 2, step 7
    with pytest.raises(vaelab.train.Diverged, match=r"^epoch 2, step 10: the loss became nan"):
        train(config, tmp_path / "run", progress=False, echo=lambda s: None)
    kept = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_the_iwae_schedule_steps_the_learning_rate_down_by_stage():
    config = resolve(preset="iwae-paper")
    assert config.epochs == 3280 and config.adam_eps == 1e-4 and config.batch_size == 20
    # Stage i covers 3^i epochs: 1 | 2-4 | 5-13 | 14-40 | ... | 1094-3280.
    stage_of = {1: 0, 2: 1, 4: 1, 5: 2, 13: 2, 14: 3, 1093: 6, 1094: 7, 3280: 7}
    for epoch, stage in stage_of.items():
        assert learning_rate(config, epoch) == pytest.approx(1e-3 * 10 ** (-stage / 7)), epoch


def test_the_short_iwae_schedule_has_the_papers_rates_in_44_epochs():
    config = resolve(preset="burda-1layer-iwae-k50", overrides={"lr_schedule": "iwae-short", "epochs": 44})
    # Stages of 1,1,1,1,1,3,9,27 epochs: 1 | 2 | 3 | 4 | 5 | 6-8 | 9-17 | 18-44.
    stage_of = {1: 0, 2: 1, 5: 4, 6: 5, 8: 5, 9: 6, 17: 6, 18: 7, 44: 7, 100: 7}
    for epoch, stage in stage_of.items():
        assert learning_rate(config, epoch) == pytest.approx(1e-3 * 10 ** (-stage / 7)), epoch


@pytest.mark.parametrize("layers", [1, 2])
def test_burdas_presets_give_each_cell_its_network_and_objective(layers):
    config = resolve(preset=f"burda-{layers}layer-iwae-k5")
    assert (config.elbo, config.particles, config.batch_size, config.epochs) == ("iwae", 5, 20, 3280)
    vae = resolve(preset=f"burda-{layers}layer-vae-k50")
    assert (vae.elbo, vae.particles, vae.binarize) == ("trace", 50, "dynamic")
    if layers == 1:
        assert (vae.model, vae.z_dim, vae.hidden, vae.activation) == ("vae", 50, (200, 200), "tanh")
    else:
        assert (vae.model, vae.z1_dim, vae.z2_dim, vae.hidden1, vae.hidden2) == (
            "two-layer-vae",
            100,
            50,
            (200, 200),  # the authors' code's widths, which made Table 1 (the paper's text has half)
            (100, 100),
        )


def test_the_schedule_reaches_the_optimiser(tmp_path):
    config = _config(epochs=2, lr_schedule="iwae", lr=1e-3)
    train(config, tmp_path / "run", progress=False, echo=lambda s: None)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 10 ** (-1 / 7))


class _SignalAtStep:
    """An objective that sends this process `signum` during its `at`-th call, as a user would."""

    def __init__(self, objective, at, signum):
        self.objective, self.at, self.signum, self.calls = objective, at, signum, 0

    def __call__(self, model, x):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return self.objective(model, x)


@pytest.fixture
def signals_as_usual():
    """SIGINT and SIGTERM with Python's usual handlers, whatever started pytest (nohup ignores SIGINT)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("signals_as_usual")
@pytest.mark.parametrize("backend,signum", [("torch", signal.SIGINT), ("pyro", signal.SIGTERM)])
def test_a_run_interrupted_inside_an_epoch_resumes_bitwise(tmp_path, monkeypatch, backend, signum):
    quiet = dict(progress=False, echo=lambda s: None)
    config = _config(backend=backend, binarize="dynamic", epochs=3)
    straight = train(config, tmp_path / "straight", **quiet)

    real = vaelab.train.make_objective
    # 1440 images / 64 = 23 steps an epoch: the signal lands in epoch 2, step 7.
    monkeypatch.setattr(vaelab.train, "make_objective", lambda *a: _SignalAtStep(real(*a), 23 + 7, signum))
    lines = []
    with pytest.raises(vaelab.train.Interrupted) as stopped:
        train(config, tmp_path / "split", progress=False, echo=lines.append)
    assert stopped.value.signum == signum
    assert lines[-2].startswith("interrupted in epoch 2 before step 8")
    assert lines[-1] == f"resume with: vaelab train --resume --out {tmp_path / 'split'}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(vaelab.train, "make_objective", real)

    resumed = train(resume_config(tmp_path / "split", {}), tmp_path / "split", resume=True, **quiet)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])

    def without_time(path):
        return [
            {k: v for k, v in m.items() if k != "train_seconds"} for m in read_jsonl(path / "metrics.jsonl")
        ]

    assert without_time(straight) == without_time(resumed)


@pytest.mark.usefixtures("signals_as_usual")
@pytest.mark.parametrize(
    "command, hint",
    [
        (["sweep", "--seeds", "0,1"], "continue the sweep with: vaelab sweep --resume --out {out}"),
        (
            ["train", "--restarts", "2", "--restart-epochs", "1"],
            "continue the run's starts with: vaelab train --resume --out {out}",
        ),
    ],
    ids=["sweep", "restarts"],
)
def test_an_interruption_inside_a_sweep_or_a_runs_starts_gives_one_hint_the_outer_command(
    tmp_path, monkeypatch, capsys, command, hint
):
    real = vaelab.train.make_objective
    monkeypatch.setattr(vaelab.train, "make_objective", lambda *a: _SignalAtStep(real(*a), 5, signal.SIGINT))
    out = tmp_path / "out"
    tiny = (
        "--dataset digits --z-dim 3 --hidden 16 --batch-size 64 --epochs 2 --device cpu --no-progress".split()
    )
    assert main([*command, *tiny, "--out", str(out)]) == 130
    printed = capsys.readouterr().out.splitlines()
    hints = [line for line in printed if "--resume" in line]
    assert hints == [hint.format(out=out)], printed  # not the inner run's own "resume with: ..."


@pytest.mark.usefixtures("signals_as_usual")
def test_an_interrupted_comparison_says_to_run_it_again(tmp_path, monkeypatch, capsys):
    real = vaelab.train.make_objective
    monkeypatch.setattr(vaelab.train, "make_objective", lambda *a: _SignalAtStep(real(*a), 5, signal.SIGINT))
    out = tmp_path / "compare"
    args = "compare --preset pytorch-examples --dataset digits --epochs 1 --device cpu --no-progress".split()
    assert main([*args, "--out", str(out)]) == 130
    hints = [line for line in capsys.readouterr().out.splitlines() if "continue" in line or "resume" in line]
    assert hints == [
        "continue the comparison with the same vaelab compare command: it resumes each row begun"
    ]


@pytest.mark.usefixtures("signals_as_usual")
def test_the_cli_exits_130_on_ctrl_c_with_a_resumable_checkpoint(tmp_path, monkeypatch, capsys):
    real = vaelab.train.make_objective
    monkeypatch.setattr(vaelab.train, "make_objective", lambda *a: _SignalAtStep(real(*a), 5, signal.SIGINT))
    run = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "digits",
        "--z-dim",
        "3",
        "--hidden",
        "16",
        "--batch-size",
        "64",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--no-plots",
        "--out",
        str(run),
    ]
    assert main(args) == 130
    captured = capsys.readouterr()
    assert f"resume with: vaelab train --resume --out {run}" in captured.out
    assert captured.err.strip() == "vaelab: interrupted by signal 2"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["position"]["step"] == 5
    monkeypatch.setattr(vaelab.train, "make_objective", real)
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--no-plots"]) == 0
    assert [m["epoch"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_an_ignored_sigint_stays_ignored_while_training(tmp_path, monkeypatch):
    seen = []
    real = vaelab.train.make_objective

    def recording(*args):
        objective = real(*args)

        def call(model, x):
            seen.append(signal.getsignal(signal.SIGINT))
            return objective(model, x)

        return call

    monkeypatch.setattr(vaelab.train, "make_objective", recording)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        train(_config(epochs=1), tmp_path / "run", progress=False, echo=lambda s: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen and all(handler is signal.SIG_IGN for handler in seen)
