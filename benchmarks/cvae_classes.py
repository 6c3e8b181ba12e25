"""Does a conditional VAE draw the class it is asked for? Measured on MNIST with a classifier.

    python benchmarks/cvae_classes.py --seeds 0,1,2 --epochs 10 [--z-dim 2]

Trains `vaelab train --preset pytorch-examples --model cvae` for each seed,
trains a classifier on MNIST's training digits (an MLP 784-256-10, ReLU, Adam,
3 epochs, seed 0) and states its test accuracy, then draws --per-class mean
images p(x|z, y) for each class y and counts how many the classifier puts in
class y. Writes benchmarks/results/cvae_classes.json (cvae_classes_zN.json with
--z-dim N, the latent size; the preset's is 20): the command, the
classifier's test accuracy, and per seed the test ELBO and the accuracy on
samples, overall and per class.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

import vaelab
from vaelab import data
from vaelab.config import resolve
from vaelab.fileio import write_json
from vaelab.train import train


def mnist_classifier(epochs=3, seed=0) -> tuple[nn.Module, float]:
    """Returns an MLP trained on MNIST's 60,000 training digits, and its accuracy on the 10,000 test ones."""
    torch.manual_seed(seed)
    images, labels = data.load("mnist", "train")
    x = torch.from_numpy(images.reshape(len(images), -1)).float() / 255
    y = torch.from_numpy(labels)
    net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(x)).split(128):
            loss = nn.functional.cross_entropy(net(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test_images, test_labels = data.load("mnist", "test")
    with torch.no_grad():
        predicted = net(torch.from_numpy(test_images.reshape(len(test_images), -1)).float() / 255).argmax(1)
    return net.eval(), (predicted == torch.from_numpy(test_labels)).double().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--z-dim", type=int, help="latent size (default: the preset's, 20)")
    parser.add_argument("--runs", default="runs/benchmarks")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    classifier, classifier_accuracy = mnist_classifier()
    print(f"classifier: {100 * classifier_accuracy:.2f}% of MNIST's test digits")
    record = {
        "command": "python " + " ".join(sys.argv),
        "classifier": "MLP 784-256-10, ReLU, Adam 1e-3, batch 128, 3 epochs, seed 0",
        "classifier_test_accuracy": classifier_accuracy,
        "per_class": args.per_class,
        "seeds": {},
    }
    for seed in [int(s) for s in args.seeds.split(",")]:
        latent = f"-z{args.z_dim}" if args.z_dim else ""
        run_dir = Path(args.runs) / f"cvae-pytorch-examples{latent}-seed{seed}"
        overrides = {"model": "cvae", "epochs": args.epochs, "seed": seed, "device": "cpu"}
        if args.z_dim:
            overrides["z_dim"] = args.z_dim
        start = time.perf_counter()
        config = resolve(preset="pytorch-examples", overrides=overrides)
        resume = (run_dir / "checkpoint.pt").exists()
        train(config, run_dir, resume=resume, progress=False, echo=lambda line: None)
        run = vaelab.load_run(run_dir)
        labels = torch.arange(10).repeat_interleave(args.per_class)
        torch.manual_seed(seed)
        with torch.no_grad():
            predicted = classifier(run.model.sample(len(labels), y=labels)).argmax(1)
        right = (predicted == labels).double()
        per_class = right.view(10, args.per_class).mean(1).tolist()
        record["seeds"][str(seed)] = {
            "run_dir": str(run_dir),
            "test_elbo": run.metrics[-1]["test_elbo"],
            "sample_accuracy": right.mean().item(),
            "sample_accuracy_per_class": per_class,
            "seconds": time.perf_counter() - start,
        }
        print(
            f"seed {seed}: test ELBO {run.metrics[-1]['test_elbo']:.3f}, samples recognised as their class: "
            f"{100 * right.mean().item():.2f}% (lowest class {min(per_class):.3f})"
        )
    name = f"cvae_classes_z{args.z_dim}.json" if args.z_dim else "cvae_classes.json"
    write_json(Path(args.results) / name, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
