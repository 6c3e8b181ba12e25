"""Pyro against PyTorch: the same network, from the same seed, under each objective.

>>> summary = compare("pytorch-examples", elbos=["trace", "meanfield"], out="runs/compare")

Trains the hand-written objective and each chosen Pyro ELBO, evaluates each,
and writes DIR/compare.md, DIR/compare.html and DIR/compare.json: ELBO curves
overlaid, final test ELBO and log-likelihood, seconds per epoch and their
ratio to the hand-written loop, the lines of code of the model's two halves,
and the mistakes study (:mod:`vaelab.mistakes`).
"""

import ast
import html
import inspect
import json
import statistics
import textwrap
from pathlib import Path

from vaelab import plots
from vaelab.config import read_run_config, resolve
from vaelab.errors import ConfigError
from vaelab.evaluate import evaluate_run
from vaelab.fileio import write_bytes, write_json
from vaelab.mistakes import PATHS, run_study
from vaelab.models import MODELS
from vaelab.objectives import BOUNDS
from vaelab.records import read_metrics
from vaelab.report import STYLE, environment, html_image, html_table
from vaelab.run import load_run
from vaelab.stopping import Interrupted
from vaelab.train import RESUMABLE, train


def code_lines(function) -> int:
    """Returns the lines of code of `function`: no docstring, comments or blank lines."""
    source = textwrap.dedent(inspect.getsource(function))
    body = ast.parse(source).body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring
    lines = set()
    for node in body:
        lines.update(range(node.lineno, node.end_lineno + 1))
    source_lines = source.splitlines()
    return sum(
        1 for n in lines if source_lines[n - 1].strip() and not source_lines[n - 1].strip().startswith("#")
    )


# The methods of each half; a model that builds its ELBO from terms counts them too.
HALVES = {
    "pyro": ("model", "guide"),
    "torch": ("elbo", "elbo_terms", "terms_given", "log_weights", "_log_weights"),
}


def halves(model_class) -> dict:
    """Returns the lines of code of a model's Pyro half (model + guide) and hand-written half (elbo)."""
    found = {
        name: inspect.getattr_static(model_class, name, None) for names in HALVES.values() for name in names
    }
    return {
        half: sum(code_lines(found[name]) for name in names if found[name] is not None)
        for half, names in HALVES.items()
    }


def _check_reusable(run_dir: Path, config) -> None:
    """Raises ConfigError if `run_dir` holds a run of other settings than `config` (or more epochs).

    A comparison reuses and continues its earlier runs, so a run made with
    another seed or network must not be labelled with this one's.
    """
    if not (run_dir / "config.json").exists():
        return
    saved, wanted = read_run_config(run_dir).to_dict(), config.to_dict()
    differing = sorted(
        k for k in set(saved) | set(wanted) if k not in RESUMABLE and saved.get(k) != wanted.get(k)
    )
    done = read_metrics(run_dir / "metrics.jsonl")
    if done and done[-1]["epoch"] > config.epochs:
        differing.append("epochs")
        saved["epochs"] = done[-1]["epoch"]
    if differing:
        listed = ", ".join(f"{k} ({saved.get(k)!r} -> {wanted.get(k)!r})" for k in differing)
        raise ConfigError(f"{run_dir} holds a run with other settings: {listed}; choose another --out")


def _config_of(preset, spec, overrides):
    """The config of one row: the preset's network and the row's own ELBO (not the preset's objective)."""
    backend, _, elbo = spec.partition(":")
    if elbo in BOUNDS:
        raise ConfigError(
            f"compare sets Pyro's ELBOs beside the hand-written one; train {elbo} with "
            f"vaelab train --elbo {elbo}"
        )
    return resolve(preset=preset, overrides={**overrides, "backend": backend, "elbo": elbo or None})


def _train_and_evaluate(preset, spec, overrides, out, iw_samples, progress, echo):
    config = _config_of(preset, spec, overrides)
    run_dir = Path(out) / spec.replace(":", "-")
    _check_reusable(run_dir, config)
    done = read_metrics(run_dir / "metrics.jsonl")
    if not done or done[-1]["epoch"] < config.epochs:
        echo(f"training {spec} into {run_dir}")
        try:
            train(config, run_dir, (run_dir / "checkpoint.pt").exists(), progress, echo, resume_hint=False)
        except Interrupted:
            echo("continue the comparison with the same vaelab compare command: it resumes each row begun")
            raise
    run = load_run(run_dir)
    result = evaluate_run(run, iw_samples=iw_samples, progress=progress)
    seconds = statistics.median(m["train_seconds"] for m in run.metrics)
    return {
        "spec": spec,
        "run_dir": str(run_dir),
        "metrics": run.metrics,
        "test_elbo": result["test_elbo"],
        "test_log_likelihood": result["test_log_likelihood"],
        "seconds_per_epoch": seconds,
    }, config


def compare(
    preset="pytorch-examples",
    elbos=("trace", "meanfield"),
    out="runs/compare",
    overrides=None,
    iw_samples=1000,
    progress=True,
    echo=print,
) -> dict:
    """Trains and evaluates torch and each Pyro ELBO; writes the comparison; returns its summary."""
    out = Path(out)
    overrides = dict(overrides or {})
    rows, config = [], None
    specs = ["torch", *(f"pyro:{e}" for e in elbos)]
    for spec in specs:  # every row's settings checked before any trains
        _config_of(preset, spec, overrides)
    for spec in specs:
        row, config = _train_and_evaluate(preset, spec, overrides, out, iw_samples, progress, echo)
        rows.append(row)
    base = rows[0]["seconds_per_epoch"]
    for row in rows:
        row["time_ratio_to_torch"] = row["seconds_per_epoch"] / base
    summary = {
        "preset": preset,
        "config": {k: v for k, v in config.to_dict().items() if k not in ("backend", "elbo")},
        "iw_samples": iw_samples,
        "runs": rows,
        "lines_of_code": halves(MODELS[config.model]),
        "mistakes": run_study(),
        "environment": environment(),
    }
    curves = {row["spec"]: row["metrics"] for row in rows}
    plots.compare_curves(curves, out / "compare_curves.png")
    write_json(out / "compare.json", summary)
    write_bytes(out / "compare.md", render_markdown(summary).encode())
    write_bytes(out / "compare.html", render_html(summary, out / "compare_curves.png").encode())
    return summary


def _result_rows(summary):
    return [
        (
            row["spec"],
            f"{row['test_elbo']:.3f}",
            f"{row['test_log_likelihood']:.3f}",
            f"{row['seconds_per_epoch']:.2f}",
            f"{row['time_ratio_to_torch']:.2f}×",
        )
        for row in summary["runs"]
    ]


RESULT_HEADERS = ["objective", "test ELBO", "test log p(x)", "s / epoch", "time vs torch"]
MISTAKE_HEADERS = ["mistake", *PATHS]


def _mistake_rows(summary):
    return [
        (f["what"], *(f"{f[p]['outcome']}: {f[p]['detail']}" for p in PATHS)) for f in summary["mistakes"]
    ]


def _findings_text(summary) -> list:
    """Returns sentences stating what the mistakes study found, whichever way it fell."""
    counts = {p: sum(f[p]["outcome"] in ("error", "warning") for f in summary["mistakes"]) for p in PATHS}
    silent = {p: [f["name"] for f in summary["mistakes"] if f[p]["outcome"] == "wrong"] for p in PATHS}
    n = len(summary["mistakes"])
    lines = [
        f"Of {n} mistakes, each path raised an error or a warning on: "
        + ", ".join(f"{p} {counts[p]}" for p in PATHS)
        + "."
    ]
    for path in PATHS:
        if silent[path]:
            lines.append(f"{path} gave a silently wrong number on: {', '.join(silent[path])}.")
    lines.append(
        "'right' means the mistake did not change the loss (a reshape absorbed it, or the path "
        "cannot express it); 'warning' means the run goes on with the number shown."
    )
    return lines


def render_markdown(summary) -> str:
    """Returns the comparison as Markdown."""

    def table(headers, rows):
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
        return "\n".join(lines)

    loc = summary["lines_of_code"]
    parts = [
        f"# Pyro against PyTorch: preset `{summary['preset']}`",
        f"Same network, same seed; log p(x) is the IWAE bound with K={summary['iw_samples']}.",
        table(RESULT_HEADERS, _result_rows(summary)),
        "![ELBO curves](compare_curves.png)",
        "## Lines of code",
        f"The model's Pyro half (`model` + `guide`): {loc['pyro']} lines; its hand-written half "
        f"(`elbo`): {loc['torch']} lines. The Pyro half states only the model and the guide; the "
        "hand-written half also states the objective.",
        "## Mistakes: a loud error, or a silently wrong number?",
        *_findings_text(summary),
        table(MISTAKE_HEADERS, _mistake_rows(summary)),
    ]
    return "\n\n".join(parts) + "\n"


def render_html(summary, curves_png: Path) -> str:
    """Returns the comparison as one self-contained HTML page."""
    loc = summary["lines_of_code"]
    findings = "".join(f"<p>{html.escape(line)}</p>" for line in _findings_text(summary))
    body = (
        f"<h1>Pyro against PyTorch: {html.escape(summary['preset'])}</h1>"
        f"<p>Same network, same seed; log p(x) is the IWAE bound with K={summary['iw_samples']}.</p>"
        + html_table(RESULT_HEADERS, _result_rows(summary))
        + f"<figure>{html_image(curves_png)}<figcaption>Test ELBO per epoch.</figcaption></figure>"
        + "<h2>Lines of code</h2>"
        + f"<p>Pyro half (model + guide): {loc['pyro']} lines; "
        + f"hand-written half (elbo): {loc['torch']} lines.</p>"
        + "<h2>Mistakes: a loud error, or a silently wrong number?</h2>"
        + findings
        + html_table(MISTAKE_HEADERS, _mistake_rows(summary))
        + "<h2>Configuration</h2>"
        + html_table(["field", "value"], sorted(summary["config"].items()))
        + "<h2>Environment</h2>"
        + html_table(["", ""], summary["environment"].items())
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vaelab compare</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def load_summary(out) -> dict:
    """Returns the summary saved in DIR/compare.json."""
    return json.loads((Path(out) / "compare.json").read_text())
