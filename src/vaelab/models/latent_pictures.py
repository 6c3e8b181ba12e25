"""Pictures of a VAE's latent space: interpolations, traversals, active units, a map, the manifold.

They use only the VAE's pieces (``encode`` and ``decode``), so every model
built on the VAE (β-VAE, conditional VAE) draws them; a conditional model
decodes each picture's points with the label of the test image they come from.
"""

import numpy as np
import torch

from vaelab import plots
from vaelab.models.base import PictureView, as_batch

MIN_MAP_POINTS = 5  # fewer test images than this make no map (nor a t-SNE)


@torch.no_grad()
def posterior_means(model, images, batch_size=1000) -> torch.Tensor:
    """Returns E[z|x] for every image of `images` (ImageBatches): (N, z_dim)."""
    return torch.cat([model.encode(batch)[0] for batch in images.batches(batch_size)])


@torch.no_grad()
def _decode(model, z: torch.Tensor, shape, y=None) -> np.ndarray:
    return torch.sigmoid(model.decode(z, y)).reshape(-1, *shape).cpu().numpy()


@torch.no_grad()
def interpolation_rows(model, pairs, steps, shape) -> np.ndarray:
    """Returns decoded images along straight lines between pairs' posterior means: (pairs, steps, H, W).

    pairs: two batches (or image tensors) of the same size; a conditional model
    decodes each line with the first image's label.
    """
    first, second = as_batch(pairs[0]), as_batch(pairs[1])
    z_a, z_b = model.encode(first)[0], model.encode(second)[0]
    t = torch.linspace(0, 1, steps, device=z_a.device)[None, :, None]
    z = (1 - t) * z_a[:, None] + t * z_b[:, None]
    y = None if first.y is None else first.y.repeat_interleave(steps)
    return _decode(model, z.reshape(-1, z.shape[-1]), shape, y).reshape(len(z_a), steps, *shape)


@torch.no_grad()
def traversal_rows(model, z_ref, dims, values, shape, y=None) -> np.ndarray:
    """Returns decoded images of `z_ref` with each of `dims` set to each of `values`: (dims, steps, H, W).

    y: the reference image's label (1,), for a conditional model.
    """
    count = len(dims) * len(values)
    z = z_ref.repeat(count, 1)
    for i, d in enumerate(dims):
        z[i * len(values) : (i + 1) * len(values), d] = torch.as_tensor(values, dtype=z.dtype)
    labels = None if y is None else y.expand(count)
    return _decode(model, z, shape, labels).reshape(len(dims), len(values), *shape)


def tsne(points: np.ndarray, seed=0) -> np.ndarray:
    """Returns a 2-D t-SNE embedding of `points` (N, D) (scikit-learn, PCA initialised)."""
    from sklearn.manifold import TSNE

    if points.shape[1] == 2:
        return points
    perplexity = min(30.0, (len(points) - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(points)


@torch.no_grad()
def draw(model, view: PictureView) -> dict:
    """Draws the latent-space pictures of `model` on the view's test images; returns num_active_units."""
    images, pick, shape = view.images, view.pick, view.images.image_shape
    device = images.pixels.device
    # Test images picked at random; a test set smaller than the pictures need is used again.
    chosen = pick[torch.arange(12, 22) % len(pick)].to(device)
    pairs = (images.batch(chosen[:5]), images.batch(chosen[5:]))
    plots.interpolations(interpolation_rows(model, pairs, 10, shape), view.path("interpolations"))

    z_means = posterior_means(model, images)
    variances = (z_means.var(dim=0) if len(z_means) > 1 else torch.zeros_like(z_means[0])).cpu().numpy()
    active = plots.active_units(variances, view.path("active_units"))
    dims = [int(d) for d in np.argsort(variances)[::-1][: min(8, len(variances))]]
    values = np.linspace(-3, 3, 11)
    reference = images.batch(pick[:1].to(device))
    rows = traversal_rows(model, z_means[pick[0]][None], dims, values, shape, reference.y)
    plots.traversal(rows, dims, values, view.path("traversal"))

    subset = pick[: min(view.tsne_points, len(images))].to(device)
    if len(subset) < MIN_MAP_POINTS:
        view.echo(f"no latent map: {len(subset)} test image(s), a map needs {MIN_MAP_POINTS}")
        return {"num_active_units": active}
    view.echo(f"t-SNE of {len(subset)} posterior means ({z_means.shape[1]}-D)...")
    embedding = tsne(z_means[subset].cpu().numpy(), seed=view.seed)
    method = "posterior means" if z_means.shape[1] == 2 else "t-SNE of posterior means"
    labels = np.zeros(len(subset), np.int64) if images.labels is None else images.labels[subset].cpu().numpy()
    plots.latent_map(embedding, labels, view.path("latent_map"), f"Latent map: {method}, test set")
    if z_means.shape[1] == 2:
        n, extent = 20, 3.0
        axis = torch.linspace(extent, -extent, n, device=device)  # top row is z_1 = +extent
        z = torch.stack(torch.meshgrid(axis, axis.flip(0), indexing="ij")[::-1], dim=-1).reshape(-1, 2)
        # A conditional model draws the manifold of the reference image's class.
        y = None if reference.y is None else reference.y.expand(len(z))
        plots.manifold(_decode(model, z, shape, y).reshape(n, n, *shape), extent, view.path("manifold"))
    return {"num_active_units": active}


__all__ = ["draw", "interpolation_rows", "posterior_means", "traversal_rows", "tsne"]
