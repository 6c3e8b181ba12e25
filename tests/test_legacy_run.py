"""A run directory written by vaelab 0.1 (before the model contract) still works.

tests/fixtures/run-0.1.0 was written by commit aa26150 with
``vaelab train --dataset digits --z-dim 2 --hidden 16 --batch-size 64 --epochs 2 --lr 3e-3 --device cpu``;
its config.json is the flat one of that version (every model's fields, and
``elbo: trace`` for a torch run). The expected numbers below were printed by
that same commit: ``vaelab evaluate RUN --iw-samples 50 --json`` on the run,
and ``vaelab train --resume --out RUN --epochs 3`` on a copy.
"""

import json
import shutil
from pathlib import Path

import pytest

import vaelab
from vaelab.cli import main
from vaelab.config import CONFIG_VERSION, read_run_config

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"
# Printed by the version that wrote the fixture (see the module docstring).
EVALUATED = {"test_elbo": -32.00870973389356, "test_log_likelihood": -31.3603515625}
THIRD_EPOCH = {"epoch": 3, "train_elbo": -31.086943901909724, "test_elbo": -30.032847514005603}


@pytest.fixture
def legacy_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def test_its_config_reads_as_the_vae_settings_alone():
    config = read_run_config(FIXTURE)
    saved = config.to_dict()
    assert (config.model, config.backend, config.z_dim, config.hidden) == ("vae", "torch", 2, (16,))
    assert "elbo" not in saved and "max_steps" not in saved and "z_pres_prior" not in saved


def test_evaluate_gives_the_numbers_of_the_version_that_wrote_it(legacy_run, capsys):
    assert main(["evaluate", str(legacy_run), "--iw-samples", "50", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key, value in EVALUATED.items():
        assert result[key] == pytest.approx(value, abs=1e-4), key


def test_plot_report_and_sample_work(legacy_run, capsys):
    assert main(["plot", str(legacy_run), "--tsne-points", "50"]) == 0
    html = (legacy_run / "report.html").read_text()
    assert "z_pres_prior" not in html and '<td class="key">z_dim</td>' in html
    assert main(["report", str(legacy_run)]) == 0
    assert main(["sample", str(legacy_run), "-n", "4"]) == 0
    assert (legacy_run / "samples-4-seed0.png").exists()


def test_resume_continues_as_that_version_did_and_rewrites_the_config(legacy_run):
    assert (
        main(["train", "--resume", "--out", str(legacy_run), "--epochs", "3", "--no-progress", "--no-plots"])
        == 0
    )
    last = vaelab.load_run(legacy_run).metrics[-1]
    for key, value in THIRD_EPOCH.items():
        assert last[key] == pytest.approx(value, abs=1e-6), key
    written = json.loads((legacy_run / "config.json").read_text())
    assert (
        written["config_version"] == CONFIG_VERSION and "elbo" not in written and "baseline_lr" not in written
    )
    assert written["particles"] == 1 and written["tensorboard"] is False and written["cuda_graph"] is False


def test_a_config_from_a_newer_version_is_refused_in_one_line(legacy_run, capsys):
    path = legacy_run / "config.json"
    newer = CONFIG_VERSION + 1
    path.write_text(json.dumps({**json.loads(path.read_text()), "config_version": newer}))
    assert main(["evaluate", str(legacy_run), "--iw-samples", "5"]) == 1
    err = capsys.readouterr().err
    assert f"config.json: written by a newer vaelab (config version {newer}" in err and err.count("\n") == 1


@pytest.mark.parametrize("version", [2, 5, 6, 7])
def test_an_older_config_version_reads_with_the_defaults_it_lacks(legacy_run, version):
    from vaelab.config import read_run_config

    path = legacy_run / "config.json"
    values = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("elbo", "z_pres_prior")}
    own = {"model", "backend", "dataset", "binarize", "epochs", "batch_size", "lr", "seed", "z_dim", "hidden"}
    path.write_text(json.dumps({**{k: v for k, v in values.items() if k in own}, "config_version": version}))
    config = read_run_config(legacy_run)
    assert config.particles == 1 and config.elbo is None and config.settings.net == "mlp"
    assert config.tensorboard is False and config.cuda_graph is False
    assert config.restarts == 1 and config.start == 0 and config.run_seed == config.seed


def test_a_config_version_that_is_not_a_number_is_refused(legacy_run, capsys):
    path = legacy_run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "config_version": "2"}))
    assert main(["sample", str(legacy_run)]) == 1
    assert "config_version must be an integer, got '2'" in capsys.readouterr().err
