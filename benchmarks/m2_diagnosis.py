"""Does a trained M2's decoder use the label? Three numbers from a run's checkpoint, on the test set.

- the classifier q(y|x): accuracy and the mean entropy of its predictions;
- how far the decoder moves: mean |pixel change| between a fixed z decoded
  under each of the ten labels and their mean (0: the label is ignored);
- the generative model as a classifier: argmax over y of ELBO(x, y).

    python benchmarks/m2_diagnosis.py runs/m2-k10-seed0 [--images 2000] [--out FILE]
"""

import argparse
import json
import time
from pathlib import Path

import torch

import vaelab
from vaelab.data import evaluation_split
from vaelab.data.batches import Batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = vaelab.load_run(args.run)
    model, config = run.model.eval(), run.config
    test = evaluation_split(config.dataset, "test", config.binarize)
    batch = test.batch(torch.arange(min(args.images, len(test))))
    classes = model.num_classes
    torch.manual_seed(0)
    with torch.no_grad():
        q = torch.softmax(model.classifier(batch.x), -1)
        entropy = -(q * q.clamp_min(1e-12).log()).sum(-1).mean().item()
        z = torch.randn(100, model.z_dim)
        decoded = torch.stack([torch.sigmoid(model.decode(z, torch.full((100,), c))) for c in range(classes)])
        moved = (decoded - decoded.mean(0)).abs().mean().item()
        elbos = []
        for c in range(classes):
            torch.manual_seed(1)
            elbos.append(model.elbo(Batch(batch.x, torch.full((len(batch.x),), c))))
    record = {
        "benchmark": "m2_diagnosis",
        "command": f"python benchmarks/m2_diagnosis.py {args.run} --images {args.images}",
        "date": time.strftime("%Y-%m-%d"),
        "epoch": run.metrics[-1]["epoch"],
        "images": len(batch.x),
        "classifier_accuracy": (q.argmax(-1) == batch.y).double().mean().item(),
        "classifier_mean_entropy_nats": entropy,
        "decoder_pixel_change_across_labels": moved,
        "argmax_elbo_accuracy": (torch.stack(elbos).argmax(0) == batch.y).double().mean().item(),
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
