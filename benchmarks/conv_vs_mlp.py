"""The convolutional VAE against the MLP VAE at equal epochs: curves, final test ELBO and log p(x).

Reads two finished run directories (trained with the same preset and epochs,
`--net mlp` and `--net conv`) and their evaluations (`vaelab evaluate RUN
--iw-samples K --json > RUN/eval-kK.json`), draws both test-ELBO curves on one
picture and writes a JSON record with every number and the runs' wall times.

    vaelab train --preset pytorch-examples --dataset fashion-mnist --net mlp --out runs/fmnist-mlp
    vaelab train --preset pytorch-examples --dataset fashion-mnist --net conv --out runs/fmnist-conv
    vaelab evaluate runs/fmnist-mlp --iw-samples 500 --json > runs/fmnist-mlp/eval-k500.json   # and conv
    python benchmarks/conv_vs_mlp.py --runs runs/fmnist-mlp runs/fmnist-conv --eval eval-k500.json
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs=2, required=True, help="the MLP run, then the conv run")
    parser.add_argument("--eval", default="eval-k500.json", help="each run's evaluation file")
    parser.add_argument("--out", default="benchmarks/results/conv_vs_mlp_fashion.json")
    parser.add_argument("--picture", default="benchmarks/results/conv_vs_mlp_fashion.png")
    args = parser.parse_args()
    record = {
        "benchmark": "conv_vs_mlp",
        "command": f"python benchmarks/conv_vs_mlp.py --runs {' '.join(args.runs)} --eval {args.eval}",
        "date": time.strftime("%Y-%m-%d"),
        "runs": {},
    }
    fig, ax = plt.subplots(figsize=(6, 4))
    for path in map(Path, args.runs):
        config = json.loads((path / "config.json").read_text())
        lines = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        evaluation = json.loads((path / args.eval).read_text())
        net = config.get("net", "mlp")
        record["runs"][net] = {
            "run": str(path),
            "config": config,
            "test_elbo": lines[-1]["test_elbo"],
            "test_log_likelihood": evaluation["test_log_likelihood"],
            "iw_samples": evaluation["iw_samples"],
            "train_seconds": sum(line["train_seconds"] for line in lines),
            "curve": [{k: line[k] for k in ("epoch", "train_elbo", "test_elbo")} for line in lines],
        }
        epochs = [line["epoch"] for line in lines]
        ax.plot(epochs, [line["test_elbo"] for line in lines], marker="o", label=f"{net}: test ELBO")
        ax.plot(epochs, [line["train_elbo"] for line in lines], linestyle="--", label=f"{net}: train ELBO")
    mlp, conv = record["runs"]["mlp"], record["runs"]["conv"]
    record["conv_minus_mlp"] = {
        "test_elbo": conv["test_elbo"] - mlp["test_elbo"],
        "test_log_likelihood": conv["test_log_likelihood"] - mlp["test_log_likelihood"],
    }
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image (higher is better)")
    ax.set_title(f"{mlp['config']['dataset']}: conv against MLP VAE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.picture, dpi=120)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for net in ("mlp", "conv"):
        r = record["runs"][net]
        print(
            f"{net:4s} test ELBO {r['test_elbo']:.2f}  log p(x) (K={r['iw_samples']}) "
            f"{r['test_log_likelihood']:.2f}  train {r['train_seconds']:.0f} s"
        )
    print(f"wrote {args.out} and {args.picture}")


if __name__ == "__main__":
    main()
