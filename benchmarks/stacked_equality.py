"""How close stacked seeds come to the same seeds trained alone: the largest differences.

    python benchmarks/stacked_equality.py

For vae, beta-vae (β 2) and cvae on the digits, binarised or not, seeds 0 and
3, 2 epochs: trains them stacked (`vaelab.stacked.train_stacked`) and alone
(`vaelab.train.train`) in a temporary folder, and prints the largest weight
and metric differences and whether the random states are equal.
`tests/test_sweep.py` holds them to 1e-6 and 1e-4; this prints what they are.
"""

import json
import tempfile
from pathlib import Path

import torch

from vaelab import checkpoint
from vaelab.config import resolve
from vaelab.stacked import train_stacked
from vaelab.train import train


def main() -> list:
    rows = []
    quiet = {"echo": lambda *a: None}
    with tempfile.TemporaryDirectory() as tmp:
        for model, extra in (("vae", {}), ("beta-vae", {"beta": 2.0}), ("cvae", {})):
            for binarize in ("none", "dynamic"):
                base = dict(model=model, dataset="digits", z_dim=3, hidden=(16,), epochs=2, device="cpu")
                base.update(binarize=binarize, batch_size=64, **extra)
                configs = [resolve(None, None, {**base, "seed": s}) for s in (0, 3)]
                root = Path(tmp) / f"{model}-{binarize}"
                train_stacked(configs, [root / f"stacked-{c.seed}" for c in configs], **quiet)
                weights = metrics = 0.0
                same_rng = True
                for config in configs:
                    train(config, root / f"alone-{config.seed}", progress=False, **quiet)
                    runs = [root / f"{kind}-{config.seed}" for kind in ("stacked", "alone")]
                    a, b = (checkpoint.load(r / "checkpoint.pt") for r in runs)
                    weights = max(
                        weights, *((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
                    )
                    same_rng &= torch.equal(a["rng"]["torch"], b["rng"]["torch"])
                    ma, mb = (
                        [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs
                    )
                    metrics = max(metrics, *(abs(p[k] - q[k]) for p, q in zip(ma, mb, strict=True)
                                             for k in ("train_elbo", "test_elbo")))  # fmt: skip
                row = {"model": model, "binarize": binarize, "max_weight_difference": weights,
                       "max_metric_difference": metrics, "random_state_equal": same_rng}  # fmt: skip
                print(json.dumps(row))
                rows.append(row)
    return rows


if __name__ == "__main__":
    main()
