"""Every reader turns any content into a value or one line naming the file.

Property-based: random bytes, every truncation of a real file, and well-formed
files holding the wrong things, for checkpoints, config.json, metrics.jsonl,
eval.json, YAML config files and .npz files. Then each fault a user met.
"""

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vaelab import checkpoint
from vaelab.cli import main
from vaelab.config import load_yaml, read_run_config
from vaelab.data.npzfile import read_npz
from vaelab.errors import VaelabError
from vaelab.fileio import read_json, read_jsonl, write_json
from vaelab.records import read_evaluation, read_metrics

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"
CHECKPOINT = (FIXTURE / "checkpoint.pt").read_bytes()
UNSAFE_ADVICE = ("weights_only", "allow_pickle", "Traceback")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line(error: Exception, path) -> None:
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    assert not any(word in text for word in UNSAFE_ADVICE), text


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


NPZ = _npz_bytes(train_images=np.zeros((3, 4, 4), np.uint8), test_images=np.ones((2, 4, 4), np.uint8))


def _reads(reader, path, data: bytes):
    path.write_bytes(data)
    try:
        return reader(path)
    except VaelabError as e:
        _one_line(e, path)
        return None


@FUZZ
@given(data=st.binary(max_size=400))
@example(data=b"")
@example(data=CHECKPOINT[:100])
def test_any_bytes_are_a_checkpoint_or_one_line(tmp_path_factory, data):
    assert _reads(checkpoint.load, tmp_path_factory.mktemp("c") / "checkpoint.pt", data) is None


@FUZZ
@given(cut=st.integers(0, len(CHECKPOINT) - 1))
def test_every_truncated_checkpoint_is_one_line(tmp_path_factory, cut):
    assert _reads(checkpoint.load, tmp_path_factory.mktemp("c") / "checkpoint.pt", CHECKPOINT[:cut]) is None


def _saved(tmp_path, **changes) -> Path:
    ckpt = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    for key, value in changes.items():
        if value is ...:
            del ckpt[key]
        else:
            ckpt[key] = value
    path = tmp_path / "checkpoint.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(format_version="1"), "format_version must be an integer, got '1'"),
        (dict(epoch=...), "not a whole vaelab checkpoint (no epoch)"),
        (dict(epoch=-1), "its epoch is not what a vaelab checkpoint holds"),
        (dict(rng={"python": 3}), "its rng is not what"),
        (dict(rng=...), "(no rng)"),
        (dict(position={"epoch": 1}), "its position is not what"),
        (dict(model={"w": "not a tensor"}), "its model is not what"),
        (dict(model={"w": torch.tensor([float("nan")])}), "weight w is not finite (the run diverged)"),
        (dict(optimizer=[1, 2]), "its optimizer is not what"),
    ],
)
def test_a_checkpoint_with_a_wrong_field_is_named(tmp_path, changes, message):
    path = _saved(tmp_path, **changes)
    with pytest.raises(VaelabError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        checkpoint.load(path)
    _one_line(raised.value, path)


def test_another_model_s_checkpoint_in_a_run_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    _saved(run, model_name="air")
    for command in (["sample", str(run)], ["train", "--resume", "--out", str(run), "--epochs", "3"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "holds a model 'air'" in err and err.count("\n") == 1


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.from_type(int).map(lambda v: json.dumps(v).encode())))
@example(data=b"3")
@example(data=b'{"model": "vae"}')
@example(data=b"\xff\xfe not text")
@example(data=b"[" * 100000)
def test_any_config_json_is_a_config_or_one_line(tmp_path_factory, data):
    run = tmp_path_factory.mktemp("r")
    (run / "config.json").write_bytes(data)
    try:
        read_run_config(run)
    except VaelabError as e:
        _one_line(e, run / "config.json")


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b'{"epoch": 1}\n{"epoch": 2, "train_el')
@example(data=b'{"epoch": 1}\n[1, 2]\n')
@example(data=b'{"epoch": "one", "train_elbo": "x", "test_elbo": null, "train_seconds": 1}\n')
@example(data=b'{"epoch": 1, "train_elbo": null, "test_elbo": null, "train_seconds": null}\n')
def test_any_metrics_file_is_records_or_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("m") / "metrics.jsonl"
    result = _reads(read_jsonl, path, data)
    assert result is None or all(isinstance(r, dict) for r in result)
    runs = _reads(read_metrics, path, data)  # a run's records: typed as well
    assert runs is None or all(isinstance(r["epoch"], int) and r["epoch"] >= 1 for r in runs)


def test_a_metrics_line_cut_short_by_a_kill_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "train_el')
    assert read_jsonl(path) == [{"epoch": 1}]


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_eval_json_is_a_mapping_or_one_line(tmp_path_factory, data):
    result = _reads(read_json, tmp_path_factory.mktemp("e") / "eval.json", data)
    assert result is None or isinstance(result, dict)


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=CHECKPOINT[:300])
@example(data=b"a: &a [1, 1]\nb: &b [*a, *a]\nc: &c [*b, *b]\nz_dim: *c\n")
@example(data=b"z_dim: " + b"[" * 50000)
def test_any_config_file_is_settings_or_one_line(tmp_path_factory, data):
    result = _reads(load_yaml, tmp_path_factory.mktemp("y") / "c.yaml", data)
    assert result is None or isinstance(result, dict)


def test_a_config_file_that_never_ends_is_refused(capsys):
    assert main(["train", "--config", "/dev/zero"]) == 1
    assert "/dev/zero: larger than 1024 KiB; not a config file" in capsys.readouterr().err


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=NPZ[:200])
def test_any_bytes_are_an_npz_or_one_line(tmp_path_factory, data):
    _reads(read_npz, tmp_path_factory.mktemp("n") / "x.npz", data)  # an npz of arrays, or one line


@FUZZ
@given(cut=st.integers(0, len(NPZ) - 1))
def test_every_truncated_npz_is_one_line(tmp_path_factory, cut):
    assert _reads(read_npz, tmp_path_factory.mktemp("n") / "x.npz", NPZ[:cut]) is None


def test_an_npz_header_claiming_93_gib_is_refused_before_allocating(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (100000, 125000)}
    )
    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train_images.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(
        VaelabError, match=r"claims 100,000,000,000 bytes .* more than the file or the memory holds"
    ):
        read_npz(path)


def test_an_npz_of_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, train_images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(VaelabError, match="holds Python objects") as raised:
        read_npz(path)
    _one_line(raised.value, path)


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    levels = "".join(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n" for i in range(1, 40))
    path = tmp_path / "bomb.yaml"
    path.write_text("l0: &l0 [1]\n" + levels + "z_dim: *l39\n")  # 4^39 leaves if expanded
    with pytest.raises(
        VaelabError, match=r"YAML aliases \(\*name\) are not taken in a config file, at line 2"
    ):
        load_yaml(path)


_LINE = {"epoch": 1, "train_elbo": -40.0, "test_elbo": -39.0, "train_seconds": 0.1}


@pytest.mark.parametrize(
    "record, message",
    [
        ({**_LINE, "train_elbo": None}, "line 1: train_elbo must be a number, got None"),
        ({**_LINE, "epoch": "one"}, "line 1: epoch must be a whole number from 1, got 'one'"),
        ({**_LINE, "epoch": None}, "line 1: epoch must be a whole number from 1, got None"),
        ({"epoch": 1}, "line 1 lacks train_elbo, test_elbo, train_seconds"),
        ({**_LINE, "test_elbo": "x"}, "line 1: test_elbo must be a number, got 'x'"),
        ({**_LINE, "count_accuracy": True}, "line 1: count_accuracy must be a number, got True"),
    ],
    ids=["null", "text-epoch", "null-epoch", "bare", "text-elbo", "bool-score"],
)
def test_a_metrics_line_holding_the_wrong_types_is_named_and_the_run_listed_as_broken(
    tmp_path, capsys, tiny_run, record, message
):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run, runs / "bad")
    shutil.copytree(tiny_run, runs / "good")
    metrics = runs / "bad" / "metrics.jsonl"
    metrics.write_text(json.dumps(record) + "\n")
    before = {p.name: p.read_bytes() for p in (runs / "bad").iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["runs", str(runs)]) == 0  # the other run is still listed
    rows = {line.split()[0].rsplit("/", 1)[-1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["good"].endswith("finished") and f"broken: {metrics}: {message}" in rows["bad"]
    for command in (
        ["report", str(runs / "bad")],
        ["train", "--resume", "--out", str(runs / "bad"), "--epochs", "2", "--no-plots"],
        ["compare", str(runs / "bad"), str(runs / "good"), "--out", str(tmp_path / "c")],
    ):
        code = main(command)
        err = capsys.readouterr().err.strip()
        if command[0] == "compare":  # a broken run is a row of the comparison, named
            assert code == 0 and "Traceback" not in err
        else:
            assert code == 1 and err == f"vaelab: error: {metrics}: {message}", err
    assert before == {p.name: p.read_bytes() for p in (runs / "bad").iterdir() if p.is_file()}


def test_an_eval_json_holding_the_wrong_types_is_named(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for text, message in (
        ('{"test_elbo": "x"}', "test_elbo must be a number, got 'x'"),
        ('{"test_elbo": -40.0, "test_log_likelihood": [1]}', "test_log_likelihood must be a number, got [1]"),
        ('{"iw_samples": "k"}', "iw_samples must be a whole number from 1, got 'k'"),
        ('{"split": 3}', "split must be text, got 3"),
    ):
        (run / "eval.json").write_text(text)
        with pytest.raises(VaelabError) as raised:
            read_evaluation(run / "eval.json")
        assert str(raised.value) == f"{run / 'eval.json'}: {message}"
        capsys.readouterr()
        assert main(["runs", str(run)]) == 0
        assert f"broken: {run / 'eval.json'}: {message}" in capsys.readouterr().out
    assert read_evaluation(tmp_path / "none.json", default={}) == {}


def test_a_read_only_folder_is_named_by_the_file_meant_not_a_temporary_one(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".eval.json.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OSError) as raised:
        write_json(tmp_path / "eval.json", {})
    assert raised.value.filename == str(tmp_path / "eval.json") and ".tmp" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []
