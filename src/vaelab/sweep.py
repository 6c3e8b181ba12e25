"""One set-up trained from several seeds, and what the seeds give as a distribution.

``vaelab sweep --preset air --seeds 0-4 --out runs/air-sweep`` trains
``runs/air-sweep/seed-S`` for each seed (each a normal run directory: resume,
evaluate, plot and report work on it), evaluates each when asked
(``--iw-samples K``), and writes:

- ``summary.json`` and ``summary.md``: per seed the final test ELBO, log p(x)
  when evaluated, the model's own scores (M2's classifier accuracy, AIR's count
  accuracy) and training time; then mean, standard deviation (n - 1), min and
  max over the finished seeds; and where a success threshold is named (the
  ``air`` preset's: count accuracy at least 0.95; or ``--success``), the
  success rate;
- ``summary.png``: each seed's curves, the test ELBO and each score per epoch.

``sweep.json`` holds the sweep's settings, so ``vaelab sweep --resume --out DIR``
continues it: finished seeds are kept, interrupted ones resumed, missing ones
trained. ``--parallel N`` trains N seeds at once, each in its own process
with the machine's cores shared out and its output in ``DIR/logs/seed-S.log``.
"""

import math
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from vaelab.config import Config, build, check_data_dir, from_json, from_mapping
from vaelab.errors import CheckpointError, ConfigError, VaelabError
from vaelab.fileio import read_json, write_bytes, write_json
from vaelab.records import is_count, is_number, read_evaluation, read_metrics
from vaelab.runs import describe
from vaelab.stopping import Interrupted
from vaelab.train import RESUMABLE

SWEEP_FILE = "sweep.json"
# A preset's own test of success, where its paper or issue names one: (score, at least).
PRESET_SUCCESS = {"air": ("count_accuracy", 0.95)}
MAX_SEEDS = 1000


def parse_seeds(text: str) -> list[int]:
    """Returns the seeds in "0,1,2", "0-4" or a mix ("0-2,7"), in order, each once."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"--seeds {text!r}: {part!r} is not a seed or a range like 0-4")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ConfigError(f"--seeds {text!r}: the range {part} runs backwards")
        if high - low >= MAX_SEEDS:
            raise ConfigError(f"--seeds {text!r}: more than {MAX_SEEDS} seeds")
        seeds.extend(s for s in range(low, high + 1) if s not in seeds)
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"--seeds {text!r}: more than {MAX_SEEDS} seeds")
    return seeds


def parse_success(text: str) -> tuple[str, float]:
    """Returns (score, threshold) from "count_accuracy>=0.95"."""
    match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*>=\s*([-+0-9.eE]+)\s*", str(text))
    try:
        threshold = float(match[2]) if match else math.nan
    except ValueError:
        threshold = math.nan
    if not match or not math.isfinite(threshold):
        raise ConfigError(f"--success {text!r}: give it as SCORE>=VALUE, e.g. count_accuracy>=0.95")
    return match[1], threshold


def seed_dir(out, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def _base_values(config: Config) -> dict:
    values = config.to_dict()
    values.pop("seed")
    return values


def check_saved(saved: dict, path) -> None:
    """Raises CheckpointError unless sweep.json at `path` holds its settings, seeds and success test."""
    if not isinstance(saved.get("config"), dict):
        raise CheckpointError(f"{path}: config must be a mapping of settings, got {saved.get('config')!r}")
    seeds = saved.get("seeds")
    if not isinstance(seeds, list) or not all(is_count(s, 0) for s in seeds):
        raise CheckpointError(f"{path}: seeds must be a list of whole numbers from 0, got {seeds!r}")
    success = saved.get("success")
    pair = isinstance(success, list) and len(success) == 2
    if success is not None and not (pair and isinstance(success[0], str) and is_number(success[1])):
        raise CheckpointError(f"{path}: success must be [score, threshold] or null, got {success!r}")


def resumed_config(saved: dict, config, out, path) -> Config:
    """Returns the Config of a sweep resumed from sweep.json's `saved` settings with what is given again.

    `config`: None, a Config (the starting command given again) or a dict of
    the settings given. A setting that would make it another sweep is refused
    by name; the resumable ones (more epochs, say) are taken and checked with
    the rest, each value named by where it came from (`path` or the command
    line), before anything is written. A sweep.json of an earlier version
    lacks the settings added since: they read as their defaults.
    """
    check_saved(saved, path)
    values = _base_values(from_json({**saved["config"], "seed": 0}, str(path)))
    if config is None:
        return from_json({**values, "seed": 0}, str(path))
    given = _base_values(config) if isinstance(config, Config) else dict(config)
    given.pop("seed", None)
    differing = sorted(k for k, v in given.items() if k not in RESUMABLE and v != values.get(k))
    if differing:
        listed = ", ".join(f"{k} ({values.get(k)!r} -> {given[k]!r})" for k in differing)
        raise ConfigError(f"--resume: {out} was swept with other settings: {listed}")
    taken = {k: given[k] for k in RESUMABLE if k in given}
    check_data_dir(taken.get("data_dir"))
    sources = {**dict.fromkeys(values, str(path)), **dict.fromkeys(taken, "command line"), "seed": str(path)}
    return build(from_mapping({**values, **taken, "seed": 0}, "command line"), sources)


def plan(
    out, config: Config | None, seeds, resume: bool, preset=None, iw_samples=None, success=None, command=None
):
    """Returns the sweep's settings, written to (or, with `resume`, read from and updated in) DIR/sweep.json.

    `config`: the new sweep's Config; when resuming, a Config (the command that
    started the sweep, given again) or a dict of the settings given explicitly.
    A new sweep refuses a folder that holds one. A resumed one refuses settings
    that would make it another sweep (what ``train --resume`` allows, like more
    epochs, is applied to every seed); seeds named anew are added to it.
    """
    out = Path(out)
    path = out / SWEEP_FILE
    saved = read_json(path, default=None)
    if not resume:
        if saved is not None or (out.is_dir() and any(out.glob("seed-*"))):
            raise ConfigError(
                f"{out} already holds a sweep; pass --resume to continue it or choose another --out"
            )
        if not seeds:
            raise ConfigError("--seeds is needed: the seeds to train, like 0,1,2 or 0-4")
        sweep = {"preset": preset, "config": _base_values(config), "seeds": list(seeds)}
        sweep["iw_samples"] = iw_samples
        sweep["success"] = list(success or PRESET_SUCCESS.get(preset) or []) or None
        sweep["success_given"] = success is not None  # not the preset's: a score no seed has is an error
        sweep["commands"] = [command] if command else []
    else:
        if saved is None:
            raise ConfigError(f"--resume: {path} is missing; {out} is not a sweep")
        sweep = dict(saved)
        sweep["config"] = _base_values(resumed_config(saved, config, out, path))
        if "success_given" not in saved:  # a sweep.json before the field: given unless the preset's own
            preset_own = list(PRESET_SUCCESS.get(saved.get("preset"), ())) or None
            sweep["success_given"] = saved.get("success") not in (None, preset_own)
        sweep["seeds"] = list(sweep["seeds"]) + [s for s in seeds or () if s not in sweep["seeds"]]
        if iw_samples is not None:
            sweep["iw_samples"] = iw_samples
        if success is not None:
            sweep["success"] = list(success)
            sweep["success_given"] = True
        sweep["commands"] = list(sweep.get("commands", [])) + ([command] if command else [])
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, sweep)
    return sweep


def needs_training(config: Config, run_dir: Path) -> bool:
    """Whether `run_dir` is not yet a finished run of `config`'s epochs (missing, partial or broken)."""
    row = describe(run_dir) if (run_dir / "config.json").exists() else None
    return row is None or row["status"] != "finished" or row["epochs_done"] < config.epochs


def _train_seed(values: dict, run_dir: str, iw_samples, progress: bool, echo=print) -> str:
    """Trains (or resumes, or leaves alone) one seed's run, then evaluates it if asked; returns its status."""
    from vaelab.evaluate import evaluate_run
    from vaelab.run import load_run
    from vaelab.train import resume_config, train

    config = from_json(values, "the sweep")
    run_dir = Path(run_dir)
    if needs_training(config, run_dir):
        resume = (run_dir / "checkpoint.pt").exists() or (run_dir / "starts").is_dir()  # --restarts
        if resume:
            config = resume_config(run_dir, config.to_dict())
        echo(f"seed {config.seed}: {'resuming' if resume else 'training'} {run_dir}")
        train(config, run_dir, resume=resume, progress=progress, echo=echo, resume_hint=False)  # the sweep's
    if iw_samples:
        done = read_evaluation(run_dir / "eval.json")
        stale = (
            done is None
            or done.get("iw_samples") != iw_samples
            or (run_dir / "eval.json").stat().st_mtime < (run_dir / "checkpoint.pt").stat().st_mtime
        )
        if stale:
            echo(f"seed {config.seed}: evaluating with K = {iw_samples}")
            evaluate_run(load_run(run_dir), iw_samples, progress=progress)
    return "finished"


def _worker(values: dict, run_dir: str, iw_samples, log_path: str, threads: int) -> str:
    """A --parallel process: one seed, its output in `log_path`; returns its status or error line."""
    import torch

    torch.set_num_threads(threads)
    with open(log_path, "a", buffering=1) as log:
        sys.stdout = sys.stderr = log
        try:
            return _train_seed(values, run_dir, iw_samples, progress=False)
        except Interrupted:
            return "interrupted"
        except VaelabError as e:
            print(f"vaelab: error: {e}")
            return f"error: {e}"
        except KeyboardInterrupt:
            return "interrupted"
        finally:  # the pool may give this process another seed
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def _train_stacked(jobs, out, progress, echo) -> dict:
    """Trains the unfinished seeds of `jobs` together (vaelab.stacked); refuses what cannot be stacked.

    Returns {seed: error line} for the seeds that diverged in the stack.
    """
    from vaelab.stacked import refusal, train_stacked

    configs = [from_json(values, "the sweep") for _, values, _ in jobs]
    why = refusal(configs[0])
    if why:
        raise ConfigError(f"--stack: {why}; leave out --stack to train the seeds one by one")
    todo = [(c, Path(d)) for c, (_, _, d) in zip(configs, jobs, strict=True) if needs_training(c, Path(d))]
    if todo:
        echo(f"training seeds {', '.join(str(c.seed) for c, _ in todo)} stacked in one process")
        try:
            failed = train_stacked([c for c, _ in todo], [d for _, d in todo], progress, echo)
        except Interrupted:
            echo(f"continue the sweep with: vaelab sweep --resume --out {out} --stack")
            raise
        return {seed: str(error) for seed, error in failed.items()}
    return {}


def run_sweep(sweep: dict, out, parallel=1, progress=True, echo=print, stack=False) -> dict:
    """Trains every seed of `sweep` into DIR/seed-S, then writes and returns the summary.

    One seed's failure (bad data, divergence) does not stop the others; the
    summary lists it as it is, and a VaelabError naming the seeds is raised at
    the end. `stack`: train the seeds together, their networks stacked
    (:mod:`vaelab.stacked`), then evaluate each.
    """
    out = Path(out)
    failures = {}
    jobs = [(seed, {**sweep["config"], "seed": seed}, str(seed_dir(out, seed))) for seed in sweep["seeds"]]
    for _, values, _ in jobs:
        from_json(values, f"{out / SWEEP_FILE}")  # every seed's settings checked before any trains
    if stack:  # then each seed is finished or diverged: below, the finished are evaluated if asked
        failures = _train_stacked(jobs, out, progress, echo)
    if parallel <= 1:
        for seed, values, run_dir in jobs:
            if seed in failures:
                continue
            try:
                _train_seed(values, run_dir, sweep["iw_samples"], progress, echo)
            except Interrupted:
                echo(f"continue the sweep with: vaelab sweep --resume --out {out}")
                raise
            except VaelabError as e:
                failures[seed] = str(e)
                echo(f"seed {seed}: error: {e}")
    else:
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // parallel)
        echo(f"training {len(jobs)} seeds, {parallel} at a time, {threads} thread(s) each; logs in {logs}")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
            futures = {
                seed: pool.submit(
                    _worker, values, run_dir, sweep["iw_samples"], str(logs / f"seed-{seed}.log"), threads
                )
                for seed, values, run_dir in jobs
            }
            for seed, future in futures.items():
                status = future.result()
                echo(f"seed {seed}: {status}")
                if status != "finished":
                    failures[seed] = status
    summary = summarize(out, sweep)
    if failures:
        listed = "; ".join(f"seed {s}: {why}" for s, why in failures.items())
        raise VaelabError(f"{len(failures)} of {len(jobs)} seeds did not finish ({listed}); see {out}")
    problem = summary.get("success", {}).get("problem")
    if problem and sweep.get("success_given"):  # a preset's own test may not apply (AIR on digits)
        score, threshold = sweep["success"]
        raise ConfigError(
            f"--success {score}>={threshold}: {problem}; name one with "
            f"vaelab sweep --resume --success SCORE>=VALUE --out {out}"
        )
    return summary


def _stats(values: list) -> dict:
    n = len(values)
    if not n:
        return {"n": 0}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def summarize(out, sweep: dict) -> dict:
    """Writes DIR/summary.json, summary.md and summary.png from the seeds' run directories; returns it."""
    out = Path(out)
    rows = []
    for seed in sweep["seeds"]:
        row = describe(seed_dir(out, seed)) if (seed_dir(out, seed) / "config.json").exists() else None
        row = row or {"run": str(seed_dir(out, seed)), "status": "not started", "problem": None}
        rows.append({**row, "seed": seed})
    finished = [r for r in rows if r["status"] == "finished"]
    names = ["test_elbo", "test_log_likelihood"]
    names += sorted({k for r in finished for k in r.get("scores", {})})
    names.append("train_seconds")

    def value(row, name):
        return row.get("scores", {}).get(name, row.get(name))

    names = [n for n in names if any(value(r, n) is not None for r in rows)]

    stats = {}
    for name in names:
        found = [value(r, name) for r in finished if value(r, name) is not None]
        if found:
            stats[name] = _stats(found)
    summary = {"sweep": sweep, "seeds": rows, "finished": len(finished), "stats": stats}
    if sweep.get("success"):
        score, threshold = sweep["success"]
        passed = [r["seed"] for r in finished if _at_least(value(r, score), threshold)]
        summary["success"] = {
            "score": score,
            "at_least": threshold,
            "seeds_passed": passed,
            "rate": len(passed) / len(finished) if finished else None,
        }
        if finished and all(value(r, score) is None for r in finished):  # a misspelt score is no 0%
            summary["success"]["problem"] = f"no seed has a score {score} (they have: {', '.join(names)})"
    write_json(out / "summary.json", summary)
    write_bytes(out / "summary.md", _markdown(summary, names).encode())
    _picture(out, summary, [n for n in names if n not in ("test_log_likelihood", "train_seconds")])
    return summary


_TITLES = {"test_elbo": "test ELBO", "test_log_likelihood": "log p(x)", "train_seconds": "train time (s)"}


def _at_least(value, threshold: float) -> bool:
    """Whether a seed's score `value` (None: it has none) reaches `threshold`; NaN does not."""
    return value is not None and value >= threshold


def _title(name: str) -> str:
    return _TITLES.get(name, name.replace("_", " "))


def _number(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _markdown(summary: dict, names: list) -> str:
    sweep = summary["sweep"]
    out = Path(summary["seeds"][0]["run"]).parent if summary["seeds"] else Path(".")
    config = sweep["config"]
    what = sweep.get("preset") or config["model"]
    lines = [
        f"# Sweep: {what} over {len(sweep['seeds'])} seeds",
        "",
        f"{config['model']} on {config['dataset']}, backend {config['backend']}, "
        f"{config['epochs']} epochs; {summary['finished']} of {len(sweep['seeds'])} seeds finished.",
        "",
    ]
    commands = sweep.get("commands") or []
    lines += [f"Command{'s' if len(commands) > 1 else ''}:", ""] + [f"    {c}" for c in commands]
    lines += ["", f"Settings: {out / SWEEP_FILE}; continue with `vaelab sweep --resume --out {out}`.", ""]
    k = next((r.get("iw_samples") for r in summary["seeds"] if r.get("iw_samples")), None)
    header = ["seed", "status", "epochs"] + [
        _title(n) + (f" (K = {k})" if n == "test_log_likelihood" and k else "") for n in names
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary["seeds"]:
        cells = [
            str(row["seed"]) + (f" (start {row['start']})" if "start" in row else ""),
            row["status"],
            f"{row.get('epochs_done', 0)}/{row.get('epochs_planned', '?')}",
        ]
        cells += [_number(row.get("scores", {}).get(n, row.get(n))) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Over the finished seeds (sd with n - 1):", ""]
    lines += ["| | " + " | ".join(_title(n) for n in names) + " |", "|" + "---|" * (len(names) + 1)]
    for stat in ("mean", "sd", "min", "max", "n"):
        cells = [
            str(summary["stats"].get(n, {}).get(stat, "–"))
            if stat == "n"
            else _number(summary["stats"].get(n, {}).get(stat))
            for n in names
        ]
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    if "success" in summary:
        s = summary["success"]
        rate = "–" if s["rate"] is None else f"{100 * s['rate']:.0f}%"
        lines += [
            "",
            f"Success ({_title(s['score'])} ≥ {s['at_least']}): {len(s['seeds_passed'])} of "
            f"{summary['finished']} finished seeds ({rate}); passed: "
            f"{', '.join(map(str, s['seeds_passed'])) or 'none'}.",
        ]
        if s.get("problem"):  # the line above would read as a real 0%
            lines[-1] = f"Success ({_title(s['score'])} ≥ {s['at_least']}): not measured: {s['problem']}."
    broken = [r for r in summary["seeds"] if r.get("problem")]
    for row in broken:
        lines += ["", f"seed {row['seed']}: {row['problem']}"]
    return "\n".join(lines) + "\n"


def _picture(out: Path, summary: dict, names: list) -> None:
    from matplotlib.ticker import MaxNLocator

    from vaelab.plots import plt, save_figure

    curves = {}
    for row in summary["seeds"]:
        metrics = read_metrics(Path(row["run"]) / "metrics.jsonl") if row["status"] != "broken" else []
        curves[row["seed"]] = metrics[: row.get("epochs_done", 0)]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for seed, metrics in curves.items():
            points = [(m["epoch"], m[name]) for m in metrics if m.get(name) is not None]
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], lw=1.2, label=f"seed {seed}")
        stat = summary["stats"].get(name)
        title = _title(name)
        if stat and stat.get("sd") is not None:
            title += f"\n{_number(stat['mean'])} ± {_number(stat['sd'])} (n = {stat['n']})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if curves:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "summary.png")
