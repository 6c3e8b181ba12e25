"""The run's report: one self-contained HTML page (images inlined, no network fetches).

>>> path = write_report(vaelab.load_run("runs/demo"))   # RUN/report.html
"""

import base64
import html
import json
import platform
from pathlib import Path

import pyro
import torch

from vaelab.figures import ALL_PLOT_NAMES
from vaelab.fileio import write_bytes

CAPTIONS = {
    "elbo_curves": "Train and test ELBO per epoch (nats per image; higher is better).",
    "air_boxes": (
        "Random test images with the windows AIR's guide infers (its most probable explanation), "
        "one colour per step; above each, the inferred count and the true count, in red when wrong."
    ),
    "count_accuracy": "Share of test images whose inferred number of objects is right, per epoch.",
    "count_confusion": (
        "Test images by true count (rows) and inferred count (columns), shaded by share of the row."
    ),
    "reconstructions": "Random test images (top) and the means of p(x | z = E[z|x]) (bottom).",
    "samples": "Mean images of p(x|z) for z drawn from the prior N(0, I).",
    "interpolations": "Decoded points on straight lines between the posterior means of two test images.",
    "traversal": "One test image's posterior mean, with one latent dimension at a time swept from -3 to +3.",
    "active_units": "Variance across the test set of each dimension's posterior mean; above 0.01 is active.",
    "latent_map": "Posterior means of test images, embedded in 2-D by t-SNE, coloured by label.",
    "manifold": "Decoded images of a regular grid over the 2-D latent space.",
}

# An AIR run's pictures of the same name show other things.
AIR_CAPTIONS = {
    "reconstructions": "Random test images (top) and the canvases of the guide's most probable explanation.",
    "samples": (
        "Canvases drawn from the prior given the number of objects (windows and glimpses from the prior); "
        "the prior itself adds each further object with a small probability, so its draws are mostly empty."
    ),
}

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
    config = run.config.to_dict()
    parts.append("<h2>Configuration</h2>" + html_table(["field", "value"], sorted(config.items())))
    if run.metrics:
        counted = any("count_accuracy" in m for m in run.metrics)
        headers = ["epoch", "train ELBO", "test ELBO", "train seconds"] + ["count accuracy"] * counted
        rows = []
        for m in run.metrics:
            row = [m["epoch"], f"{m['train_elbo']:.3f}", f"{m['test_elbo']:.3f}", f"{m['train_seconds']:.1f}"]
            if counted:  # AIR: the test split's count accuracy
                row.append(f"{100 * m['count_accuracy']:.1f}%" if "count_accuracy" in m else "")
            rows.append(row)
        parts.append("<h2>Metrics</h2>" + html_table(headers, rows))
    eval_path = run_dir / "eval.json"
    if eval_path.exists():
        result = json.loads(eval_path.read_text())
        confusion = result.pop("count_confusion", None)
        rows = [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in result.items()]
        parts.append("<h2>Evaluation</h2>" + html_table(["field", "value"], rows))
        if confusion:
            parts.append(confusion_table(confusion, result.get("split", "test")))
    captions = {**CAPTIONS, **(AIR_CAPTIONS if hasattr(run.model, "infer") else {})}
    figures = []
    for name in ALL_PLOT_NAMES:
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
