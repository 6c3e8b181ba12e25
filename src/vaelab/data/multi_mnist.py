"""Multi-MNIST: canvases of 0 to `max_digits` scaled MNIST digits, for Attend-Infer-Repeat.

>>> made = multi_mnist.make()            # writes cache_dir() / "multi-mnist.npz"
>>> multi_mnist.load_split("train")["boxes"].shape
(60000, 2, 4)

Each canvas holds a count drawn uniformly from 0..max_digits; each digit is a
random MNIST digit of the split's own MNIST split (train canvases from training
digits, test canvases from test digits) whose whole 28×28 frame is scaled to a
square of side uniform in [18, 28] pixels and put at a uniform position with
the square inside the canvas. As in the AIR paper's Multi-MNIST, digits do not
overlap: a digit whose ink box (the central 20/28 of its frame, where MNIST
puts the ink) would overlap an earlier one's is moved to a fresh random place
(frames may still overlap). ``overlap=True`` (``--allow-overlap``) drops the
rule. Digits combine by pixel-wise max.

Per split: ``images`` (N, 1, canvas, canvas) uint8; ``counts`` (N,) int64;
``boxes`` (N, max_digits, 4) float32, ``[x0, y0, width, height]`` in pixels of
each digit's placed square (x is the column, y the row; zeros in absent slots);
``digits`` (N, max_digits) int64 classes, -1 in absent slots. Slot k holds a
digit exactly when k < count.

The file holds ``{split}_images``, ``{split}_labels`` (the counts, so the generic
loader gives (images, counts)), ``{split}_boxes``, ``{split}_digits`` and ``meta``:
JSON of the settings and the sha256 of every array (key, dtype, shape, bytes),
which loading checks.
"""

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from vaelab.data import SPLITS, cache_dir
from vaelab.data.npzfile import memory_bytes, read_npz
from vaelab.errors import ConfigError, DataError, choices_error
from vaelab.fileio import atomic_path

FILE_NAME = "multi-mnist.npz"
SCALE_RANGE = (18.0, 28.0)  # side of a placed digit's square frame, in canvas pixels
# MNIST fits each digit's ink into the central 20×20 pixels of its 28×28 frame:
# that square is the digit's ink box, which other digits' ink boxes must not overlap.
INK_FRACTION = 20 / 28
_PLACEMENT_ATTEMPTS = 1000
MAX_DIGITS_LIMIT = 5
MAX_CANVASES = 10_000_000  # a split of more canvases than this is not a dataset to make here
MAX_CANVAS = 1024  # pixels a side
MIN_CANVAS = 28
FORMAT = 1
_PARTS = ("images", "labels", "boxes", "digits")  # file keys per split
_KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in _PARTS)  # also the sha256 order
_CHUNK = 512  # canvases rendered at once: ~20 MB of float64 buffers, reused; larger is slower
_REMAKE = "remake it with `vaelab data make multi-mnist`"


def path() -> Path:
    """Returns where the dataset lives: ``cache_dir() / "multi-mnist.npz"``."""
    return cache_dir() / FILE_NAME


def check_settings(train_size, test_size, max_digits, seed, canvas, flags=False) -> None:
    """Raises ConfigError naming the first setting out of range (as ``--flag`` when `flags`)."""
    limits = {
        "train_size": (train_size, 1, None),
        "test_size": (test_size, 1, None),
        "max_digits": (max_digits, 1, MAX_DIGITS_LIMIT),
        "seed": (seed, 0, None),
        "canvas": (canvas, MIN_CANVAS, None),
    }
    largest = {"train_size": MAX_CANVASES, "test_size": MAX_CANVASES, "seed": 2**32 - 1, "canvas": MAX_CANVAS}
    for name, (value, low, high) in limits.items():
        shown = "--" + name.replace("_", "-") if flags else name
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{shown} must be an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"from {low} to {high}"
            raise ConfigError(f"{shown} must be {bound}, got {value}")
        if name in largest and value > largest[name]:
            raise ConfigError(f"{shown} must be at most {largest[name]}, got {value}")
    # The canvases are made in memory, then written: they must fit, with room to spare.
    size = (train_size + test_size) * canvas * canvas
    if size > memory_bytes() // 2:
        raise ConfigError(
            f"{size / 2**30:.1f} GiB of canvases (train + test sizes × canvas²) is more than half "
            f"this machine's memory ({memory_bytes() / 2**30:.1f} GiB); make fewer or smaller"
        )


def _check_source(source) -> None:
    for split in SPLITS:
        try:
            images, labels = source[split]
        except (KeyError, TypeError, ValueError):
            raise DataError("source must map 'train' and 'test' to (images, labels)") from None
        if images.ndim != 4 or images.shape[1] != 1 or len(images) == 0 or images.dtype != np.uint8:
            raise DataError(
                f"source {split} images must be non-empty (N, 1, H, W) uint8, "
                f"got {images.dtype} {images.shape}"
            )
        if labels.shape != (len(images),):
            raise DataError(f"source {split} labels must be ({len(images)},), got {labels.shape}")


def _ink_clash(x0, y0, side, a, b) -> np.ndarray:
    """Returns whether the ink boxes of digits `a` and `b` (index arrays) overlap."""
    margin = side * (1 - INK_FRACTION) / 2
    lo_x, lo_y, ink = x0 + margin, y0 + margin, side * INK_FRACTION
    return (
        (lo_x[a] < lo_x[b] + ink[b])
        & (lo_x[b] < lo_x[a] + ink[a])
        & (lo_y[a] < lo_y[b] + ink[b])
        & (lo_y[b] < lo_y[a] + ink[a])
    )


def _draw(rng, n: int, max_digits: int, canvas: int, n_source: int, overlap: bool) -> dict:
    """Draws every random choice of one split up front, so chunking cannot change them.

    Returns counts (n,) and, per present digit in canvas-then-slot order, the
    source index and its box [x0, y0, side, side] (float32, the exact values
    the rendering uses). Unless `overlap`, a digit whose ink box overlaps an
    earlier digit's on its canvas is moved to a fresh random place until none does.
    """
    counts = rng.integers(0, max_digits + 1, size=n, dtype=np.int64)
    total = int(counts.sum())
    index = rng.integers(0, n_source, size=total, dtype=np.int64)
    side = rng.uniform(*SCALE_RANGE, size=total).astype(np.float32)
    room = (np.float32(canvas) - side).astype(np.float64)  # the square must fit inside the canvas

    def place(which):
        spots = (rng.random((2, len(which))) * room[which]).astype(np.float32)
        return np.minimum(spots, room[which].astype(np.float32))

    x0, y0 = place(np.arange(total))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pairs = [(i, j) for j in range(max_digits) for i in range(j)]  # slot pairs on one canvas
    # Canvases whose digits' ink may clash: all their digits get fresh places until none does.
    pending = np.flatnonzero(counts >= 2) if not overlap else np.zeros(0, np.int64)
    for _ in range(_PLACEMENT_ATTEMPTS):
        clash = np.zeros(len(pending), bool)
        for i, j in pairs:
            held = counts[pending] > j
            a, b = first[pending] + i, first[pending] + j
            clash[held] |= _ink_clash(x0, y0, side, a[held], b[held])
        pending = pending[clash]
        if len(pending) == 0:
            break
        digit = np.concatenate([first[pending] + k for k in range(max_digits)])
        digit = np.sort(digit[digit < np.tile(first[pending] + counts[pending], max_digits)])
        x0[digit], y0[digit] = place(digit)
    else:
        raise DataError(
            f"cannot place {max_digits} digits with non-overlapping ink on a {canvas}-pixel canvas "
            f"({len(pending)} canvases failed {_PLACEMENT_ATTEMPTS} tries); "
            "use a larger --canvas, fewer --max-digits, or --allow-overlap"
        )
    return {"counts": counts, "index": index, "box": np.stack([x0, y0, side, side], axis=1)}


def place(digits, boxes, canvas: int):
    """Returns `digits` (B, 1, H, W) placed on blank canvases as float64 (B, 1, canvas, canvas).

    Each digit's whole H×W frame is mapped onto the square ``boxes[i]`` =
    [x0, y0, width, height] in canvas pixels (pixel j spans [j, j+1)).
    Bilinear sampling with ``align_corners=False`` (pixel centres at j + 0.5,
    outside the frame reads as zero), so ink can spill under one pixel past
    the square's edge. Computed in float64 so rounding to uint8 hardly ever
    depends on the CPU's vector instructions.
    """
    import torch
    import torch.nn.functional as F

    digits = torch.as_tensor(digits).to(torch.float64)
    boxes = torch.as_tensor(boxes).to(torch.float64)
    x0, y0, width, height = boxes.unbind(1)
    # Output coordinate u in [-1, 1] is canvas pixel position p = (u + 1) * canvas / 2;
    # the digit's normalised coordinate is v = 2 (p - x0) / width - 1.
    theta = torch.zeros(len(boxes), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = canvas / width
    theta[:, 0, 2] = (canvas - 2 * x0 - width) / width
    theta[:, 1, 1] = canvas / height
    theta[:, 1, 2] = (canvas - 2 * y0 - height) / height
    grid = F.affine_grid(theta, [len(boxes), 1, canvas, canvas], align_corners=False)
    # Bilinear, align_corners=False: pixel j's centre is at j + 0.5 in both images; zeros outside.
    return F.grid_sample(digits, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _render(draws: dict, images: np.ndarray, max_digits: int, canvas: int, bar) -> np.ndarray:
    """Renders a split's canvases from its draws, a chunk of canvases at a time."""
    import torch

    counts = draws["counts"]
    n = len(counts)
    out = np.empty((n, 1, canvas, canvas), np.uint8)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # each canvas's first digit in the draws
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk = torch.zeros(stop - start, 1, canvas, canvas, dtype=torch.float64)
        for slot in range(max_digits):
            held = np.flatnonzero(counts[start:stop] > slot)
            if len(held) == 0:
                break
            which = first[start + held] + slot
            placed = place(images[draws["index"][which]], draws["box"][which], canvas)
            rows = torch.from_numpy(held)
            chunk[rows] = torch.maximum(chunk[rows], placed)
        out[start:stop] = chunk.round_().clamp_(0, 255).to(torch.uint8).numpy()
        bar.update(stop - start)
    return out


def _build_split(source_split, n, max_digits, canvas, rng, bar, overlap) -> dict:
    images, labels = source_split
    draws = _draw(rng, n, max_digits, canvas, len(images), overlap)
    counts = draws["counts"]
    present = np.arange(max_digits)[None, :] < counts[:, None]  # (n, max_digits), True in order
    boxes = np.zeros((n, max_digits, 4), np.float32)
    boxes[present] = draws["box"]  # row-major order of `present` is canvas-then-slot, like the draws
    digits = np.full((n, max_digits), -1, np.int64)
    digits[present] = np.asarray(labels, np.int64)[draws["index"]]
    return {
        "images": _render(draws, images, max_digits, canvas, bar),
        "counts": counts,
        "boxes": boxes,
        "digits": digits,
    }


def _file_arrays(splits: dict) -> dict:
    arrays = {}
    for split in SPLITS:
        s = splits[split]
        for part, array in zip(_PARTS, (s["images"], s["counts"], s["boxes"], s["digits"]), strict=True):
            arrays[f"{split}_{part}"] = array
    return arrays


def digest(arrays: dict) -> str:
    """Returns the hex sha256 over `arrays` in the file's key order: key, dtype, shape, bytes."""
    h = hashlib.sha256()
    for key in _KEYS:
        array = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        h.update(memoryview(array.reshape(-1)).cast("B"))
    return h.hexdigest()


def _mnist() -> dict:
    from vaelab.data import load_all

    return load_all("mnist")


def make(
    train_size=60000,
    test_size=10000,
    max_digits=2,
    seed=0,
    canvas=50,
    progress=False,
    source=None,
    overlap=False,
) -> dict:
    """Builds both splits, writes them to `path()` atomically, and returns them.

    `source` is ``{"train": (images, labels), "test": (images, labels)}`` of
    digits, by default MNIST (``vaelab.data.load_all("mnist")``). Every random
    choice comes from ``numpy.random.Generator(PCG64(...))`` streams spawned
    from `seed`, one for train and one for test, so the result depends only on
    the settings and the source.

    Returns ``{"train": arrays, "test": arrays, "meta": dict, "path": Path}``
    with arrays as described in the module docstring.
    """
    check_settings(train_size, test_size, max_digits, seed, canvas)
    source = _mnist() if source is None else source
    _check_source(source)
    from tqdm.auto import tqdm

    sizes = {"train": train_size, "test": test_size}
    streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
    splits = {}
    with tqdm(total=train_size + test_size, unit="canvas", desc="multi-mnist", disable=not progress) as bar:
        for split, stream in zip(SPLITS, streams, strict=True):
            rng = np.random.Generator(np.random.PCG64(stream))
            splits[split] = _build_split(source[split], sizes[split], max_digits, canvas, rng, bar, overlap)
    arrays = _file_arrays(splits)
    meta = {
        "dataset": "multi-mnist",
        "format": FORMAT,
        "seed": seed,
        "train_size": train_size,
        "test_size": test_size,
        "max_digits": max_digits,
        "canvas": canvas,
        "scale_range": list(SCALE_RANGE),
        "ink_overlap": overlap,
        "interpolation": "bilinear, align_corners=False",
        "sha256": digest(arrays),
    }
    where = path()
    with atomic_path(where) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, meta=np.array(json.dumps(meta)))
    return {**splits, "meta": meta, "path": where}


def _open(read_arrays: bool) -> tuple[dict, dict]:
    """Checks `path()` holds every array and a meta; returns (arrays or {}, meta); raises DataError."""
    where = path()
    if not where.exists():
        raise DataError(f"multi-mnist not made yet (no {where}); make it with `vaelab data make multi-mnist`")
    try:
        found = read_npz(where, [*_KEYS, "meta"] if read_arrays else ["meta"], what="a multi-mnist file")
        meta = json.loads(str(found["meta"][()]))
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise ValueError("meta holds no sha256")
    except DataError as e:
        reason = str(e).removeprefix(f"{where}: ")
        raise DataError(f"{where}: unreadable ({reason}); {_REMAKE}") from None
    except (ValueError, TypeError, IndexError, RecursionError):
        raise DataError(f"{where}: unreadable (its meta is not the settings and sha256); {_REMAKE}") from None
    if not read_arrays:
        with zipfile.ZipFile(where) as archive:  # opened above: it is a zip
            names = {info.filename.removesuffix(".npy") for info in archive.infolist()}
        missing = [k for k in _KEYS if k not in names]
        if missing:
            raise DataError(f"{where}: missing array(s) {', '.join(missing)}; {_REMAKE}")
    arrays = {k: found[k] for k in _KEYS} if read_arrays else {}
    return arrays, meta


def read_meta() -> dict:
    """Returns the settings and sha256 stored with the dataset; raises DataError.

    Cheap: it checks that the file opens and names every array, but does not
    read the arrays or verify their sha256 (loading does).
    """
    return _open(read_arrays=False)[1]


def load_splits() -> dict:
    """Returns ``{split: {"images", "counts", "boxes", "digits"}}`` for both splits, sha256-checked."""
    arrays, meta = _open(read_arrays=True)
    actual = digest(arrays)
    if actual != meta["sha256"]:
        raise DataError(
            f"{path()}: sha256 mismatch: expected {meta['sha256']}, got {actual} "
            f"(the file was changed or damaged); {_REMAKE}"
        )
    return {
        split: {
            "images": arrays[f"{split}_images"],
            "counts": arrays[f"{split}_labels"],
            "boxes": arrays[f"{split}_boxes"],
            "digits": arrays[f"{split}_digits"],
        }
        for split in SPLITS
    }


def load_split(split: str) -> dict:
    """Returns one split's ``{"images", "counts", "boxes", "digits"}``, sha256-checked; raises DataError."""
    if split not in SPLITS:
        raise choices_error("split", split, SPLITS, DataError)
    return load_splits()[split]
