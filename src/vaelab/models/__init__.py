"""The models, one file each, and how to build one from a run's arguments."""

from vaelab.errors import choices_error
from vaelab.models.air import AIR
from vaelab.models.vae import VAE

MODELS = {"vae": VAE, "air": AIR}


def build_model(name: str, **model_args):
    """Returns a new model of kind `name` built from `model_args`.

    >>> build_model("vae", x_dim=784, z_dim=20, hidden=[400], activation="relu")
    """
    if name not in MODELS:
        raise choices_error("model", name, sorted(MODELS))
    return MODELS[name](**model_args)


__all__ = ["AIR", "MODELS", "VAE", "build_model"]
