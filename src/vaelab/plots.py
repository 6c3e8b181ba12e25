"""Pictures of what a model learned, written as PNG files (matplotlib, no display).

Each function draws one picture from arrays and writes it atomically;
:func:`make_plots` reads a run directory and draws them all into RUN/plots/.
"""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vaelab.fileio import write_bytes  # noqa: E402

# A latent dimension is active when its posterior mean varies across images
# by more than this (Burda et al., 2015, section 5.2).
ACTIVE_UNIT_THRESHOLD = 0.01


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


def save_figure(fig, path) -> None:
    """Writes a matplotlib figure to `path` as PNG atomically and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _image_figure(picture: np.ndarray, title: str, ylabels=None, width=7.0):
    height = width * picture.shape[0] / picture.shape[1]
    fig, ax = plt.subplots(figsize=(width, max(height, 1.2) + 0.5))
    ax.imshow(picture, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    if ylabels:
        rows = len(ylabels)
        step = picture.shape[0] / rows
        ax.set_yticks([step * (i + 0.5) for i in range(rows)], ylabels)
        ax.tick_params(length=0)
    else:
        ax.set_yticks([])
    return fig


def elbo_curves(metrics: list, path, title="ELBO per epoch") -> None:
    """Draws train and test ELBO (nats per image) against epoch."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(epochs, [m["train_elbo"] for m in metrics], "o-", ms=3, label="train")
    ax.plot(epochs, [m["test_elbo"] for m in metrics], "s-", ms=3, label="test")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("ELBO (nats per image, higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if len(metrics) > 3:  # the first epoch dwarfs the rest; show the part that moves
        later = [m[k] for m in metrics[1:] for k in ("train_elbo", "test_elbo")]
        span = max(later) - min(later)
        ax.set_ylim(min(later) - 0.1 * span - 0.5, max(later) + 0.05 * span + 0.5)
    save_figure(fig, path)


def reconstructions(images: np.ndarray, recon: np.ndarray, path) -> None:
    """Draws test images (N, H, W) above their reconstructions, both in [0, 1]."""
    n = len(images)
    grid = image_grid(np.concatenate([images, recon]), ncol=n)
    save_figure(_image_figure(grid, "Test images and their reconstructions", ["data", "recon."]), path)


def samples(images: np.ndarray, path, title="Samples from the prior (mean images)") -> None:
    """Draws images (N, H, W) in [0, 1] as a square grid."""
    save_figure(_image_figure(image_grid(images), title, width=5.5), path)


def interpolations(rows: np.ndarray, path) -> None:
    """Draws rows (pairs, steps, H, W): each a straight line in latent space between two test images."""
    pairs, steps = rows.shape[:2]
    grid = image_grid(rows.reshape(-1, *rows.shape[2:]), ncol=steps)
    labels = [f"pair {i + 1}" for i in range(pairs)]
    title = "Interpolation between test images (posterior means, linear in z)"
    save_figure(_image_figure(grid, title, labels), path)


def traversal(rows: np.ndarray, dims: list, values: np.ndarray, path) -> None:
    """Draws rows (dims, steps, H, W): one latent dimension varied over `values`, the rest fixed."""
    grid = image_grid(rows.reshape(-1, *rows.shape[2:]), ncol=rows.shape[1])
    title = f"Latent traversal: z_d from {values[0]:+.1f} to {values[-1]:+.1f}, most active dims"
    save_figure(_image_figure(grid, title, [f"z_{d}" for d in dims]), path)


def active_units(variances: np.ndarray, path) -> int:
    """Draws the posterior-mean variance of each latent dimension; returns how many are active."""
    order = np.argsort(variances)[::-1]
    active = int((variances > ACTIVE_UNIT_THRESHOLD).sum())
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.bar(
        range(len(variances)), variances[order], color=["C0" if v > 0.01 else "C7" for v in variances[order]]
    )
    ax.axhline(ACTIVE_UNIT_THRESHOLD, color="C3", ls="--", label=f"threshold {ACTIVE_UNIT_THRESHOLD}")
    ax.set_yscale("log")
    ax.set_xlabel("latent dimension (sorted)")
    ax.set_ylabel("Cov_x(E[z_d | x])")
    ax.set_title(f"Active units: {active} of {len(variances)}")
    ax.legend()
    save_figure(fig, path)
    return active


def latent_map(points: np.ndarray, labels: np.ndarray, path, title: str) -> None:
    """Draws 2-D points coloured by label, with a legend of the labels."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for label in np.unique(labels):
        mask = labels == label
        ax.scatter(points[mask, 0], points[mask, 1], s=4, alpha=0.7, label=str(label), color=f"C{label % 10}")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(title="label", markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(fig, path)


def manifold(grid_images: np.ndarray, extent: float, path) -> None:
    """Draws decoded images (n, n, H, W) of a 2-D latent grid over [-extent, extent]²."""
    n = grid_images.shape[0]
    picture = image_grid(grid_images.reshape(-1, *grid_images.shape[2:]), ncol=n, pad=0)
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.imshow(picture, cmap="gray_r", extent=(-extent, extent, -extent, extent))
    ax.set_xlabel("z_0")
    ax.set_ylabel("z_1")
    ax.set_title("Decoded latent manifold (2-D latent)")
    save_figure(fig, path)


def compare_curves(curves: dict, path) -> None:
    """Draws the test ELBO per epoch of several runs (name -> metrics) on one axis."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    values = []
    for i, (name, metrics) in enumerate(curves.items()):
        epochs = [m["epoch"] for m in metrics]
        test = [m["test_elbo"] for m in metrics]
        values += test[1:] or test
        ax.plot(epochs, test, marker="os^vD"[i % 5], ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test ELBO (nats per image, higher is better)")
    ax.set_title("Test ELBO per epoch, by objective")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if len(values) > 3:
        span = max(values) - min(values)
        ax.set_ylim(min(values) - 0.1 * span - 0.5, max(values) + 0.05 * span + 0.5)
    save_figure(fig, path)
