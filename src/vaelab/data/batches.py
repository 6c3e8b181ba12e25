"""Images kept on the device as uint8 and served as flat float batches.

Binarisation is chosen per run:

- ``none``: pixels / 255 in [0, 1] (the Pyro tutorial and pytorch/examples);
- ``dynamic``: a fresh Bernoulli draw each time an image is used (IWAE paper);
- ``static``: one Bernoulli draw, made once from a seed.
"""

import numpy as np
import torch

from vaelab.errors import choices_error

BINARIZE = ("none", "dynamic", "static")


def _bernoulli_bytes(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Returns one seeded Bernoulli draw of uint8 `images` as uint8 0/255."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    probs = images.float().div_(255)
    return torch.bernoulli(probs, generator=generator).to(torch.uint8).mul_(255)


class ImageBatches:
    """Flat float batches ``(B, H*W)`` in [0, 1] drawn from uint8 images on `device`.

    images: (N, 1, H, W) or (N, H, W) uint8 numpy array.
    """

    def __init__(self, images: np.ndarray, binarize="none", seed=0, device="cpu"):
        if binarize not in BINARIZE:
            raise choices_error("binarization", binarize, BINARIZE)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        self.image_shape = tuple(images.shape[-2:])
        flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
        self.pixels = flat.to(device)
        self.dynamic = binarize == "dynamic"
        if binarize == "static":
            self.pixels = _bernoulli_bytes(self.pixels, seed)

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
        out.image_shape, out.dynamic = self.image_shape, False
        out.pixels = _bernoulli_bytes(self.pixels, seed)
        return out

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Returns the images at `index` as floats (B, H*W) in [0, 1].

        A dynamic draw uses torch's global RNG, so it is part of the run's
        seeded, checkpointed random stream.
        """
        # index_select copies whole rows: a batch of 128 MNIST images in 30-35 us
        # on the 2-core CPU, against 81-100 us through the element-wise gather
        # of pixels[index] (benchmarks/levers.py).
        x = self.pixels.index_select(0, index).float().div_(255)
        return torch.bernoulli(x) if self.dynamic else x

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """Returns the shuffled image order of `epoch`, a function of (seed, epoch) alone."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self), generator=generator).to(self.pixels.device)

    def batches(self, batch_size: int, order=None):
        """Yields float batches of `batch_size` (the last may be smaller), in `order`."""
        n = len(self)
        for start in range(0, n, batch_size):
            if order is None:
                yield self.batch(torch.arange(start, min(start + batch_size, n), device=self.pixels.device))
            else:
                yield self.batch(order[start : start + batch_size])
