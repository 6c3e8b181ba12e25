"""The models, one file each on the contract of :mod:`vaelab.models.base`, and their registry.

A new model is its file and one line in ``_REGISTRY``: its name on the command
line, and where its class lives (imported when first asked for).
"""

import importlib
from collections.abc import Mapping

from vaelab.errors import choices_error
from vaelab.models.air import AIR
from vaelab.models.base import LatentModel, Loss, dataset_elbo
from vaelab.models.vae import VAE

_REGISTRY = {
    "vae": "vaelab.models.vae:VAE",
    "beta-vae": "vaelab.models.beta_vae:BetaVAE",
    "cvae": "vaelab.models.cvae:CVAE",
    "air": "vaelab.models.air:AIR",
    "two-layer-vae": "vaelab.models.two_layer:TwoLayerVAE",
    "vampprior": "vaelab.models.vampprior:VampPrior",
    "m2": "vaelab.models.m2:M2",
    "cvae-completion": "vaelab.models.completion:CompletionCVAE",
}


class _Models(Mapping):
    """Model name -> class, importing each model's module on first use."""

    def __init__(self, paths: dict):
        self._paths = paths

    def __getitem__(self, name: str) -> type[LatentModel]:
        module, _, attribute = self._paths[name].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


MODELS = _Models(_REGISTRY)


def build_model(name: str, **model_args) -> LatentModel:
    """Returns a new model of kind `name` built from `model_args`.

    >>> build_model("vae", x_dim=784, z_dim=20, hidden=[400], activation="relu")
    """
    if name not in MODELS:
        raise choices_error("model", name, sorted(MODELS))
    return MODELS[name](**model_args)


__all__ = ["AIR", "MODELS", "VAE", "LatentModel", "Loss", "build_model", "dataset_elbo"]
