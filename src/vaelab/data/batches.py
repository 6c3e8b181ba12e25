"""Images kept on the device as uint8 and served as flat float batches.

Binarisation is chosen per run:

- ``none``: pixels / 255 in [0, 1] (the Pyro tutorial and pytorch/examples);
- ``dynamic``: a fresh Bernoulli draw each time an image is used (IWAE paper);
- ``static``: one Bernoulli draw, made once from a seed.

A step's data is a :class:`Batch`: the images and, where the dataset has
them, their labels. It passes untouched through the loop, the objectives,
DDP sharding and evaluation; a model takes what it needs from it.
"""

from typing import NamedTuple

import numpy as np
import torch

from vaelab.errors import choices_error

BINARIZE = ("none", "dynamic", "static")
LABEL_KINDS = ("classes", "counts")  # what a dataset's labels are: digit classes, or objects per image


class Batch(NamedTuple):
    """One step's data: images x (B, H*W) floats in [0, 1]; labels y (B,) int64, or None."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    def tensors(self) -> tuple:
        """Returns the fields that are set, in order: (x,) or (x, y)."""
        return (self.x,) if self.y is None else (self.x, self.y)


class DataSpec(NamedTuple):
    """What a model is built for: image shape (H, W), and the number of classes if labels are classes."""

    image_shape: tuple
    num_classes: int | None = None

    @property
    def x_dim(self) -> int:
        return self.image_shape[0] * self.image_shape[1]


def _bernoulli_bytes(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Returns one seeded Bernoulli draw of uint8 `images` as uint8 0/255."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    probs = images.float().div_(255)
    return torch.bernoulli(probs, generator=generator).to(torch.uint8).mul_(255)


class ImageBatches:
    """Flat float batches ``(B, H*W)`` in [0, 1] drawn from uint8 images on `device`.

    images: (N, 1, H, W) or (N, H, W) uint8 numpy array; labels: (N,) integers or
    None, and `label_kind` says what they are ("classes" or "counts").
    """

    def __init__(
        self, images: np.ndarray, binarize="none", seed=0, device="cpu", labels=None, label_kind=None
    ):
        if binarize not in BINARIZE:
            raise choices_error("binarization", binarize, BINARIZE)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if (labels is None) != (label_kind is None) or label_kind not in (None, *LABEL_KINDS):
            raise ValueError(f"labels need a label_kind of {LABEL_KINDS}, got {label_kind!r}")
        self.image_shape = tuple(images.shape[-2:])
        flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
        self.pixels = flat.to(device)
        self.dynamic = binarize == "dynamic"
        if binarize == "static":
            self.pixels = _bernoulli_bytes(self.pixels, seed)
        self.labels = (
            None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        )
        self.label_kind = label_kind
        # Classes are 0 … C-1; the count comes from these labels unless the caller fixes it.
        self.num_classes = None
        if label_kind == "classes" and len(self.labels):
            self.num_classes = int(self.labels.max()) + 1

    @property
    def spec(self) -> DataSpec:
        """The image shape and number of classes a model is built for."""
        return DataSpec(self.image_shape, self.num_classes)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def x_dim(self) -> int:
        return self.pixels.shape[1]

    def fixed(self, seed: int) -> "ImageBatches":
        """Returns these images with any dynamic binarisation drawn once from `seed`.

        Evaluation uses this, so that two evaluations of one model see the same
        binary images and give the same number.
        """
        if not self.dynamic:
            return self
        out = object.__new__(ImageBatches)
        out.__dict__.update(self.__dict__)
        out.dynamic = False
        out.pixels = _bernoulli_bytes(self.pixels, seed)
        return out

    def batch(self, index: torch.Tensor) -> Batch:
        """Returns the images at `index` as floats (B, H*W) in [0, 1], with their labels if any."""
        return Batch(self.images(index), None if self.labels is None else self.labels.index_select(0, index))

    def first(self, n: int) -> "ImageBatches":
        """Returns a copy of the first `n` images and labels (what ``--validation`` leaves to train on).

        A copy, so that the rest of the split is not kept in memory.
        """
        part = object.__new__(ImageBatches)
        part.__dict__.update(self.__dict__)
        part.pixels = self.pixels[:n].clone()
        part.labels = None if self.labels is None else self.labels[:n].clone()
        return part

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """Returns the images at `index` as floats (B, H*W) in [0, 1].

        A dynamic draw uses torch's global RNG, so it is part of the run's
        seeded, checkpointed random stream: pixel i is 1 where a uniform draw
        u_i < x_i, probability x_i, a Bernoulli(x_i) draw.
        """
        # index_select copies whole rows: a batch of 128 MNIST images in 30-35 us
        # on the 2-core CPU, against 81-100 us through the element-wise gather
        # of pixels[index] (benchmarks/levers.py).
        x = self.pixels.index_select(0, index).float().div_(255)
        if not self.dynamic:
            return x
        # The comparison, written in place into the uniforms, takes 60% of
        # torch.bernoulli's time on the CPU (benchmarks/levers.py --only binarise).
        return torch.rand_like(x).lt_(x)

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """Returns the shuffled image order of `epoch`, a function of (seed, epoch) alone."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self), generator=generator).to(self.pixels.device)

    def batches(self, batch_size: int, order=None):
        """Yields Batches of `batch_size` images (the last may be smaller), in `order`."""
        n = len(self)
        for start in range(0, n, batch_size):
            if order is None:
                yield self.batch(torch.arange(start, min(start + batch_size, n), device=self.pixels.device))
            else:
                yield self.batch(order[start : start + batch_size])
