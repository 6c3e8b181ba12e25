import pyro
import pytest
import torch

from vaelab.cli import main


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Each test gets a clean Pyro param store and a fixed seed.

    The data cache is shared by the session (so MNIST is converted once) but
    kept out of the user's ~/.cache.
    """
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path_factory.getbasetemp() / "data-cache"))
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A one-epoch VAE run on 8×8 digits (latent 3, hidden 16), trained through the CLI."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    args = "--dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress --no-plots --epochs 1".split()
    assert main(["train", *args, "--out", str(run)]) == 0
    return run
