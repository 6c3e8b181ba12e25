"""`--cuda-graph`: the step recorded as a CUDA graph trains exactly as the eager step does.

The refusals run everywhere; the equality checks need a CUDA device and are
skipped, saying so, without one (CI has none: they ran on a lent H100, see
benchmarks/results/README.md). benchmarks/gpu_epoch.py checks every model.
"""

import json

import pytest
import torch

from vaelab import checkpoint
from vaelab.cli import main
from vaelab.config import resolve
from vaelab.graphstep import graph_refusal
from vaelab.models import MODELS
from vaelab.train import build_state, start_epoch, train_epoch

TINY = "--model vae --dataset digits --z-dim 3 --hidden 16 --no-progress --no-plots".split()
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_cpu_run_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--device", "cpu", "--cuda-graph", "--out", str(run)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "vaelab: error: --cuda-graph needs a CUDA device; this run's device is cpu"
    assert not run.exists()


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_anomaly_detection_with_a_graph_is_refused_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--cuda-graph", "--detect-anomaly", "--out", str(run)]) != 0
    assert "--detect-anomaly reads every gradient on the host" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize(
    "overrides, world, expected",
    [
        ({"backend": "pyro"}, 1, "backend pyro builds its trace anew each step"),
        ({}, 2, "under torchrun leave it off"),
        ({"model": "m2", "labelled": 10}, 1, "model m2's step splits each batch by which labels are known"),
        ({"model": "air", "dataset": "multi-mnist"}, 1, "model air's step copies a CPU tensor to the GPU"),
    ],
)
def test_what_a_graph_cannot_record_is_refused(overrides, world, expected):
    config = resolve(overrides={"dataset": "digits"} | overrides)
    why = graph_refusal(config, torch.device("cuda"), world, MODELS[config.model])
    assert expected in why


def test_a_vae_on_cuda_is_not_refused():
    config = resolve(overrides={"dataset": "digits"})
    assert graph_refusal(config, torch.device("cuda"), 1, MODELS["vae"]) is None


def _two_epochs(overrides, eager: bool):
    config = resolve(
        overrides={"dataset": "digits", "z_dim": 3, "hidden": (16,), "batch_size": 64, "device": "cuda"}
        | overrides
        | {"cuda_graph": True}
    )
    state = build_state(config)
    if eager:  # the same capturable Adam, stepped without a graph
        state.graph = None
    results = []
    for epoch in (1, 2):
        start_epoch(state, epoch)
        results.append(train_epoch(state, epoch, progress=False).train_elbo)
    weights = [p.detach().cpu() for p in state.model.parameters()]
    return weights, results, torch.cuda.get_rng_state(), state


@needs_cuda
@pytest.mark.parametrize(
    "overrides",
    [{}, {"model": "cvae"}, {"elbo": "iwae", "particles": 5}, {"net": "conv"}, {"binarize": "dynamic"}],
    ids=["vae", "cvae", "iwae", "conv", "dynamic"],
)
def test_the_graph_replays_the_eager_step_bit_for_bit(overrides, monkeypatch):
    # cuDNN may pick a convolution algorithm that adds in any order: ask for a fixed one.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    # digits: 1,437 training images in batches of 64, so each epoch ends on a smaller batch.
    graph_w, graph_elbo, graph_rng, state = _two_epochs(overrides, eager=False)
    eager_w, eager_elbo, eager_rng, _ = _two_epochs(overrides, eager=True)
    assert state.graph.captures == 4  # two shapes an epoch, recorded again each epoch
    assert all(torch.equal(a, b) for a, b in zip(graph_w, eager_w, strict=True))
    assert graph_elbo == eager_elbo
    assert torch.equal(graph_rng, eager_rng)


@needs_cuda
def test_a_resumed_graph_run_equals_one_straight_through(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*TINY, "--device", "cuda", "--cuda-graph", "--batch-size", "64"]
    assert main(["train", *args, "--epochs", "3", "--out", str(straight)]) == 0
    assert main(["train", *args, "--epochs", "1", "--out", str(split)]) == 0
    resume = ["train", "--resume", "--out", str(split), "--epochs", "3", "--no-progress", "--no-plots"]
    assert main(resume) == 0
    runs = straight, split
    a, b = (checkpoint.load(run / "checkpoint.pt") for run in runs)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lines = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in runs]
    for line in (*lines[0], *lines[1]):
        del line["train_seconds"]
    assert lines[0] == lines[1]
