import pyro
import pytest
import torch


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
