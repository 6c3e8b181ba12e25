"""vaelab: variational autoencoders written twice, in Pyro and in plain PyTorch."""

from vaelab.run import Run, load_run

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "load_run"]
