"""The run's report: one self-contained HTML page (images inlined, no network fetches).

>>> path = write_report(vaelab.load_run("runs/demo"))   # RUN/report.html
"""

import base64
import html
import platform
from pathlib import Path

import pyro
import torch

from vaelab.fileio import write_bytes
from vaelab.records import read_evaluation
from vaelab.restarts import read_starts

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f3f3f3; } td.key { text-align: left; font-family: monospace; }
figure { margin: 1.2em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
"""


def html_table(headers, rows) -> str:
    """Returns an HTML table; the first column is a key, set in monospace."""

    def cell(i, value):
        opening = '<td class="key">' if i == 0 else "<td>"
        return f"{opening}{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def confusion_table(confusion, split="test") -> str:
    """Returns the count confusion (rows true count, columns inferred count) as a titled HTML table."""
    headers = ["true \\ inferred"] + [str(j) for j in range(len(confusion[0]))]
    rows = [[i, *row] for i, row in enumerate(confusion)]
    title = f"Counts on the {html.escape(split)} split: true (rows) against inferred (columns)"
    return f"<h3>{title}</h3>" + html_table(headers, rows)


_FIRST_COLUMNS = ("epoch", "train_elbo", "test_elbo", "train_seconds")


def _metric(key: str, value) -> str:
    if value is None:
        return ""
    if key == "epoch":
        return str(value)
    if key == "train_seconds":
        return f"{value:.1f}"
    if key.endswith("accuracy"):  # a share of images: AIR's count accuracy
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def metrics_table(metrics: list) -> str:
    """Returns the per-epoch metrics as an HTML table: the common columns, then any others logged.

    Others are what a model adds (a weighted model's train_objective, AIR's
    count_accuracy), in the order first seen.
    """
    keys = list(_FIRST_COLUMNS) + list(
        dict.fromkeys(k for m in metrics for k in m if k not in _FIRST_COLUMNS)
    )
    headers = [k.replace("_", " ").replace("elbo", "ELBO") for k in keys]
    rows = [[_metric(k, m.get(k)) for k in keys] for m in metrics]
    return html_table(headers, rows)


def starts_table(record: dict) -> str:
    """Returns RUN/starts.json (``--restarts``) as a titled table: what each start reached, which went on."""
    epochs = record.get("restart_epochs")
    rows = []
    for row in record.get("starts", []):
        line = row.get("metrics", {})
        reached = "diverged" if row.get("objective") is None else f"{row['objective']:.3f}"
        scores = ", ".join(
            f"{k} {_metric(k, v)}" for k, v in line.items() if k not in (*_FIRST_COLUMNS, "train_objective")
        )
        went_on = "goes on" if row["start"] == record.get("chosen") else ""
        rows.append(
            [
                row["start"],
                row.get("training_seed", ""),
                reached,
                _metric("test_elbo", line.get("test_elbo")),
                scores,
                went_on,
            ]
        )
    title = (
        f"<h2>Starts</h2><p>{len(rows)} starts of the seed trained {epochs} epoch(s) each; the one with the "
        "highest training objective went on (<code>--restarts</code>).</p>"
    )
    headers = ["start", "training seed", "training objective", "test ELBO", "scores", ""]
    return title + html_table(headers, rows)


def html_image(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'


def environment(device=None) -> dict:
    """Returns the versions and device a report states."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": str(device) if device is not None else "cpu",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "platform": platform.platform(),
    }


def render(run) -> str:
    """Returns the HTML of `run`'s report from its config, metrics, eval.json and plots/."""
    run_dir = Path(run.dir)
    parts = [f"<h1>vaelab run: {html.escape(run_dir.name)}</h1>"]
    if (run_dir / "explore.html").exists():
        parts.append(
            '<p><a href="explore.html">Latent explorer</a>: drag through the latent space and watch the '
            "decoder answer (runs in the browser, offline).</p>"
        )
    config = run.config.to_dict()
    parts.append("<h2>Configuration</h2>" + html_table(["field", "value"], sorted(config.items())))
    starts = read_starts(run_dir)
    if starts is not None:
        parts.append(starts_table(starts))
    if run.metrics:
        parts.append("<h2>Metrics</h2>" + metrics_table(run.metrics))
    eval_path = run_dir / "eval.json"
    if eval_path.exists():
        result = read_evaluation(eval_path)
        confusion = result.pop("count_confusion", None)
        rows = [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in result.items()]
        parts.append("<h2>Evaluation</h2>" + html_table(["field", "value"], rows))
        if confusion:
            parts.append(confusion_table(confusion, result.get("split", "test")))
    captions = run.model.picture_captions()
    figures = []
    for name in captions:
        png = run_dir / "plots" / f"{name}.png"
        if png.exists():
            caption = html.escape(captions.get(name, name))
            figures.append(f"<figure>{html_image(png)}<figcaption>{caption}</figcaption></figure>")
    if figures:
        parts.append("<h2>Pictures</h2>" + "".join(figures))
    device = next(run.model.parameters()).device
    parts.append("<h2>Environment</h2>" + html_table(["", ""], environment(device).items()))
    title = html.escape(f"vaelab: {run_dir.name}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(run, out=None) -> Path:
    """Writes `run`'s report to `out` (default RUN/report.html) atomically; returns the path."""
    out = Path(out or Path(run.dir) / "report.html")
    write_bytes(out, render(run).encode())
    return out
