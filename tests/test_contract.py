"""The model contract and the layers around it: every model on it, settings declared once,
the run directory as the only hand-off, the loop's step callable on its own."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab.config import COMMON, model_fields, resolve
from vaelab.models import MODELS
from vaelab.models.base import LatentModel
from vaelab.settings import field_type
from vaelab.train import build_state, train, train_step

SOURCE = Path(vaelab.__file__).parent


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_is_on_the_contract_with_declared_settings(name):
    model = MODELS[name]
    assert issubclass(model, LatentModel) and dataclasses.is_dataclass(model.Settings)
    for f in dataclasses.fields(model.Settings):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help"
        assert f.name not in COMMON, f"{name}.{f.name} shadows a common setting"
    assert list(model.picture_captions())[:1] == ["elbo_curves"]


def test_a_setting_shared_by_models_has_one_type():
    for key, owners in model_fields().items():
        types = {field_type(MODELS[m].Settings, key) for m in owners}
        assert len(types) == 1, (key, types)


def _imports(path: Path) -> set:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("module", ["evaluate.py", "figures.py", "report.py", "run.py"])
def test_what_reads_a_run_directory_imports_nothing_from_training(module):
    assert "vaelab.train" not in _imports(SOURCE / module)


@pytest.mark.parametrize("module", ["train.py", "evaluate.py", "figures.py", "report.py", "objectives.py"])
def test_the_layers_ask_no_model_what_it_has(module):
    tree = ast.parse((SOURCE / module).read_text())
    asked = [
        node.args[0].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) in ("hasattr", "getattr")
        and isinstance(node.args[0], ast.Name)
    ]
    assert not [name for name in asked if "model" in name], asked


def test_models_do_not_import_the_layers_above_them():
    above = {
        "vaelab.train",
        "vaelab.evaluate",
        "vaelab.figures",
        "vaelab.report",
        "vaelab.cli",
        "vaelab.config",
    }
    for path in (SOURCE / "models").glob("*.py"):
        assert not _imports(path) & above, path.name


def _config(**overrides):
    values = dict(dataset="digits", z_dim=3, hidden=(16,), batch_size=64, epochs=1, device="cpu")
    return resolve(overrides={**values, **overrides})


def test_config_json_holds_the_common_settings_and_the_model_s_own_only(tmp_path):
    run = train(_config(), tmp_path / "run", progress=False, echo=lambda s: None)
    saved = json.loads((run / "config.json").read_text())
    assert set(saved) == (set(COMMON) - {"elbo"}) | {"z_dim", "hidden", "activation", "net", "config_version"}
    pyro_run = _config(backend="pyro").to_dict()
    assert pyro_run["elbo"] == "trace"
    air = resolve(preset="air", overrides={"backend": "pyro"}).to_dict()
    assert air["elbo"] == "tracegraph" and "activation" not in air and air["z_dim"] == 50


def test_the_step_moves_the_weights_and_the_elbo_does_not():
    state = build_state(_config())
    before = [p.detach().clone() for p in state.model.parameters()]
    batch = state.train_data.batch(torch.arange(64))
    with torch.no_grad():
        state.model.elbo(batch)
    assert all(torch.equal(a, p) for a, p in zip(before, state.model.parameters(), strict=True))
    out = train_step(state, batch)
    assert out.loss.requires_grad is False and out.neg_elbo is None and out.loss > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, state.model.parameters(), strict=True))
    assert batch.y is not None and batch.y.shape == (64,)  # digits carry their labels


def _bound_models():
    return [name for name in MODELS if MODELS[name].trains_on_bounds]


@pytest.mark.parametrize("name", _bound_models())
def test_a_model_that_trains_on_the_bounds_has_its_own_elbo_as_the_one_sample_bound(name):
    """IWAE at K = 1 is the model's ELBO at the draws, on the same noise: a model whose log_weights is
    inherited from a parent with another objective (M2 from the VAE once was) would train on the
    parent's bound under --elbo iwae."""
    from vaelab.objectives import make_objective

    torch.manual_seed(0)
    small = {"two-layer-vae": dict(z1_dim=4, z2_dim=3, hidden1=(16,), hidden2=(8,))}.get(name)
    config = resolve(
        overrides={
            **dict(dataset="digits", device="cpu", model=name, elbo="iwae"),
            **(small or dict(z_dim=3, hidden=(16,))),
        }
    )
    state = build_state(config)
    model, batch = state.model.double(), state.train_data.batch(torch.arange(16))
    batch = type(batch)(batch.x.double(), batch.y)
    torch.manual_seed(4)
    bound = make_objective("torch", "iwae", 1)(model, batch).loss
    torch.manual_seed(4)
    torch.testing.assert_close(bound, -model.elbo(batch, analytic_kl=False).sum(), rtol=1e-9, atol=1e-9)


def test_the_models_that_train_on_the_bounds_are_the_ones_the_readme_names():
    assert sorted(_bound_models()) == ["cvae", "two-layer-vae", "vae", "vampprior"]
    with pytest.raises(vaelab.errors.ConfigError, match="--elbo iwae: .* model m2 does not train on them"):
        _config(model="m2", elbo="iwae")


@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_that_changes_by_epoch_names_what_its_program_reads(name):
    """on_epoch's values reach a compiled Pyro graph only through program_state (objectives.PyroELBO)."""
    model = MODELS[name]
    if model.on_epoch is not LatentModel.on_epoch:
        assert model.program_state is not LatentModel.program_state, name
