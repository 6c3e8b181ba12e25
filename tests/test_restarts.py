"""`vaelab train --restarts K --restart-epochs E`: K starts of a seed, the best by its training objective
trained on; the run is exactly that start trained alone, resumes start by start, and refuses bad requests."""

import json
import shutil

import pytest
import torch

from vaelab import checkpoint
from vaelab.cli import main
from vaelab.config import resolve, run_seed
from vaelab.errors import VaelabError
from vaelab.restarts import objective
from vaelab.runs import describe, find
from vaelab.stopping import Diverged

TINY = "--model vae --dataset digits --z-dim 3 --hidden 16 --device cpu --no-progress --no-plots".split()


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_run(a, b):
    """Bit for bit: weights, Adam's moments, the random state and every metric but the seconds."""
    ca, cb = checkpoint.load(a / "checkpoint.pt"), checkpoint.load(b / "checkpoint.pt")
    assert ca["epoch"] == cb["epoch"]
    assert ca["model"].keys() == cb["model"].keys()
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    moments = [c["optimizer"]["state"] for c in (ca, cb)]
    assert moments[0].keys() == moments[1].keys()
    for k in moments[0]:
        assert all(torch.equal(moments[0][k][m], moments[1][k][m]) for m in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    seconds = ("train_seconds",)
    strip = [[{k: v for k, v in m.items() if k not in seconds} for m in _metrics(r)] for r in (a, b)]
    assert strip[0] == strip[1]


def test_start_zero_is_the_seed_and_the_others_draw_from_seeds_of_their_own():
    assert run_seed(7, 0) == 7
    seeds = {run_seed(7, i) for i in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2**32 for s in seeds)
    assert resolve(overrides={"seed": 2**32 - 1, "start": 99}).run_seed < 2**32


def test_the_run_is_the_best_start_trained_on_alone(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--seed", "3", "--restarts", "3", "--restart-epochs", "1", "--epochs", "2"]
    assert main(["train", *args, "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((run / "starts.json").read_text())
    reached = [objective(_metrics(run / "starts" / f"start-{i}")[0]) for i in range(3)]
    assert len(set(reached)) == 3  # three different starts
    assert [r["objective"] for r in record["starts"]] == reached
    chosen = max(range(3), key=reached.__getitem__)
    assert record["chosen"] == chosen and f"start {chosen} goes on" in printed
    config = json.loads((run / "config.json").read_text())
    assert (config["seed"], config["start"], config["restarts"], config["epochs"]) == (3, chosen, 3, 2)
    # Its training time counts every start's, the ones passed over too.
    seconds = sum(m["train_seconds"] for i in range(3) for m in _metrics(run / "starts" / f"start-{i}"))
    seconds += _metrics(run)[1]["train_seconds"]
    assert describe(run)["train_seconds"] == pytest.approx(seconds)
    # `vaelab runs` lists the run once, its starts inside it, unless the starts are asked for.
    assert find([tmp_path]) == [run] and find([run]) == [run]
    assert find([run / "starts"]) == [run / "starts" / f"start-{i}" for i in range(3)]
    assert find([run / "starts" / "start-1"]) == [run / "starts" / "start-1"]
    assert main(["report", str(run)]) == 0
    report = (run / "report.html").read_text()
    assert "<h2>Starts</h2>" in report and report.count("goes on") == 1
    # Start 0 is the seed's own run; the run is its chosen start trained for all its epochs alone.
    plain = tmp_path / "plain"
    assert main(["train", *TINY, "--seed", "3", "--epochs", "1", "--out", str(plain)]) == 0
    _same_run(run / "starts" / "start-0", plain)
    alone = tmp_path / "alone"
    assert (
        main(["train", *TINY, "--seed", "3", "--start", str(chosen), "--epochs", "2", "--out", str(alone)])
        == 0
    )
    _same_run(run, alone)
    other = 1 if chosen == 2 else 2  # another start named on --resume is another run: refused
    assert main(["train", *args, "--start", str(other), "--resume", "--out", str(run)]) == 1
    assert f"start ({chosen} -> {other})" in capsys.readouterr().err
    # More epochs later: --resume continues the chosen start, and the command given again agrees.
    assert main(["train", *args[:-1], "3", "--resume", "--out", str(run)]) == 0
    assert main(["train", *TINY, "--seed", "3", "--start", str(chosen), "--epochs", "3", "--resume",
                 "--out", str(alone)]) == 0  # fmt: skip
    _same_run(run, alone)


def _stopped_after_start_0(whole, run):
    """Makes `run` what `whole`, a finished --restarts run, was when stopped after its first start."""
    (run / "starts").mkdir(parents=True)
    shutil.copytree(whole / "starts" / "start-0", run / "starts" / "start-0")
    config = json.loads((whole / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "start": 0}))


def test_starts_interrupted_resume_where_they_stopped(tmp_path, capsys):
    args = [*TINY, "--restarts", "2", "--restart-epochs", "1", "--epochs", "2"]
    whole = tmp_path / "whole"
    assert main(["train", *args, "--out", str(whole)]) == 0
    run = tmp_path / "run"
    _stopped_after_start_0(whole, run)
    assert describe(run)["status"] == "interrupted" and "start" not in describe(run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    capsys.readouterr()
    assert main(["train", *args, "--out", str(run)]) == 1  # without --resume: refused, nothing touched
    err = capsys.readouterr().err
    assert "already holds the starts of a run" in err and "--resume" in err and err.count("\n") == 1
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    # No more --epochs than the starts' would compare starts at other epochs: refused, nothing touched.
    assert main(["train", "--resume", "--out", str(run), "--epochs", "1", "--no-progress"]) == 1
    assert "--epochs 1: the run's starts are compared after --restart-epochs 1" in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "start 1 (of 0-1" in printed and "start 0 (of" not in printed  # start 0 is not trained again
    _same_run(run, whole)


def test_a_start_that_diverges_is_passed_over(tmp_path, capsys, monkeypatch):
    import vaelab.train as train_module

    train = train_module.train

    def diverging(config, run_dir, *args, **kwargs):
        if config.restarts == 1 and config.start in failing:  # a start, not the run around it
            raise Diverged(1, 3, float("nan"), checkpoint_kept=False)
        return train(config, run_dir, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", diverging)
    failing = {0}
    run = tmp_path / "run"
    args = [*TINY, "--restarts", "2", "--restart-epochs", "1", "--epochs", "2"]
    assert main(["train", *args, "--out", str(run)]) == 0
    record = json.loads((run / "starts.json").read_text())
    assert record["chosen"] == 1 and record["starts"][0]["objective"] is None
    assert "the loss became nan" in record["starts"][0]["problem"]
    failing = {0, 1}
    capsys.readouterr()
    assert main(["train", *args, "--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "all 2 starts diverged; none to go on from" in err and err.count("\n") == 1
    assert not (tmp_path / "none" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--restarts", "2", "--start", "1"], "--start 1: --restarts 2 chooses the start; give one"),
        (["--restarts", "0"], "restarts must be at least 1"),
        (["--restart-epochs", "0"], "restart_epochs must be at least 1"),
    ],
)
def test_bad_restart_requests_get_one_line_and_write_nothing(tmp_path, capsys, flags, said):
    out = tmp_path / "run"
    assert main(["train", *TINY, *flags, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_sweep_of_restarted_seeds_resumes_and_is_not_stacked(tmp_path, capsys):
    out = tmp_path / "sweep"
    tiny = [a for a in TINY if a != "--no-plots"]  # a sweep draws no pictures
    args = [*tiny, "--restarts", "2", "--restart-epochs", "1", "--seeds", "0,1", "--out", str(out)]
    assert main(["sweep", *args, "--epochs", "2"]) == 0
    # Seed 1 as it stood when stopped in its starts; seed 0 finished. The sweep continues both.
    stopped = tmp_path / "seed-1-stopped"
    _stopped_after_start_0(out / "seed-1", stopped)
    shutil.rmtree(out / "seed-1")
    shutil.move(stopped, out / "seed-1")
    assert main(["sweep", "--resume", "--out", str(out), "--epochs", "3", "--no-progress"]) == 0
    summary = (out / "summary.md").read_text()
    for seed in (0, 1):
        run = out / f"seed-{seed}"
        assert len(_metrics(run)) == 3 and (run / "starts.json").exists()
        chosen = json.loads((run / "starts.json").read_text())["chosen"]
        assert f"| {seed} (start {chosen}) | finished | 3/3 |" in summary
    capsys.readouterr()
    assert main(["sweep", *args, "--epochs", "2", "--stack"]) == 1
    assert "--restarts trains each seed's starts one after another" in capsys.readouterr().err
    assert main(["sweep", *args, "--start", "1", "--out", str(tmp_path / "other")]) == 1
    assert "--start 1: --restarts 2 chooses the start" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_restarts_refuse_torchrun_before_writing(tmp_path, monkeypatch):
    from vaelab import distributed
    from vaelab.train import train

    monkeypatch.setattr(distributed, "setup", lambda device: distributed.World(0, 2, 0))
    config = resolve(overrides={"model": "vae", "dataset": "digits", "device": "cpu", "restarts": 2})
    with pytest.raises(VaelabError, match="--restarts trains its starts in one process"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text", ["not json", '{"starts": [{}], "chosen": 0}', '{"starts": 5, "chosen": 0}', '{"starts": []}']
)
def test_a_broken_starts_record_is_named_in_one_line(tmp_path, capsys, text):
    run = tmp_path / "run"
    args = [*TINY, "--restarts", "2", "--restart-epochs", "1", "--epochs", "2"]
    assert main(["train", *args, "--out", str(run)]) == 0
    (run / "starts.json").write_text(text)
    row = describe(run)
    assert row["status"] == "broken" and "starts.json" in row["problem"] and "\n" not in row["problem"]
    capsys.readouterr()
    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert "starts.json" in err and err.count("\n") == 1, err


def test_a_run_no_longer_than_its_starts_is_the_seeds_own_start(tmp_path, capsys):
    """`--preset air --epochs 2` (the preset's restarts compare at epoch 3): nothing to choose, so the
    seed's own start trains alone. Resumed past the starts' epochs, it is the run those epochs make in
    one command: its own run becomes start 0, and the starts are compared and the best trained on."""
    run, plain = tmp_path / "run", tmp_path / "plain"
    args = [*TINY, "--seed", "2", "--restarts", "2", "--restart-epochs", "2", "--epochs", "1"]
    assert main(["train", *args, "--out", str(run)]) == 0
    assert "nothing to choose before the end: the seed's own start trains alone" in capsys.readouterr().out
    assert not (run / "starts").exists() and not (run / "starts.json").exists()
    assert main(["train", *TINY, "--seed", "2", "--epochs", "1", "--out", str(plain)]) == 0
    _same_run(run, plain)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["train", *args[:-1], "3", "--out", str(run)]) == 1  # without --resume: nothing moves
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    # Stopped inside the move, after the metrics went and before the checkpoint did: moved again.
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    (stopped / "starts" / "start-0").mkdir(parents=True)
    (stopped / "metrics.jsonl").rename(stopped / "starts" / "start-0" / "metrics.jsonl")
    capsys.readouterr()
    assert main(["train", *args[:-1], "3", "--resume", "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert main(["train", *args[:-1], "3", "--resume", "--out", str(stopped)]) == 0
    _same_run(stopped, run)
    assert "trained alone so far, is start 0" in printed and "start 0 (of" in printed  # it resumes
    whole = tmp_path / "whole"
    assert main(["train", *args[:-1], "3", "--out", str(whole)]) == 0
    records = [json.loads((r / "starts.json").read_text()) for r in (run, whole)]
    for row in (row for record in records for row in record["starts"]):
        row["metrics"].pop("train_seconds")
    assert records[0] == records[1]
    for i in range(2):
        _same_run(run / "starts" / f"start-{i}", whole / "starts" / f"start-{i}")
    _same_run(run, whole)
    assert json.loads((whole / "starts.json").read_text())["chosen"] == 1  # seed 2 goes on with start 1


def test_a_lone_run_already_past_its_starts_epochs_goes_on_alone(tmp_path):
    """A run an older vaelab resumed alone into the epoch after --restart-epochs (stopped
    inside it) is no longer start 0 as the starts would have it: it is not moved."""
    from vaelab.restarts import lone_start_to_compare

    run = tmp_path / "run"
    args = [*TINY, "--restarts", "2", "--restart-epochs", "1", "--epochs", "1"]
    assert main(["train", *args, "--out", str(run)]) == 0
    config = resolve(overrides=dict(model="vae", dataset="digits", z_dim=3, hidden=(16,), restarts=2,
                                    restart_epochs=1, epochs=3, device="cpu"))  # fmt: skip
    assert lone_start_to_compare(config, run)
    ckpt = checkpoint.load(run / "checkpoint.pt")
    ckpt["position"] = {
        "epoch": 2,
        "step": 5,
        "loss_total": 0.0,
        "neg_elbo_total": 0.0,
        "seen": 0,
        "seconds": 0,
    }
    torch.save(ckpt, run / "checkpoint.pt")
    assert not lone_start_to_compare(config, run)
