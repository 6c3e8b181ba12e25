"""torchrun with 2 CPU processes equals one process computing the same global batch."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from vaelab import checkpoint
from vaelab.config import resolve
from vaelab.distributed import rank_seed
from vaelab.models import build_model
from vaelab.objectives import clear_param_store, make_objective
from vaelab.train import load_datasets, make_optimizer

SETTINGS = dict(dataset="digits", z_dim=4, hidden=(32,), batch_size=96, epochs=1, lr=3e-3, device="cpu")
WORLD = 2
# The same settings as command-line flags.
FLAGS = "--dataset digits --z-dim 4 --hidden 32 --batch-size 96 --lr 3e-3 --device cpu".split()


def _one_process_reference(config) -> tuple[dict, dict]:
    """The same global batches on one process: each shard's loss with that rank's noise, summed.

    On one thread, as each rank runs (OMP_NUM_THREADS=1): with another thread
    count the matrix products add in another order, and Adam turns float noise
    on near-zero gradients into differences of up to lr a step.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_steps(config)
    finally:
        torch.set_num_threads(threads)


def _reference_steps(config) -> tuple[dict, dict]:
    checkpoint.seed_all(config.seed)
    clear_param_store()
    images = load_datasets(config, torch.device("cpu")).train
    model = build_model(config.model, **config.model_args(images.spec))
    streams = [torch.get_rng_state()]  # rank 0 goes on from the weights' initialisation
    for rank in range(1, WORLD):
        torch.manual_seed(rank_seed(config.seed, rank))
        streams.append(torch.get_rng_state())
    optimizer = make_optimizer(model, config)
    objective = make_objective(config.backend, config.elbo)
    order = images.epoch_order(config.seed, 1)
    for start in range(0, len(images), config.batch_size):
        optimizer.zero_grad()
        for rank, shard in enumerate(torch.tensor_split(order[start : start + config.batch_size], WORLD)):
            torch.set_rng_state(streams[rank])
            objective(model, images.batch(shard)).loss.backward()  # gradients add up over shards
            streams[rank] = torch.get_rng_state()
        optimizer.step()
    return model.state_dict(), optimizer.state_dict()


def _torchrun(args, env_threads="1"):
    env = {**os.environ, "OMP_NUM_THREADS": env_threads}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "vaelab",
        "train",
        *args,
        "--no-progress",
        "--no-plots",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    # A rank's own error comes first; the launcher's summary of it last.
    err = result.stderr
    said = err if len(err) < 6000 else err[:4000] + "\n…\n" + err[-2000:]
    assert result.returncode == 0, said
    return result


@pytest.mark.parametrize("backend,elbo", [("torch", None), ("pyro", "trace"), ("pyro", "jit-meanfield")])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, backend, elbo):
    config = resolve(overrides={**SETTINGS, "backend": backend, "elbo": elbo})
    assert len(load_datasets(config, torch.device("cpu"))[0]) % config.batch_size == 0
    run = tmp_path / "run"
    flags = [*FLAGS, "--epochs", "1", "--backend", backend, *(["--elbo", elbo] if elbo else [])]
    result = _torchrun([*flags, "--out", str(run)])
    assert result.stdout.count("run directory:") == 1  # rank 0 alone speaks
    trained = torch.load(run / "checkpoint.pt", weights_only=True)
    weights, optimizer = _one_process_reference(config)
    # 15 steps; the only difference is the order of float additions in the all-reduce.
    for name, value in weights.items():
        torch.testing.assert_close(trained["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # Adam is nearly blind to the gradient's scale; its moments are not, so they
    # show that each rank's loss was scaled to make the average a global sum.
    for index, state in optimizer["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            got = trained["optimizer"]["state"][index][key]
            torch.testing.assert_close(got, state[key], rtol=1e-3, atol=1e-6, msg=f"{index} {key}")


def test_resume_under_torchrun_continues_every_rank_exactly(tmp_path):
    flags = [*FLAGS, "--backend", "pyro", "--binarize", "dynamic"]
    _torchrun([*flags, "--epochs", "2", "--out", str(tmp_path / "straight")])
    # the split run also writes TensorBoard's view: rank 0 alone, and the run is the same for it
    board = importlib.util.find_spec("tensorboard") is not None
    _torchrun(
        [*flags, "--epochs", "1", *(["--tensorboard"] if board else []), "--out", str(tmp_path / "split")]
    )
    _torchrun(["--resume", "--epochs", "2", "--out", str(tmp_path / "split")])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert b["epoch"] == 2 and len(b["rank_rng"]) == WORLD
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    if board:  # one event file for each of the two launches, none from rank 1
        assert len(list((tmp_path / "split" / "tensorboard").glob("events.out.tfevents.*"))) == 2


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_air_under_torchrun_equals_one_process(tmp_path, backend):
    """AIR's surrogate (score-function terms and baselines, two Adam groups) under DDP."""
    settings = dict(
        model="air", dataset="digits", z_dim=4, max_steps=2, batch_size=96, epochs=1
    )  # the preset's elbo, tracegraph, is the Pyro backend's
    config = resolve(preset="air", overrides={**settings, "device": "cpu", "backend": backend})
    flags = "--preset air --dataset digits --z-dim 4 --max-steps 2 --batch-size 96 --device cpu".split()
    _torchrun([*flags, "--epochs", "1", "--backend", backend, "--out", str(tmp_path / "run")])
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    weights, optimizer = _one_process_reference(config)
    for name, value in weights.items():
        torch.testing.assert_close(trained["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for index, state in optimizer["state"].items():
        torch.testing.assert_close(
            trained["optimizer"]["state"][index]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-6
        )


def test_labels_travel_with_their_images_under_torchrun(tmp_path):
    """A model that reads labels (the CVAE): each rank's shard carries its own images' labels."""
    config = resolve(overrides={**SETTINGS, "model": "cvae", "backend": "pyro"})
    _torchrun(
        [*FLAGS, "--model", "cvae", "--backend", "pyro", "--epochs", "1", "--out", str(tmp_path / "run")]
    )
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    weights, _ = _one_process_reference(config)
    for name, value in weights.items():
        torch.testing.assert_close(trained["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_every_rank_stops_the_completion_baseline_as_rank_0_does(tmp_path):
    """The early stop reads rank 0's validation score; every rank puts back the same best weights.

    Straight through, rank 1 learns of the stop from rank 0; resumed past it, from the checkpoint.
    Were rank 1's baseline not put back, its prior would differ and so would the CVAE's gradients.
    """
    from test_validation import completion_flags

    flags = [*completion_flags(), "--epochs", "7"]
    _torchrun([*flags, "--out", str(tmp_path / "straight")])
    _torchrun([*flags[:-1], "4", "--out", str(tmp_path / "split")])  # the baseline stops after epoch 4
    _torchrun(["--resume", "--epochs", "7", "--out", str(tmp_path / "split")])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["model"]
    assert 0 < int(a["baseline_stopped"]) <= 4
    for name in a:
        assert torch.equal(a[name], b[name]), name
