"""Draws the burda_short records: test ELBO per epoch and the K = 5000 test NLL at each milestone.

python benchmarks/burda_plot.py [--out benchmarks/results/burda_short.png] RECORD.json ...
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+")
    parser.add_argument("--out", default="benchmarks/results/burda_short.png")
    args = parser.parse_args()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for path in args.records:
        record = json.loads(Path(path).read_text())
        label = f"{record['preset']} seed {record['seed']}"
        curve = record["curve"]
        line = left.plot([c["epoch"] for c in curve], [-c["test_elbo"] for c in curve], label=label)[0]
        epochs = [m["epoch"] for m in record["milestones"]]
        nll = [next(v for k, v in m.items() if k.startswith("test_nll")) for m in record["milestones"]]
        right.plot(epochs, nll, "o-", color=line.get_color(), label=f"{label} (first 1000 images)")
        right.plot(epochs[-1:], [-record["final"]["test_log_likelihood"]], "*", ms=12, color=line.get_color())
    left.set(xlabel="epoch", ylabel="−test ELBO (nats)", title="−ELBO on the test set, per epoch")
    right.set(xlabel="epoch", ylabel="test NLL, K = 5000 (nats)", title="NLL (★: all 10,000 test images)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
