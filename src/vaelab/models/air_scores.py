"""What AIR found, scored and drawn: counts, windows against the true boxes, and its pictures."""

import itertools

import torch

from vaelab import plots
from vaelab.data import multi_mnist
from vaelab.models.base import GENERIC_CAPTIONS, PictureView, evaluating


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Returns the IoU of boxes (x0, y0, width, height), broadcast over leading axes."""
    x0, y0 = torch.maximum(a[..., 0], b[..., 0]), torch.maximum(a[..., 1], b[..., 1])
    x1 = torch.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
    y1 = torch.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union.clamp(min=1e-12)


# The boxes AIR infers are windows around ink, so they are scored against each
# digit's ink box: the central 20/28 of its frame, where MNIST puts the ink.
INK_FRACTION = multi_mnist.INK_FRACTION


def ink_boxes(frames: torch.Tensor) -> torch.Tensor:
    """Returns the central INK_FRACTION of square frame boxes (x0, y0, side, side)."""
    side = frames[..., 2:] * INK_FRACTION
    return torch.cat([frames[..., :2] + (frames[..., 2:] - side) / 2, side], -1)


def matched_iou(inferred, present, truth, counts) -> torch.Tensor:
    """Returns, per ground-truth box, its IoU with the inferred box matched to it (0 if none).

    inferred (N, T, 4) with present (N, T); truth (N, D, 4) of which the first
    counts[i] are real. Each image's matching maximises the summed IoU over
    one-to-one assignments (tried exhaustively: T and D are small).
    """
    scores = []
    iou = box_iou(truth.unsqueeze(2), inferred.unsqueeze(1))  # (N, D, T)
    iou = iou * present.unsqueeze(1)
    for i in range(len(truth)):
        n_true = int(counts[i])
        if n_true == 0:
            continue
        table = iou[i, :n_true]
        steps = table.shape[1]
        best = None
        for chosen in itertools.permutations(range(max(steps, n_true)), n_true):
            values = torch.stack(
                [table[d, t] if t < steps else table.new_zeros(()) for d, t in enumerate(chosen)]
            )
            if best is None or values.sum() > best.sum():
                best = values
        scores.append(best)
    return torch.cat(scores) if scores else torch.zeros(0)


def count_scores(model, images, truth: dict, batch_size=500) -> dict:
    """Returns AIR's count_accuracy, count_confusion and box_iou on `images`.

    `truth` holds the split's counts (N,) and boxes (N, D, 4). count_confusion[i][j]
    counts images with i digits inferred as holding j; box_iou is the mean over
    ground-truth digits of the IoU between the digit's ink box and the window
    matched to it (0 for a digit no window was matched to).
    """
    with evaluating(model):
        found = [model.infer(batch) for batch in images.batches(batch_size)]
    counts = torch.as_tensor(truth["counts"])
    inferred = torch.cat([f["count"].cpu() for f in found])
    size = max(int(counts.max()), model.max_steps) + 1
    confusion = torch.zeros(size, size, dtype=torch.long)
    confusion.index_put_((counts, inferred), torch.ones_like(counts), accumulate=True)
    boxes = torch.cat([f["boxes"].cpu() for f in found])
    present = torch.cat([f["present"].cpu() for f in found])
    ious = matched_iou(boxes, present, ink_boxes(torch.as_tensor(truth["boxes"])), counts)
    return {
        "count_accuracy": (inferred == counts).double().mean().item(),
        "count_confusion": confusion.tolist(),
        "box_iou": ious.mean().item() if len(ious) else float("nan"),
    }


# AIR's pictures in the report's order; the generic names show other things for AIR.
CAPTIONS = {
    "elbo_curves": GENERIC_CAPTIONS["elbo_curves"],
    "air_boxes": (
        "Random test images with the windows AIR's guide infers (its most probable explanation), "
        "one colour per step; above each, the inferred count and the true count, in red when wrong."
    ),
    "count_accuracy": (
        "Share of test images whose inferred number of objects is right, per epoch (and of the "
        "validation images, with --validation)."
    ),
    "count_confusion": (
        "Test images by true count (rows) and inferred count (columns), shaded by share of the row."
    ),
    "reconstructions": "Random test images (top) and the canvases of the guide's most probable explanation.",
    "samples": (
        "Canvases drawn from the prior given the number of objects (windows and glimpses from the prior); "
        "the prior itself adds each further object with a small probability, so its draws are mostly empty."
    ),
}


@torch.no_grad()
def samples_by_count(model, per_count: int) -> torch.Tensor:
    """Returns AIR's prior canvases with exactly 1, 2, … max_steps objects: (max_steps, per_count, x_dim)."""
    return torch.stack([model.sample(per_count, count=k) for k in range(1, model.max_steps + 1)])


@torch.no_grad()
def draw(model, view: PictureView) -> dict:
    """Draws AIR's windows on 16 test images, its count accuracy per epoch, its confusion and its samples."""
    images, shape = view.images, view.images.image_shape
    device = images.pixels.device
    chosen = view.pick[:16]
    batch = images.batch(chosen.to(device))
    found = model.infer(batch)
    counts = batch.y.cpu().numpy() if images.label_kind == "counts" else None
    plots.air_boxes(
        batch.x.reshape(-1, *shape).cpu().numpy(),
        found["boxes"].cpu().numpy(),
        found["present"].cpu().numpy(),
        counts,
        view.path("air_boxes"),
        f"Inferred windows on test images: inferred count (true count), {view.title}",
    )
    if any("count_accuracy" in m for m in view.metrics):
        plots.count_accuracy_curve(view.metrics, view.path("count_accuracy"))
    if view.evaluation.get("count_confusion"):
        title = f"Counts: true against inferred ({view.evaluation.get('split', 'test')} split)"
        plots.count_confusion(view.evaluation["count_confusion"], view.path("count_confusion"), title)
    with torch.random.fork_rng():
        torch.manual_seed(view.seed)
        rows = samples_by_count(model, 10)
    names = [f"{k} object{'s' if k > 1 else ''}" for k in range(1, len(rows) + 1)]
    title = "Samples from the prior, given the number of objects"
    plots.samples(rows.reshape(-1, *shape).cpu().numpy(), view.path("samples"), title, names)
    return {}


__all__ = ["CAPTIONS", "box_iou", "count_scores", "draw", "ink_boxes", "matched_iou", "samples_by_count"]
