"""What an epoch costs besides its steps: scoring the test split, and writing metrics and checkpoint.

    python benchmarks/epoch_overhead.py [--preset burda-1layer-vae-k1] [--hand-gradients]
                                        [--epochs 3] [--history 1700] [--threads 1] [--out FILE]

Trains `--epochs` epochs of the preset on the CPU and times, per epoch, the
steps (`train_epoch`), the scoring (the test ELBO and the model's scores,
what :func:`vaelab.train.finish_epoch` computes) and :func:`finish_epoch`
whole (scoring, rewriting metrics.jsonl with `--history` earlier lines as a
long run has them, and the checkpoint). It answers whether scoring every
epoch, rather than every k-th, is worth an option for long schedules
(Burda et al.'s 3,280 epochs). Prints a JSON record; medians over epochs 2..
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from vaelab.config import resolve
from vaelab.models.base import dataset_elbo, evaluating
from vaelab.train import build_state, finish_epoch, start_epoch, train_epoch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="burda-1layer-vae-k1")
    p.add_argument("--hand-gradients", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--history", type=int, default=1700, help="earlier metrics lines, as a long run has")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the record here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = resolve(args.preset, overrides={"device": "cpu", "hand_gradients": args.hand_gradients})
    state = build_state(config)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for epoch in range(1, args.epochs + 1):
            start_epoch(state, epoch)
            start = time.perf_counter()
            result = train_epoch(state, epoch, progress=False)
            steps = time.perf_counter() - start
            start = time.perf_counter()
            dataset_elbo(state.model, state.test_data, config.eval_batch_size, seed=config.seed)
            with evaluating(state.model):
                state.model.scores(state.test_data, config.eval_batch_size)
            scoring = time.perf_counter() - start
            earlier = state.metrics[-1:] * args.history if state.metrics else []
            state.metrics = earlier
            start = time.perf_counter()
            finish_epoch(state, Path(folder), epoch, result, None)
            finish = time.perf_counter() - start
            rows.append({"epoch": epoch, "steps_s": steps, "scoring_s": scoring, "finish_epoch_s": finish})
            print(
                f"epoch {epoch}: steps {steps:.2f} s, scoring {scoring:.2f} s, finish_epoch {finish:.2f} s",
                file=sys.stderr,
            )
    later = rows[1:] or rows

    def median(key):
        return statistics.median(r[key] for r in later)

    record = {
        "benchmark": "epoch_overhead",
        "date": date.today().isoformat(),
        "command": "python benchmarks/epoch_overhead.py " + " ".join(argv or sys.argv[1:]),
        "preset": args.preset,
        "hand_gradients": args.hand_gradients,
        "threads": args.threads,
        "history": args.history,
        "epochs": rows,
        "median_steps_s": median("steps_s"),
        "median_scoring_s": median("scoring_s"),
        "median_finish_epoch_s": median("finish_epoch_s"),
        "finish_share": median("finish_epoch_s") / (median("steps_s") + median("finish_epoch_s")),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
