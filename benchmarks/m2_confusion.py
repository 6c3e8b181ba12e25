"""The confusion matrix of an M2 run's classifier q(y|x) on the MNIST test images.

    python benchmarks/m2_confusion.py RUN [RUN ...]

Prints each run's test accuracy and its 10×10 counts (rows: the true digit,
columns: q(y|x)'s most probable class): which digits a label draw that
plateaus (M2's draw 1 at 0.89) mistakes for which.
"""

import argparse

import torch

from vaelab.data import load
from vaelab.run import load_run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels = load("mnist", "test")
    x = torch.as_tensor(images).float().reshape(len(images), -1)
    x = x / 255.0 if x.max() > 1 else x
    y = torch.as_tensor(labels).long()
    for path in args.runs:
        model = load_run(path).model
        with torch.no_grad():
            guess = model.classify(x)
        counts = torch.zeros(10, 10, dtype=torch.long)
        counts.index_put_((y, guess), torch.ones_like(y), accumulate=True)
        print(f"{path}: test accuracy {(guess == y).double().mean().item():.4f}")
        print(counts)


if __name__ == "__main__":
    main()
