"""Pictures of what a model learned, written as PNG files."""

import io

import numpy as np

from vaelab.fileio import write_bytes


def image_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """Returns images (N, H, W) in [0, 1] tiled into one uint8 picture, `pad` pixels apart."""
    n, h, w = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = (n + ncol - 1) // ncol
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=np.uint8)
    pixels = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def save_png(picture: np.ndarray, path, scale: int = 1) -> None:
    """Writes a uint8 greyscale picture to `path` as PNG, each pixel `scale`× wide, atomically."""
    from PIL import Image

    if scale > 1:
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(picture, mode="L").save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
