"""M2 from the initialisation of Pyro's example: does it explain part of the gap to Pyro's table?

    python benchmarks/m2_init_probe.py --epochs 10 [--seed 0] [--init pyro-example|default] --out FILE.jsonl

Pyro's ss_vae_M2 example (its utils/custom_mlp.py) draws every hidden layer's
weights and biases from N(0, 0.001²) in all three networks and leaves the
output layers at PyTorch's default; vaelab keeps PyTorch's default
everywhere. This trains vaelab's M2 with the `m2-pyro` preset and
`--labelled-per-batch 10` (vaelab's best recipe; its default-initialised
seeds are in sweeps/m2-pyro-k10/) through the same training loop, after
re-drawing the hidden layers so, and writes each epoch's train and test
ELBO and test accuracy of q(y|x), one JSON line each after a header line.
"""

import argparse
import sys

import torch

from probe_loop import train_logged
from vaelab.config import resolve
from vaelab.train import build_state


def hidden_layers(model) -> list:
    """The Linear layer of each network's hidden part: encoder, decoder and classifier bodies."""
    return [model.encoder.body[0], model.decoder.body[0], model.classifier[0][0]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", choices=("pyro-example", "default"), default="pyro-example")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = resolve(
        preset="m2-pyro",
        overrides={"backend": "torch", "labelled_per_batch": 10, "seed": args.seed, "device": "cpu"},
    )
    state = build_state(config)
    if args.init == "pyro-example":
        with torch.no_grad():
            for layer in hidden_layers(state.model):
                layer.weight.normal_(0.0, 0.001)
                layer.bias.normal_(0.0, 0.001)
    train_logged(
        state,
        args.epochs,
        args.out,
        "m2_init_probe.py",
        lambda model, test, size: model.scores(test, size),
        init=args.init,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
