"""Reading a run directory back: the hand-off from training to everything after.

>>> run = vaelab.load_run("runs/demo")
>>> run.config.z_dim, run.metrics[-1]["test_elbo"]
>>> run.model.elbo(x)                          # hand-written
>>> pyro.infer.Predictive(run.model.model, guide=run.model.guide, num_samples=8)(x)
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vaelab import checkpoint
from vaelab.config import Config, read_run_config
from vaelab.errors import CheckpointError
from vaelab.models import build_model
from vaelab.records import read_metrics
from vaelab.settings import plain


@dataclass
class Run:
    """A trained run: its folder, config, model (eval mode), metrics and last epoch."""

    dir: Path
    config: Config
    model: torch.nn.Module
    metrics: list
    epoch: int
    image_shape: tuple = ()  # (H, W) of the images the model was trained on


def _check_same_settings(ckpt: dict, config, run_dir: Path) -> None:
    """Raises CheckpointError if the checkpoint's model was built with other settings than config.json says.

    The model is rebuilt from the checkpoint's own arguments, so a checkpoint
    copied in from another run would otherwise be scored under this run's name.
    """
    saved = config.to_dict()
    args = ckpt["model_args"]
    differing = sorted(k for k, v in args.items() if k in saved and plain(saved[k]) != plain(v))
    if differing:
        listed = ", ".join(f"{k} {plain(args[k])!r} (config.json: {plain(saved[k])!r})" for k in differing)
        raise CheckpointError(f"{run_dir / 'checkpoint.pt'}: holds a model of other settings: {listed}")


def load_run(run_dir, device="cpu") -> Run:
    """Returns the run saved in `run_dir`, its model rebuilt and loaded on `device`.

    The weights live in the model, not in Pyro's global parameter store. To fit
    the loaded model further with Pyro's own ``SVI``, call
    ``pyro.clear_param_store()`` first, so no stale tensor of the same name
    (from another model in this process) stands in for the model's own.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    config = read_run_config(run_dir)
    ckpt = checkpoint.load(run_dir / "checkpoint.pt", map_location=device)
    if ckpt["model_name"] != config.model:
        raise CheckpointError(
            f"{run_dir / 'checkpoint.pt'}: holds a model {ckpt['model_name']!r}, "
            f"but {run_dir / 'config.json'} says {config.model!r}"
        )
    _check_same_settings(ckpt, config, run_dir)
    try:
        model = build_model(ckpt["model_name"], **ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{run_dir / 'checkpoint.pt'}: does not hold a loadable model ({checkpoint.load_problem(e)})"
        ) from None
    model.to(device).eval()
    # Checkpoints before issue 12 did not record the images' shape: theirs were square.
    side = math.isqrt(model.x_dim)
    shape = ckpt.get("image_shape") or [side, side]
    if not (isinstance(shape, list) and len(shape) == 2 and shape[0] * shape[1] == model.x_dim):
        raise CheckpointError(
            f"{run_dir / 'checkpoint.pt'}: its image_shape {shape!r} does not fit the model"
        )
    return Run(run_dir, config, model, read_metrics(run_dir / "metrics.jsonl"), ckpt["epoch"], tuple(shape))
