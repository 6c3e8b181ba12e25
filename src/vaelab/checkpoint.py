"""Checkpoints as plain tensors and data, and the random state they carry.

A checkpoint is a dict of tensors, numbers, strings and lists, readable with
``torch.load(weights_only=True)``: no pickled code. Written atomically.
"""

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from vaelab.errors import CheckpointError
from vaelab.fileio import atomic_path

FORMAT_VERSION = 1


def seed_all(seed: int) -> None:
    """Seeds Python, NumPy and torch (Pyro draws from these three)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Returns the state of Python's, NumPy's and torch's generators as plain data."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(py_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores the generators from :func:`rng_state`'s output."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path, **contents) -> None:
    """Writes a checkpoint holding `contents` (plus the format version) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **contents}, tmp)


def load(path, map_location="cpu") -> dict:
    """Returns the checkpoint at `path`; raises CheckpointError naming the file and fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable vaelab checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not a vaelab checkpoint (no format_version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: made by a newer vaelab (format {ckpt['format_version']}, "
            f"this one reads up to {FORMAT_VERSION}); upgrade vaelab"
        )
    return ckpt
