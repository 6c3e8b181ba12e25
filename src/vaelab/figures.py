"""Every picture of a run, drawn from its run directory into RUN/plots/.

>>> written = make_plots(vaelab.load_run("runs/demo"))
>>> sorted(written)   # names -> paths, plus "num_active_units" for a VAE: the count

An AIR run (a model with ``infer``) gets its own pictures instead of the
latent-space ones: inferred windows, count accuracy and the count confusion.
"""

import json
from pathlib import Path

import numpy as np
import torch

from vaelab import plots
from vaelab.train import split_images_and_labels

# The pictures of a VAE run (the manifold only for a 2-D latent) and of an AIR run.
PLOT_NAMES = (
    "elbo_curves",
    "reconstructions",
    "samples",
    "interpolations",
    "traversal",
    "active_units",
    "latent_map",
    "manifold",
)
AIR_PLOT_NAMES = (
    "elbo_curves",
    "air_boxes",
    "count_accuracy",
    "count_confusion",
    "reconstructions",
    "samples",
)
# Every picture any run can have, in the report's order.
ALL_PLOT_NAMES = tuple(dict.fromkeys(AIR_PLOT_NAMES + PLOT_NAMES))


@torch.no_grad()
def posterior_means(model, images, batch_size=1000) -> torch.Tensor:
    """Returns E[z|x] for every image: (N, z_dim)."""
    return torch.cat([model.encoder(x)[0] for x in images.batches(batch_size)])


@torch.no_grad()
def _decode(model, z: torch.Tensor, shape) -> np.ndarray:
    return torch.sigmoid(model.decoder(z)).reshape(-1, *shape).cpu().numpy()


@torch.no_grad()
def interpolation_rows(model, x_pairs, steps, shape) -> np.ndarray:
    """Returns decoded images along straight lines between pairs' posterior means: (pairs, steps, H, W)."""
    z_a, z_b = model.encoder(x_pairs[0])[0], model.encoder(x_pairs[1])[0]
    t = torch.linspace(0, 1, steps, device=z_a.device)[None, :, None]
    z = (1 - t) * z_a[:, None] + t * z_b[:, None]
    return _decode(model, z.reshape(-1, z.shape[-1]), shape).reshape(len(z_a), steps, *shape)


@torch.no_grad()
def traversal_rows(model, z_ref, dims, values, shape) -> np.ndarray:
    """Returns decoded images of `z_ref` with each of `dims` set to each of `values`: (dims, steps, H, W)."""
    z = z_ref.repeat(len(dims) * len(values), 1)
    for i, d in enumerate(dims):
        z[i * len(values) : (i + 1) * len(values), d] = torch.as_tensor(values, dtype=z.dtype)
    return _decode(model, z, shape).reshape(len(dims), len(values), *shape)


def tsne(points: np.ndarray, seed=0) -> np.ndarray:
    """Returns a 2-D t-SNE embedding of `points` (N, D) (scikit-learn, PCA initialised)."""
    from sklearn.manifold import TSNE

    if points.shape[1] == 2:
        return points
    perplexity = min(30.0, (len(points) - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(points)


@torch.no_grad()
def make_plots(run, out_dir=None, tsne_points=2000, echo=print) -> dict:
    """Draws every picture of `run` into `out_dir` (default RUN/plots); returns name -> path.

    For a VAE also returns "num_active_units", the number of active latent
    dimensions; an AIR run (a model with ``infer``) has no such count.
    """
    out = Path(out_dir or Path(run.dir) / "plots")
    model, config = run.model, run.config
    device = next(model.parameters()).device
    images, labels = split_images_and_labels(config, "test", device)
    shape = images.image_shape
    generator = torch.Generator().manual_seed(config.seed)
    pick = torch.randperm(len(images), generator=generator)
    written = {}

    def path(name):
        written[name] = out / f"{name}.png"
        return written[name]

    if run.metrics:
        plots.elbo_curves(run.metrics, path("elbo_curves"), f"ELBO per epoch: {run.dir.name}")
    air = hasattr(model, "infer")  # Attend-Infer-Repeat: objects, windows and counts, no z to map
    if air:
        _air_plots(run, images, labels, pick, path)
    x = images.batch(pick[:12].to(device))
    plots.reconstructions(
        x.reshape(-1, *shape).cpu().numpy(),
        model.reconstruct(x).reshape(-1, *shape).cpu().numpy(),
        path("reconstructions"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        if air:
            rows = samples_by_count(model, 10)
            names = [f"{k} object{'s' if k > 1 else ''}" for k in range(1, len(rows) + 1)]
            title = "Samples from the prior, given the number of objects"
            plots.samples(rows.reshape(-1, *shape).cpu().numpy(), path("samples"), title, names)
        else:
            plots.samples(model.sample(64).reshape(-1, *shape).cpu().numpy(), path("samples"))
    if air:
        return written
    pairs = (images.batch(pick[12:17].to(device)), images.batch(pick[17:22].to(device)))
    plots.interpolations(interpolation_rows(model, pairs, 10, shape), path("interpolations"))

    z_means = posterior_means(model, images)
    variances = z_means.var(dim=0).cpu().numpy()
    written["num_active_units"] = plots.active_units(variances, path("active_units"))
    dims = [int(d) for d in np.argsort(variances)[::-1][: min(8, len(variances))]]
    values = np.linspace(-3, 3, 11)
    plots.traversal(
        traversal_rows(model, z_means[pick[0]][None], dims, values, shape), dims, values, path("traversal")
    )

    subset = pick[: min(tsne_points, len(images))].numpy()
    echo(f"t-SNE of {len(subset)} posterior means ({z_means.shape[1]}-D)...")
    embedding = tsne(z_means[subset].cpu().numpy(), seed=config.seed)
    method = "posterior means" if z_means.shape[1] == 2 else "t-SNE of posterior means"
    plots.latent_map(embedding, labels[subset], path("latent_map"), f"Latent map: {method}, test set")
    if z_means.shape[1] == 2:
        n, extent = 20, 3.0
        axis = torch.linspace(extent, -extent, n, device=device)  # top row is z_1 = +extent
        z = torch.stack(torch.meshgrid(axis, axis.flip(0), indexing="ij")[::-1], dim=-1).reshape(-1, 2)
        plots.manifold(_decode(model, z, shape).reshape(n, n, *shape), extent, path("manifold"))
    return written


@torch.no_grad()
def samples_by_count(model, per_count: int) -> torch.Tensor:
    """Returns AIR's prior canvases with exactly 1, 2, … max_steps objects: (max_steps, per_count, x_dim)."""
    return torch.stack([model.sample(per_count, count=k) for k in range(1, model.max_steps + 1)])


@torch.no_grad()
def _air_plots(run, images, labels, pick, path) -> None:
    """Draws AIR's inferred windows on 16 test images, its count accuracy per epoch and its confusion."""
    model, config = run.model, run.config
    device = next(model.parameters()).device
    chosen = pick[:16]
    x = images.batch(chosen.to(device))
    found = model.infer(x)
    # multi-mnist loads as (images, counts): its labels are the true counts.
    counts = np.asarray(labels)[chosen.numpy()] if config.dataset == "multi-mnist" else None
    plots.air_boxes(
        x.reshape(-1, *images.image_shape).cpu().numpy(),
        found["boxes"].cpu().numpy(),
        found["present"].cpu().numpy(),
        counts,
        path("air_boxes"),
        f"Inferred windows on test images: inferred count (true count), {run.dir.name}",
    )
    if any("count_accuracy" in m for m in run.metrics):
        plots.count_accuracy_curve(run.metrics, path("count_accuracy"))
    eval_path = Path(run.dir) / "eval.json"
    result = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    if result.get("count_confusion"):
        title = f"Counts: true against inferred ({result.get('split', 'test')} split)"
        plots.count_confusion(result["count_confusion"], path("count_confusion"), title)
