"""The latent explorer: RUN/explore.html, one offline page that runs the decoder in the browser.

``vaelab explore RUN`` writes a single HTML file (no network fetch, opens from
disk) that carries the decoder's weights and a forward pass in plain
JavaScript, so the picture answers as the user moves:

- a map of test images in latent space, coloured by label: the latent itself
  when it has two dimensions, else the first two principal components of the
  posterior means; hovering a point shows its image, clicking sets the
  current latent to its posterior mean (and the label to its own);
- sliders for the most active latent dimensions (largest variance of the
  posterior means over the mapped images), the decoded image redrawn on
  every move, and the decode time measured in the page and printed on it;
- an interpolation strip between two latents chosen as A and B;
- for a conditional model (cvae, m2), a label picker fed to the decoder.

The decoder is exported layer by layer (:func:`export_decoder`): Linear,
the activations vaelab builds networks from, and for ``--net conv`` the
reshape, transposed convolutions and crop. The page computes in double
precision from the float32 weights; a browser test holds its images to
PyTorch's within 1e-4.

Models: those with one Gaussian latent and a ``decode(z, y)`` (vae, beta-vae,
cvae, m2, vampprior); others are refused in one line.
"""

import base64
import html
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaelab import data
from vaelab.errors import ConfigError
from vaelab.fileio import write_bytes
from vaelab.models.base import evaluating
from vaelab.models.cvae import CVAE
from vaelab.models.vae import VAE
from vaelab.nets import BernoulliDecoder, ConvDecoder

PAGE = "explore.html"
TEMPLATE = "explore_page.html"  # the page, beside this module: HTML, CSS and the JavaScript decoder
MAX_SLIDERS = 8
STRIP = 10  # images in the interpolation strip
_ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.Softplus: "softplus",
    nn.Tanh: "tanh",
    nn.ELU: "elu",
    nn.LeakyReLU: "leaky_relu",
}


def _floats(tensor: torch.Tensor) -> str:
    """A tensor's values as base64 of little-endian float32."""
    return base64.b64encode(
        tensor.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4")
    ).decode()


def _layers(module: nn.Module) -> list:
    """Flattens `module` (Sequentials of Linear and activations) into the page's layer list."""
    if isinstance(module, nn.Sequential):
        return [layer for child in module for layer in _layers(child)]
    if isinstance(module, nn.Linear):
        return [{"op": "linear", "in": module.in_features, "out": module.out_features,
                 "weight": _floats(module.weight), "bias": _floats(module.bias)}]  # fmt: skip
    kind = _ACTIVATIONS.get(type(module))
    if kind is None:
        raise ConfigError(f"vaelab explore cannot run a {type(module).__name__} layer in the browser")
    layer = {"op": kind}
    if isinstance(module, nn.Softplus):
        layer.update(beta=module.beta, threshold=module.threshold)
    elif isinstance(module, nn.ELU):
        layer.update(alpha=module.alpha)
    elif isinstance(module, nn.LeakyReLU):
        layer.update(slope=module.negative_slope)
    return [layer]


def export_decoder(decoder: nn.Module) -> list:
    """Returns the decoder as the page's layers: its input (z, then y one-hot) to logits (H*W)."""
    if isinstance(decoder, BernoulliDecoder):
        return _layers(decoder.body) + _layers(decoder.logits)
    if isinstance(decoder, ConvDecoder):
        layers = _layers(decoder.body) + [{"op": "reshape", "shape": list(decoder.start)}]
        for module in decoder.deconvs:
            if isinstance(module, nn.ConvTranspose2d):
                if module.groups != 1 or module.dilation != (1, 1) or module.output_padding != (0, 0):
                    raise ConfigError("vaelab explore runs plain transposed convolutions only")
                shape = {"kernel": list(module.kernel_size), "stride": list(module.stride)}
                shape["padding"] = list(module.padding)
                weights = {"weight": _floats(module.weight), "bias": _floats(module.bias)}
                channels = {"in": module.in_channels, "out": module.out_channels}
                layers.append({"op": "conv_transpose", **channels, **shape, **weights})
            else:
                layers += _layers(module)
        return layers + [{"op": "crop", "shape": list(decoder.image_shape)}]
    raise ConfigError(f"vaelab explore cannot run a {type(decoder).__name__} decoder in the browser")


def check_model(model, name: str) -> None:
    if not isinstance(model, VAE):
        raise ConfigError(
            f"vaelab explore needs a model with one Gaussian latent and a decoder (vae, beta-vae, cvae, m2, "
            f"vampprior); {name} has not"
        )


def _map_coordinates(means: np.ndarray) -> tuple[np.ndarray, str]:
    """2-D map positions of the posterior means: the latent itself if 2-D, else its first two PCs."""
    if means.shape[1] == 1:
        return np.stack([means[:, 0], np.zeros(len(means))], 1), "z₁ (the latent has one dimension)"
    if means.shape[1] == 2:
        return means, "the latent itself (z₁, z₂)"
    centred = means - means.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    share = (singular[:2] ** 2).sum() / max((singular**2).sum(), 1e-12)
    return centred @ vt[
        :2
    ].T, f"first two principal components of the posterior means ({100 * share:.0f}% of their variance)"


@torch.no_grad()
def explorer_data(run, points: int = 1000) -> dict:
    """Everything the page needs, as plain data: the decoder, the map, the images, the sliders."""
    model, config = run.model, run.config
    check_model(model, config.model)
    images = data.evaluation_split(config.dataset, "test", config.binarize, "cpu", config.data_dir)
    if points < 2:
        raise ConfigError(f"--points must be at least 2, got {points}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))[:points]
    model = model.cpu()
    with evaluating(model):
        batch = images.batch(pick)
        conditional = isinstance(model, CVAE)
        if conditional and batch.y is None:
            raise ConfigError(
                f"{config.dataset} has no labels, which the conditional model {config.model} needs"
            )
        means, _ = model.encode(batch)
    means_np = means.numpy().astype(np.float64)
    coords, map_kind = _map_coordinates(means_np)
    spread = means_np.var(0)
    order = [int(i) for i in np.argsort(-spread, kind="stable")[: min(MAX_SLIDERS, means.shape[1])]]
    height, width = images.image_shape
    pixels = (batch.x.reshape(len(pick), height * width) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = None if batch.y is None else [int(v) for v in batch.y]
    return {
        "title": Path(run.dir).name,
        "model": config.model,
        "dataset": config.dataset,
        "epoch": run.epoch,
        "z_dim": int(means.shape[1]),
        "num_classes": int(model.num_classes) if conditional else 0,
        "image": [height, width],
        "layers": export_decoder(model.decoder),
        "means": _floats(means),
        "map": _floats(torch.from_numpy(coords)),
        "map_kind": map_kind,
        "labels": labels,
        "images": base64.b64encode(pixels.tobytes()).decode(),
        "sliders": order,
        "spread": [float(spread[i]) for i in order],
    }


def write_explorer(run, points: int = 1000, out=None) -> Path:
    """Writes the explorer page (default RUN/explore.html); returns its path."""
    page = render(explorer_data(run, points))
    path = Path(out) if out is not None else Path(run.dir) / PAGE
    write_bytes(path, page.encode())
    return path


def render(payload: dict) -> str:
    """The self-contained page for `payload` (:func:`explorer_data`)."""
    # </script> cannot appear inside the JSON (base64 and numbers), but escape "<" anyway.
    blob = json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c")
    title = html.escape(f"vaelab explorer: {payload['title']}")
    template = resources.files("vaelab").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.replace("__TITLE__", title).replace("__STRIP__", str(STRIP)).replace("__DATA__", blob)
