"""How often a best-of-k choice by the early training ELBO would have picked a seed that succeeds.

    python benchmarks/restarts_retro.py runs/sweep-air-torch runs/sweep-air-pyro \
        [--score count_accuracy --at-least 0.95] [--epochs 1-10] [--out FILE]

Reads the finished seeds of each sweep (DIR/seed-S/metrics.jsonl). For each
group of k of its seeds (every such group, k = 2 and 3) and each epoch E,
takes the seed whose train ELBO at epoch E is highest (what ``vaelab train
--restarts k --restart-epochs E`` chooses among its starts; the first of
equals) and asks whether that seed's last epoch reached the score. Prints the
fraction of groups that would have succeeded against the rate of a single
seed, and the best any choice could do (a group succeeds if any of its seeds
does). An estimate from the runs already made, each seed standing for a
start: the choice of E is read off the same runs, so it is optimistic.
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path


def seeds_of(sweep: Path) -> dict:
    runs = {}
    for path in sorted(sweep.glob("seed-*/metrics.jsonl")):
        rows = {m["epoch"]: m for m in map(json.loads, path.read_text().splitlines())}
        runs[path.parent.name] = rows
    return runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--score", default="count_accuracy")
    parser.add_argument("--at-least", type=float, default=0.95)
    parser.add_argument("--epochs", default="1-10", help="choice epochs E, as A-B")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    low, high = map(int, args.epochs.split("-"))
    record = {
        "benchmark": "restarts_retro",
        "command": "python benchmarks/restarts_retro.py " + " ".join(sys.argv[1:]),
    }
    record["date"] = time.strftime("%Y-%m-%d")
    record["sweeps"] = {}
    for sweep in args.sweeps:
        runs = seeds_of(sweep)
        final = {s: rows[max(rows)] for s, rows in runs.items()}
        ok = {s: final[s].get(args.score, float("-inf")) >= args.at_least for s in runs}
        out = {
            "seeds": {s: {"final_" + args.score: final[s].get(args.score), "succeeded": ok[s]} for s in runs}
        }
        out["single_seed_rate"] = sum(ok.values()) / len(ok)
        print(f"{sweep}: {sum(ok.values())} of {len(ok)} seeds reach {args.score} >= {args.at_least}")
        for k in (2, 3):
            groups = list(itertools.combinations(sorted(runs), k))
            best_possible = sum(any(ok[s] for s in g) for g in groups)
            by_epoch = {}
            for epoch in range(low, high + 1):
                if not all(epoch in runs[s] for s in runs):
                    continue
                chosen = [max(g, key=lambda s: runs[s][epoch]["train_elbo"]) for g in groups]
                by_epoch[epoch] = sum(ok[s] for s in chosen)
            out[f"best_of_{k}"] = {
                "groups": len(groups),
                "any_succeeds": best_possible,
                "chosen_succeeds": by_epoch,
            }
            line = ", ".join(f"E={e}: {n}" for e, n in by_epoch.items())
            print(f"  best of {k}, {len(groups)} groups (at most {best_possible} can succeed): {line}")
        record["sweeps"][str(sweep)] = out
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
