"""vaelab: variational autoencoders written twice, in Pyro and in plain PyTorch.

``vaelab.load_run`` and ``vaelab.Run`` are imported on first use, so that
``import vaelab`` (and the ``vaelab`` command's start) does not wait for
torch: a Ctrl-C in the first second then gets the command's exit code 130, not
a traceback from inside an import.
"""

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "load_run"]


def __getattr__(name):
    if name in ("Run", "load_run"):
        from vaelab import run

        return getattr(run, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
