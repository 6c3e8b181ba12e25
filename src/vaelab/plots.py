"""Pictures of what a model learned, written as PNG files (matplotlib, no display).

Each function draws one picture from arrays and writes it atomically;
:func:`make_plots` reads a run directory and draws them all into RUN/plots/.
"""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
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
    """Draws train, test and (with --validation) validation ELBO (nats per image) against epoch."""
    epochs = [m["epoch"] for m in metrics]
    curves = ["train_elbo", "test_elbo"] + (["val_elbo"] if metrics and "val_elbo" in metrics[0] else [])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(epochs, [m["train_elbo"] for m in metrics], "o-", ms=3, label="train")
    ax.plot(epochs, [m["test_elbo"] for m in metrics], "s-", ms=3, label="test")
    if "val_elbo" in curves:
        ax.plot(epochs, [m["val_elbo"] for m in metrics], "^-", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("ELBO (nats per image, higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if len(metrics) > 3:  # the first epoch dwarfs the rest; show the part that moves
        later = [m[k] for m in metrics[1:] for k in curves]
        span = max(later) - min(later)
        ax.set_ylim(min(later) - 0.1 * span - 0.5, max(later) + 0.05 * span + 0.5)
    save_figure(fig, path)


def reconstructions(images: np.ndarray, recon: np.ndarray, path) -> None:
    """Draws test images (N, H, W) above their reconstructions, both in [0, 1]."""
    n = len(images)
    grid = image_grid(np.concatenate([images, recon]), ncol=n)
    save_figure(_image_figure(grid, "Test images and their reconstructions", ["data", "recon."]), path)


def samples(images: np.ndarray, path, title="Samples from the prior (mean images)", row_labels=None) -> None:
    """Draws images (N, H, W) in [0, 1] as a square grid, or as len(row_labels) labelled rows."""
    if row_labels:
        grid = image_grid(images, ncol=len(images) // len(row_labels))
        save_figure(_image_figure(grid, title, list(row_labels)), path)
    else:
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


def compare_curves(curves: dict, path, title="Test ELBO per epoch, by objective") -> None:
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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:  # no run with epochs: no legend to draw (matplotlib would warn)
        ax.legend(loc="lower right")
    if len(values) > 3:
        span = max(values) - min(values)
        ax.set_ylim(min(values) - 0.1 * span - 0.5, max(values) + 0.05 * span + 0.5)
    save_figure(fig, path)


# Attend-Infer-Repeat: one colour per step, the same in every picture (Okabe-Ito's
# colour-blind-safe palette, without red: a red caption marks a wrong count).
STEP_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9")


def _step_style(t: int) -> dict:
    # Later steps' lines are thinner, so windows that coincide all stay visible.
    return {"edgecolor": STEP_COLOURS[t % len(STEP_COLOURS)], "lw": max(2.4 - 0.5 * t, 1.0)}


def air_boxes(
    images: np.ndarray, boxes: np.ndarray, present: np.ndarray, counts_true, path, title: str
) -> None:
    """Draws images (N, H, W) in [0, 1] with the windows AIR inferred, one colour per step.

    boxes (N, T, 4) are pixel boxes (x0, y0, width, height), drawn where
    present (N, T); each image's caption is its inferred count, and with
    counts_true (N,) also the true count, in red when they differ.
    """
    images, boxes, present = np.asarray(images), np.asarray(boxes), np.asarray(present, bool)
    n, h, w = images.shape
    steps = boxes.shape[1]
    ncol = min(n, 4)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.75 * ncol, 1.95 * nrow + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest", extent=(0, w, h, 0))
        for t in range(steps):
            if present[i, t]:
                x0, y0, bw, bh = (float(v) for v in boxes[i, t])
                ax.add_patch(Rectangle((x0, y0), bw, bh, fill=False, **_step_style(t)))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        count = int(present[i].sum())
        if counts_true is None:
            ax.set_title(f"{count} inferred", fontsize=9, pad=3)
        else:
            truth = int(counts_true[i])
            colour = "#222222" if count == truth else "#d62728"
            weight = "normal" if count == truth else "bold"
            ax.set_title(f"{count} (true {truth})", fontsize=9, pad=3, color=colour, fontweight=weight)
    handles = [Rectangle((0, 0), 1, 1, fill=False, **_step_style(t)) for t in range(steps)]
    fig.legend(
        handles,
        [f"step {t + 1}" for t in range(steps)],
        loc="lower center",
        ncol=steps,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
        handlelength=1.2,
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))  # 0.3 inch for the legend
    save_figure(fig, path)


COUNT_ACCURACY_TARGET = 0.95  # the dashed reference line of count_accuracy_curve


def count_accuracy_curve(metrics: list, path, title=None) -> None:
    """Draws the test split's count accuracy (%) against epoch, with a dashed line at 95%.

    With a validation split (``val_count_accuracy``), its accuracy too, in C4.
    """
    scored = [m for m in metrics if "count_accuracy" in m]
    epochs = [m["epoch"] for m in scored]
    accuracy = [100 * m["count_accuracy"] for m in scored]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    label = f"test (last {accuracy[-1]:.1f}%)" if scored else "test"
    ax.plot(epochs, accuracy, "o-", ms=3, color="C2", label=label)
    held_out = [m for m in scored if "val_count_accuracy" in m]
    splits = "test and validation splits" if held_out else "test split"
    title = title or f"Count accuracy per epoch ({splits})"
    if held_out:
        val = [100 * m["val_count_accuracy"] for m in held_out]
        label = f"validation (last {val[-1]:.1f}%)"
        ax.plot([m["epoch"] for m in held_out], val, "^-", ms=3, color="C4", label=label)
    if scored:
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    target = 100 * COUNT_ACCURACY_TARGET
    ax.axhline(target, color="C7", ls="--", lw=1, label=f"{target:.0f}%")
    ax.set_xlabel("epoch")
    if 0 < len(epochs) <= 10:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("count accuracy (% of the split's images)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def count_confusion(confusion, path, title="Counts: true against inferred (test split)") -> None:
    """Draws confusion[i][j], the images with i objects inferred to hold j, as an annotated heatmap.

    Cells are shaded by their share of the row (the true count); each shows its number of images.
    """
    table = np.asarray(confusion, dtype=np.int64)
    rows, cols = table.shape
    totals = table.sum(1, keepdims=True)
    share = np.divide(table, totals, out=np.zeros(table.shape), where=totals > 0)
    accuracy = np.trace(table) / max(table.sum(), 1)
    fig, ax = plt.subplots(figsize=(1.0 * cols + 2.6, 0.85 * rows + 1.4))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(rows):
        for j in range(cols):
            colour = "white" if share[i, j] > 0.6 else "#222222"
            ax.text(j, i, f"{table[i, j]}", ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlabel("inferred count")
    ax.set_ylabel("true count")
    ax.set_title(f"{title}\naccuracy {100 * accuracy:.1f}% of {table.sum()} images", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    save_figure(fig, path)
