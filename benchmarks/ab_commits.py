"""One training epoch of two commits of vaelab, interleaved, each run in a fresh process.

    python benchmarks/ab_commits.py --base aa26150 --backends torch,pyro:jit-meanfield --rounds 5

Checks the base commit out into a temporary git worktree, then alternates
`vaelab train --epochs 1` of the base and of this working tree (same preset,
same seed, MNIST) and reads each run's `train_seconds` (the training steps
alone) and test ELBO. Prints, per backend, the median seconds of each and the
ratio base/this (above 1: this tree is faster), and whether the two gave the
same test ELBO. On a noisy machine only the ratio of one interleaved run means
anything.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = "import sys; sys.path.insert(0, sys.argv[1]); from vaelab.cli import main; sys.exit(main(sys.argv[2:]))"


def epoch(src: Path, out: Path, preset: str, spec: str) -> dict:
    backend, _, elbo = spec.partition(":")
    args = ["train", "--preset", preset, "--epochs", "1", "--device", "cpu", "--backend", backend]
    args += ["--elbo", elbo] if elbo else []
    args += ["--no-progress", "--no-plots", "--out", str(out)]
    subprocess.run([sys.executable, "-c", RUN, str(src), *args], check=True, capture_output=True)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--preset", default="pyro-tutorial")
    parser.add_argument("--backends", default="torch,pyro:jit-meanfield")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.base], check=True
        )
        try:
            for spec in args.backends.split(","):
                seconds = {"base": [], "this": []}
                elbo = {}
                for i in range(args.rounds):
                    for name, src in (("base", tree / "src"), ("this", ROOT / "src")):
                        line = epoch(
                            src, Path(tmp) / f"{name}-{spec.replace(':', '-')}-{i}", args.preset, spec
                        )
                        seconds[name].append(line["train_seconds"])
                        elbo[name] = line["test_elbo"]
                base, this = statistics.median(seconds["base"]), statistics.median(seconds["this"])
                same = (
                    "same test ELBO"
                    if elbo["base"] == elbo["this"]
                    else f"test ELBO {elbo['base']} vs {elbo['this']}"
                )
                print(f"{spec}: base {base:.3f} s, this {this:.3f} s, base/this {base / this:.3f}; {same}")
                rounded = {name: [round(s, 3) for s in values] for name, values in seconds.items()}
                print(f"  base {rounded['base']}  this {rounded['this']}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
