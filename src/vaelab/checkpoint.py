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
    temporary = None
    try:
        with atomic_path(path) as tmp:
            temporary = str(tmp)
            torch.save({"format_version": FORMAT_VERSION, **contents}, tmp)
    except RuntimeError as e:  # torch's writer fails with RuntimeError on a full disk
        lines = str(e).strip().splitlines() or [type(e).__name__]
        reason = lines[-1].replace(temporary or "", str(path))  # torch puts its own words first
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({reason}); the previous one is kept"
        ) from None


def _reason(error: Exception) -> str:
    """Returns what went wrong, in vaelab's words: torch's own text advises loading unsafely."""
    text = str(error).lower()
    if isinstance(error, pickle.UnpicklingError) or "weights only" in text:
        return "it holds something other than tensors and plain data"
    if isinstance(error, EOFError) or "eof" in text or "cut short" in text:
        return "it is empty or cut short"
    if isinstance(error, zipfile.BadZipFile) or "zip" in text or "stream" in text:
        return "not a zip archive of tensors, or cut short"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


def load_problem(error: Exception) -> str:
    """The first line of a failed ``load_state_dict`` that says what differs, for a one-line error.

    PyTorch's message opens with a header ("Error(s) in loading state_dict
    for VAE:") and names the mismatch on the lines after it; a size line keeps
    both shapes, written as lists.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.endswith(":")] or lines or [type(error).__name__]
    return useful[0].replace("copying a param with shape ", "").replace("torch.Size(", "(").rstrip(".")


def load(path, map_location="cpu", mmap=False) -> dict:
    """Returns the checkpoint at `path`; raises CheckpointError naming the file and fault.

    Only tensors and plain data are read (``weights_only=True``); the fields
    every use needs are checked (:func:`check`). `mmap`: the tensors are
    mapped from the file, not read, until used (for a caller that wants the
    epoch of many large checkpoints, as `vaelab runs` does).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # any bytes at all: torch, zipfile and pickle raise many kinds
        raise CheckpointError(f"{path}: not a readable vaelab checkpoint ({_reason(e)})") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not a vaelab checkpoint (no format_version)")
    version = ckpt["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        reads = f"this one reads up to {FORMAT_VERSION}"
        raise CheckpointError(f"{path}: made by a newer vaelab (format {version}, {reads}); upgrade vaelab")
    check(ckpt, path)
    return ckpt


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in value.items()
    )


def check(ckpt: dict, path) -> None:
    """Raises CheckpointError naming the first field of `ckpt` that a vaelab checkpoint cannot hold."""
    problems = {
        "model": _is_tensor_dict,
        "model_name": lambda v: isinstance(v, str),
        "model_args": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "optimizer": lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("state"), dict)
            and isinstance(v.get("param_groups"), list)
        ),
        "rng": _is_rng_state,
        "position": lambda v: v is None or _is_position(v),
    }
    for key, fits in problems.items():
        if key not in ckpt:
            raise CheckpointError(f"{path}: not a whole vaelab checkpoint (no {key})")
        if not fits(ckpt[key]):
            raise CheckpointError(f"{path}: its {key} is not what a vaelab checkpoint holds")
    for name, value in ckpt["model"].items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(
                f"{path}: weight {name} is not finite (the run diverged); retrain or resume earlier"
            )


def _is_rng_state(state) -> bool:
    try:
        version, py_state, _ = state["python"]
        kind, keys, pos, has_gauss, cached = state["numpy"]
        return (
            isinstance(version, int)
            and isinstance(py_state, list)
            and len(py_state) == 625
            and all(isinstance(v, int) for v in py_state)
            and kind == "MT19937"
            and torch.is_tensor(keys)
            and keys.shape == (624,)
            and isinstance(pos, int)
            and torch.is_tensor(state["torch"])
            and state["torch"].dtype == torch.uint8
        )
    except (KeyError, TypeError, ValueError):
        return False


def _is_position(position) -> bool:
    try:
        numbers = [position[k] for k in ("epoch", "step", "seen")]
        return all(isinstance(v, int) and v >= 0 for v in numbers) and all(
            isinstance(position[k], (int, float)) for k in ("loss_total", "seconds")
        )
    except (KeyError, TypeError):
        return False
