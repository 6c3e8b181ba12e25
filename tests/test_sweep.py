"""`vaelab sweep` and the run rows it sums: each seed a normal run, equal to that seed trained alone."""

import json
import re

import pytest
import torch

from vaelab import checkpoint, stacked
from vaelab.cli import main
from vaelab.errors import ConfigError
from vaelab.runs import describe, find
from vaelab.sweep import parse_seeds, parse_success, summarize

TINY = "--model vae --dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress".split()


def weights(run):
    return checkpoint.load(run / "checkpoint.pt")["model"]


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_seed_lists_and_success_thresholds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    assert parse_seeds(" 5 ") == [5]
    for bad, said in (("a", "'a' is not a seed"), ("3-1", "runs backwards"), ("0-5000", "more than 1000")):
        with pytest.raises(ConfigError, match=said):
            parse_seeds(bad)
    assert parse_success("count_accuracy>=0.95") == ("count_accuracy", 0.95)
    assert parse_success(" test_elbo >= -100 ") == ("test_elbo", -100.0)
    for bad in ("count_accuracy>0.95", "0.95", "acc>=x", "acc>=nan"):
        with pytest.raises(ConfigError, match="SCORE>=VALUE"):
            parse_success(bad)


def test_a_sweep_is_its_seeds_trained_alone_and_summed(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [*TINY, "--epochs", "1", "--seeds", "0,3", "--iw-samples", "5", "--out", str(out)]
    assert main(["sweep", *args, "--success", "test_elbo>=-1e9"]) == 0
    printed = capsys.readouterr().out
    assert "| 3 | finished | 1/1 |" in printed and "summary.md" in printed

    alone = tmp_path / "alone"
    assert main(["train", *TINY, "--epochs", "1", "--seed", "3", "--no-plots", "--out", str(alone)]) == 0
    assert same_weights(out / "seed-3", alone)
    assert not same_weights(out / "seed-0", alone)

    summary = json.loads((out / "summary.json").read_text())
    finals = [json.loads((out / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()[-1]) for s in (0, 3)]
    evals = [json.loads((out / f"seed-{s}" / "eval.json").read_text()) for s in (0, 3)]
    elbo = summary["stats"]["test_elbo"]
    assert elbo["n"] == 2 and elbo["mean"] == pytest.approx(sum(f["test_elbo"] for f in finals) / 2)
    assert elbo["min"] == min(f["test_elbo"] for f in finals)
    assert elbo["sd"] == pytest.approx(abs(finals[0]["test_elbo"] - finals[1]["test_elbo"]) / 2**0.5)
    ll = summary["stats"]["test_log_likelihood"]
    assert ll["mean"] == pytest.approx(sum(e["test_log_likelihood"] for e in evals) / 2)
    assert [r["iw_samples"] for r in summary["seeds"]] == [5, 5]
    assert summary["success"] == {"score": "test_elbo", "at_least": -1e9, "seeds_passed": [0, 3], "rate": 1.0}
    assert (out / "summary.png").stat().st_size > 1000
    markdown = (out / "summary.md").read_text()
    assert (
        "vaelab sweep --model vae" in markdown and "Success (test ELBO ≥ -1000000000.0): 2 of 2" in markdown
    )


def test_a_sweep_resumes_extends_and_refuses_another(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "--epochs", "1", "--seeds", "0", "--out", str(out)]) == 0
    first = weights(out / "seed-0")
    # a second sweep into the same folder is refused; so is resuming with other settings
    assert main(["sweep", *TINY, "--epochs", "1", "--seeds", "1", "--out", str(out)]) == 1
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err
    assert main(["sweep", "--resume", "--out", str(out), "--z-dim", "4", "--no-progress"]) == 1
    assert "swept with other settings: z_dim (3 -> 4)" in capsys.readouterr().err
    assert main(["sweep", "--resume", "--out", str(tmp_path / "none"), "--no-progress"]) == 1
    assert "is not a sweep" in capsys.readouterr().err
    # more epochs for every seed, and one more seed; the finished epoch is continued, not redone
    assert (
        main(["sweep", "--resume", "--out", str(out), "--epochs", "2", "--seeds", "1", "--no-progress"]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["seed"], r["epochs_done"], r["status"]) for r in summary["seeds"]] == [
        (0, 2, "finished"),
        (1, 2, "finished"),
    ]
    assert len(summary["sweep"]["commands"]) == 2
    alone = tmp_path / "alone"
    assert main(["train", *TINY, "--epochs", "1", "--no-plots", "--out", str(alone)]) == 0
    assert all(torch.equal(first[k], weights(alone)[k]) for k in first)
    assert (
        main(["train", "--resume", "--out", str(alone), "--epochs", "2", "--no-progress", "--no-plots"]) == 0
    )
    assert same_weights(out / "seed-0", alone)


def test_a_broken_seed_is_listed_and_left_out_of_the_statistics(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "--epochs", "1", "--seeds", "0-2", "--out", str(out)]) == 0
    (out / "seed-1" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    sweep = json.loads((out / "sweep.json").read_text())
    summary = summarize(out, sweep)
    statuses = {r["seed"]: r["status"] for r in summary["seeds"]}
    assert statuses == {0: "finished", 1: "broken", 2: "finished"}
    assert summary["stats"]["test_elbo"]["n"] == 2
    assert "seed 1: " in (out / "summary.md").read_text() and "not a readable vaelab checkpoint" in str(
        summary["seeds"][1]["problem"]
    )


def test_parallel_seeds_equal_the_sequential_ones(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    common = [*TINY, "--epochs", "1", "--seeds", "0,1"]
    assert main(["sweep", *common, "--out", str(one)]) == 0
    assert main(["sweep", *common, "--out", str(two), "--parallel", "2"]) == 0
    for seed in (0, 1):
        assert same_weights(one / f"seed-{seed}", two / f"seed-{seed}")
        assert "epoch   1/1" in (two / "logs" / f"seed-{seed}.log").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "x"], "--seeds 'x'"),
        (["--seeds", "0", "--parallel", "0"], "--parallel must be in [1, 256]"),
        (["--seeds", "0", "--iw-samples", "0"], "--iw-samples must be at least 1"),
        (["--seeds", "0", "--success", "acc"], "SCORE>=VALUE"),
        (["--seeds", "0", "--seed", "1"], "--seed 1: a sweep trains each of --seeds"),
        ([], "--seeds is needed"),
    ],
)
def test_bad_sweeps_are_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "--epochs", "1", "--out", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(out.glob("seed-*"))


def test_run_rows_say_how_far_each_run_got(tmp_path, tiny_run):
    row = describe(tiny_run)
    assert (row["status"], row["model"], row["epochs_done"], row["epochs_planned"]) == (
        "finished",
        "vae",
        1,
        1,
    )
    assert row["test_elbo"] == json.loads((tiny_run / "metrics.jsonl").read_text())["test_elbo"]
    missing = tmp_path / "gone"
    missing.mkdir()
    (missing / "config.json").write_text("{")
    assert describe(missing)["status"] == "broken" and "not valid JSON" in describe(missing)["problem"]
    assert find([tmp_path, tiny_run]) == sorted([missing, tiny_run])


def test_vaelab_runs_lists_every_run_and_says_which_are_broken(tmp_path, capsys):
    base = tmp_path / "runs"
    assert main(["train", *TINY, "--epochs", "1", "--no-plots", "--out", str(base / "a")]) == 0
    assert (
        main(["train", *TINY, "--epochs", "1", "--lr", "0.01", "--no-plots", "--out", str(base / "b")]) == 0
    )
    assert main(["train", "--resume", "--out", str(base / "b"), "--epochs", "3", "--no-plots"]) == 0
    (base / "b" / "config.json").write_text(
        (base / "b" / "config.json").read_text().replace('"epochs": 3', '"epochs": 9')
    )
    (base / "c").mkdir()
    (base / "c" / "config.json").write_text("[]")
    capsys.readouterr()
    assert main(["runs", str(base), "--sort", "test_elbo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "model", "backend"]
    rows = {line.split()[0].rsplit("/", 1)[-1]: line for line in lines[1:]}
    assert rows["a"].endswith("finished") and " 1/1 " in rows["a"]
    assert rows["b"].endswith("interrupted") and " 3/9 " in rows["b"]
    assert "broken: " in rows["c"] and "not a vaelab config" in rows["c"]
    assert [line.split()[0].rsplit("/", 1)[-1] for line in lines[1:]][-1] == "c"  # no ELBO: last
    assert main(["runs", str(base), "--json", "--sort", "epochs_done", "--reverse"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["epochs_done"] for r in listed if "epochs_done" in r] == [3, 1]
    assert main(["runs", str(base), "--sort", "nope"]) == 1
    assert "no run has that field" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "absent")]) == 1


def test_compare_sets_existing_runs_side_by_side_without_training(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(a)]) == 0  # with its pictures
    assert main(["train", *TINY, "--epochs", "2", "--no-plots", "--out", str(b)]) == 0
    before = {p: p.stat().st_mtime_ns for p in [*a.rglob("*"), *b.rglob("*")]}
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in [*a.rglob("*"), *b.rglob("*")]} == before
    page = (out / "compare.html").read_text()
    # a's three pictures (reconstructions, samples, curves) beside b's three places for none
    assert page.count("<figcaption>a</figcaption>") == 3 and page.count("<figcaption>b</figcaption>") == 3
    assert page.count("(none: vaelab plot RUN)") == 3 and "Test ELBO per epoch" in page
    summary = json.loads((out / "compare.json").read_text())
    assert [r["epochs_done"] for r in summary["runs"]] == [1, 2]
    assert "| a | vae | torch |" in (out / "compare.md").read_text()
    assert main(["compare", str(a), "--preset", "pytorch-examples"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "zz"), "--out", str(tmp_path / "c2")]) == 1
    assert "no such run directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "c3")]) == 1  # a folder of runs
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"vaelab: error: {tmp_path} is not a run directory (no config.json); compare takes run directories"
    )
    assert not (tmp_path / "c3").exists()


def _close_runs(a, b, atol=1e-6):
    """Weights within `atol`, the same random state, metrics within 1e-4 nats: the same run to rounding."""
    ca, cb = checkpoint.load(a / "checkpoint.pt"), checkpoint.load(b / "checkpoint.pt")
    assert ca["epoch"] == cb["epoch"]
    for name, value in ca["model"].items():
        torch.testing.assert_close(value, cb["model"][name], rtol=0, atol=atol, msg=name)
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    ma, mb = (
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)
    )
    assert [sorted(m) for m in ma] == [sorted(m) for m in mb]
    for la, lb in zip(ma, mb, strict=True):
        for key in ("train_elbo", "test_elbo", "train_objective"):
            if key in la:
                assert la[key] == pytest.approx(lb[key], abs=1e-4), key


BASE = TINY[2:]  # TINY without its model


@pytest.mark.parametrize(
    "flags",
    [
        ["--model", "vae"],
        ["--model", "cvae", "--binarize", "dynamic"],
        ["--model", "beta-vae", "--beta", "2"],
    ],
)
def test_stacked_seeds_are_the_runs_they_would_be_alone(tmp_path, flags):
    out = tmp_path / "stacked"
    common = [*BASE, *flags, "--batch-size", "64"]
    assert main(["sweep", *common, "--epochs", "1", "--seeds", "0,3", "--stack", "--out", str(out)]) == 0
    assert main(["sweep", "--resume", "--out", str(out), "--epochs", "2", "--stack", "--no-progress"]) == 0
    for seed in (0, 3):
        alone = tmp_path / f"alone-{seed}"
        assert (
            main(["train", *common, "--epochs", "2", "--seed", str(seed), "--no-plots", "--out", str(alone)])
            == 0
        )
        _close_runs(out / f"seed-{seed}", alone)


def test_a_sweep_of_an_earlier_version_resumes_from_its_command_given_again(tmp_path):
    from vaelab.config import resolve
    from vaelab.sweep import SWEEP_FILE, plan

    out = tmp_path / "sweep"
    config = resolve("air", None, {"epochs": 2})
    plan(out, config, [0, 1], resume=False, preset="air")
    saved = json.loads((out / SWEEP_FILE).read_text())
    del saved["config"]["z_pres_init"]  # as a sweep.json written before z_pres_init existed
    (out / SWEEP_FILE).write_text(json.dumps(saved))
    sweep = plan(out, resolve("air", None, {"epochs": 3}), None, resume=True, preset="air")
    assert sweep["config"]["epochs"] == 3 and sweep["config"]["z_pres_init"] == config.settings.z_pres_init


def test_a_seed_that_diverges_in_a_stack_leaves_it_and_the_others_finish(tmp_path, capsys, monkeypatch):
    stacked_sizes = []  # the number of seeds in each stack built
    stack = stacked.stack_module_state
    monkeypatch.setattr(
        stacked, "stack_module_state", lambda models: stacked_sizes.append(len(models)) or stack(models)
    )
    out = tmp_path / "stacked"
    common = [*TINY, "--batch-size", "64"]
    assert main(["sweep", *common, "--epochs", "1", "--seeds", "0,3", "--stack", "--out", str(out)]) == 0
    # Seed 3's Adam moments made infinite: its next step sends its weights, then its loss, to NaN.
    path = out / "seed-3" / "checkpoint.pt"
    ckpt = checkpoint.load(path)
    for moments in ckpt["optimizer"]["state"].values():
        moments["exp_avg"].fill_(float("inf"))
    checkpoint.save(path, **{k: v for k, v in ckpt.items() if k != "format_version"})
    capsys.readouterr()
    stacked_sizes.clear()
    assert main(["sweep", "--resume", "--out", str(out), "--epochs", "3", "--stack", "--no-progress"]) == 1
    assert stacked_sizes == [2, 1]  # epoch 3 stacks seed 0 alone: seed 3's NaN slice is not carried on
    said = capsys.readouterr()
    err = said.err
    assert "seed 3: resuming" not in said.out  # not trained again alone after the stack
    assert re.search(
        r"1 of 2 seeds did not finish \(seed 3: epoch 2, step \d+: the loss became nan; "
        r"the last good checkpoint is kept",
        err,
    ), err
    kept = checkpoint.load(path)  # seed 3 as it was before the divergence: nothing of epoch 2 written
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())
    assert len((out / "seed-3" / "metrics.jsonl").read_text().splitlines()) == 1
    assert describe(out / "seed-0")["epochs_done"] == 3  # the other seed trained on, as it would alone
    alone = tmp_path / "alone-0"
    assert main(["train", *common, "--epochs", "3", "--seed", "0", "--no-plots", "--out", str(alone)]) == 0
    _close_runs(out / "seed-0", alone)


def test_what_cannot_be_stacked_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "sweep"
    for extra, said in (
        (["--backend", "pyro"], "the Pyro backend draws inside Pyro"),
        (["--model", "m2", "--labelled", "100"], "model m2 is not stacked"),
        (["--elbo", "iwae", "--particles", "2"], "only the default objective with one particle"),
        (["--binarize", "static"], "--binarize static draws each seed's images from its seed"),
        (["--parallel", "2"], "leave out --parallel"),
    ):
        args = [a for a in TINY if a not in ("--model", "vae")] if "--model" in extra else TINY
        assert (
            main(["sweep", *args, *extra, "--epochs", "1", "--seeds", "0,1", "--stack", "--out", str(out)])
            == 1
        )
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_a_success_score_no_seed_has_is_an_error_not_a_zero_rate(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [*TINY, "--epochs", "1", "--seeds", "0", "--out", str(out)]
    assert main(["sweep", *args, "--success", "tset_elbo>=-1e9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaelab: error: --success tset_elbo>=-1000000000.0: no seed has a score tset_elbo")
    assert "(they have: test_elbo, train_seconds)" in err and "\n" not in err
    assert "not measured: no seed has a score tset_elbo" in (out / "summary.md").read_text()
    assert describe(out / "seed-0")["status"] == "finished"  # the seed's run is kept
    assert main(["sweep", "--resume", "--out", str(out)]) == 1  # still the given score
    assert "no seed has a score tset_elbo" in capsys.readouterr().err
    saved = json.loads((out / "sweep.json").read_text())
    del saved["success_given"]  # a sweep.json from before the field: a --success of its own is given
    (out / "sweep.json").write_text(json.dumps(saved))
    assert main(["sweep", "--resume", "--out", str(out)]) == 1
    assert "no seed has a score tset_elbo" in capsys.readouterr().err
    assert main(["sweep", "--resume", "--success", "test_elbo>=-1e9", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["success"]["seeds_passed"] == [0]


def test_a_presets_own_success_score_that_does_not_apply_is_said_not_measured(tmp_path, capsys, monkeypatch):
    """The air preset's count accuracy on digits (no counts): the summary says so, the sweep succeeds."""
    from vaelab import sweep

    monkeypatch.setitem(sweep.PRESET_SUCCESS, "pytorch-examples", ("count_accuracy", 0.95))
    out = tmp_path / "sweep"
    args = [*TINY, "--epochs", "1", "--batch-size", "128", "--seeds", "0", "--out", str(out)]
    assert main(["sweep", "--preset", "pytorch-examples", *args]) == 0
    assert "not measured: no seed has a score count_accuracy" in (out / "summary.md").read_text()


def test_a_score_of_exactly_the_threshold_passes_and_nan_does_not():
    from vaelab.sweep import _at_least

    assert _at_least(0.0, 0.0) and _at_least(1.0, 0.5)
    assert not _at_least(None, 0.0) and not _at_least(float("nan"), 0.0) and not _at_least(-1.0, 0.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"config": {}, "seeds": "x"}', "seeds must be a list of whole numbers from 0, got 'x'"),
        ('{"config": [], "seeds": [0]}', "config must be a mapping of settings, got []"),
        ('{"config": {}, "seeds": [0, -1]}', "seeds must be a list of whole numbers from 0, got [0, -1]"),
        ('{"config": {', "not valid JSON"),
        (
            '{"config": {}, "seeds": [0], "success": "x"}',
            "success must be [score, threshold] or null, got 'x'",
        ),
    ],
)
def test_a_damaged_sweep_json_is_one_line(tmp_path, capsys, text, message):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(text)
    for stack in ([], ["--stack"]):  # --stack reads the sweep's settings before training
        assert main(["sweep", "--resume", *stack, "--out", str(out)]) == 1
        assert capsys.readouterr().err.strip() == f"vaelab: error: {out / 'sweep.json'}: {message}"


def test_a_bad_value_given_on_resume_is_refused_before_sweep_json_keeps_it(tmp_path, capsys):
    """--resume --epochs 0 once saved epochs 0, and every later --resume failed on the saved file."""
    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "--epochs", "1", "--seeds", "0", "--out", str(out)]) == 0
    saved = (out / "sweep.json").read_text()
    for stack in ([], ["--stack"]):
        capsys.readouterr()
        assert main(["sweep", "--resume", *stack, "--epochs", "0", "--out", str(out)]) == 1
        assert capsys.readouterr().err.strip() == "vaelab: error: epochs must be at least 1, got 0"
        assert (out / "sweep.json").read_text() == saved
    assert main(["sweep", "--resume", "--data-dir", str(tmp_path / "nosuch"), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().endswith("nosuch: no such folder")
    assert main(["sweep", "--resume", "--stack", "--beta", "2", "--out", str(out)]) == 1
    assert "was swept with other settings: beta (None -> 2.0)" in capsys.readouterr().err
    assert main(["sweep", "--resume", "--epochs", "2", "--out", str(out)]) == 0
    assert describe(out / "seed-0")["epochs_done"] == 2
