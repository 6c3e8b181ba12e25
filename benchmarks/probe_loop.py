"""The training loop of the probes (`m2_init_probe.py`, `air_init_probe.py`): epochs logged as JSON lines.

A probe changes one thing in a freshly built training state, then trains it
here through vaelab's own loop and writes a header line and, after each
epoch, one line of its train and test ELBO, the model's scores and seconds,
rewriting the file each epoch so an interrupted probe keeps what it did.
"""

import json
import sys
import time

import torch

from vaelab.models.base import dataset_elbo, evaluating
from vaelab.train import start_epoch, train_epoch


def train_logged(state, epochs: int, out: str, script: str, scores, **header) -> list:
    """Trains `state` for `epochs`, logging to `out`; `scores(model, test_data, batch_size)` gives a dict."""
    config = state.config
    first = {
        "header": True,
        "date": time.strftime("%Y-%m-%d"),
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
        **header,
        "torch": torch.__version__,
    }
    lines = [first]
    for epoch in range(1, epochs + 1):
        start_epoch(state, epoch)
        result = train_epoch(state, epoch, progress=False)
        test_elbo = dataset_elbo(state.model, state.test_data, config.eval_batch_size, seed=config.seed)
        with evaluating(state.model):
            found = scores(state.model, state.test_data, config.eval_batch_size)
        line = {"epoch": epoch, "train_elbo": result.train_elbo, "test_elbo": test_elbo, **found}
        line["train_seconds"] = result.seconds
        lines.append(line)
        print(json.dumps(line), flush=True)
        with open(out, "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)
    return lines
