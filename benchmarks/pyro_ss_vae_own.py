"""Runs Pyro's own semi-supervised VAE example (examples/vae/ss_vae_M2.py), unchanged, on vaelab's MNIST.

    # run (needs a copy of Pyro's examples/vae folder: ss_vae_M2.py and utils/ as they are in Pyro)
    OMP_NUM_THREADS=1 python benchmarks/pyro_ss_vae_own.py run --examples /tmp/pyro_ss_vae \\
        --pyro-commit SHA -- --seed 0 -n 20 --aux-loss -alm 46 -enum parallel -sup 100 \\
        -zd 50 -hl 500 -lr 0.00042 -b1 0.95 -bs 200 -log /tmp/pyro_ss_vae/ss_vae_M2.log > RUN.log

    # turn that printed log into one JSON line per epoch, after a header line
    python benchmarks/pyro_ss_vae_own.py jsonl --log RUN.log --out FILE.jsonl --date 2026-11-22

`--examples` is the folder holding Pyro's example (e.g. from
`git --git-dir=<pyro mirror> show HEAD:examples/vae/ss_vae_M2.py`); nothing in it is edited. The
arguments after `--` go to the example's own argparse parser.

What this script changes around the example, and nothing else:

- torchvision is not installed here (and there is no network). Pyro's `pyro.contrib.examples.util.MNIST`
  subclasses `torchvision.datasets.MNIST`, which `utils/mnist_cached.py` reads through `.data`
  (uint8, N×28×28) and `.targets` (int64, N). A stand-in `torchvision` package goes into
  `sys.modules` first; its `datasets.MNIST` serves exactly those tensors from
  `vaelab.data.load("mnist", "train" | "test")` (60,000 / 10,000 images, same order as MNIST's files)
  and never downloads. `visdom` (imported at the top of the example, used only with `--visualize`)
  is stubbed the same way.
- The example's `if __name__ == "__main__":` block is executed statement by statement from its
  own source, so its parser and defaults are Pyro's, except that its `assert` statements are
  evaluated and reported, not raised: two of them stop the documented 100-label command as written
  (`pyro.__version__.startswith("1.9.1")` with pyro-ppl 1.9.2 installed, and
  `args.sup_num % args.batch_size == 0` with -sup 100 -bs 200).
- `run_inference_for_epoch` and `print_and_log` are wrapped (same arguments, same results) to
  print each epoch's training and total seconds after the example's own line.

The run prints a `[shim] header {...}` line first: argv, niceness, OMP_NUM_THREADS, versions of
torch and pyro, the Pyro commit given, and the git blob id of every example file it loaded.
"""

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
import types
import urllib.error
from pathlib import Path

import torch

EXAMPLE_FILES = [
    "ss_vae_M2.py",
    "utils/__init__.py",
    "utils/custom_mlp.py",
    "utils/mnist_cached.py",
    "utils/vae_plots.py",
]


def _git_blob_id(path: Path) -> str:
    content = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


_ARRAYS: dict = {}


def _mnist_arrays(split: str):
    if split not in _ARRAYS:
        from vaelab.data import load

        pixels, labels = load("mnist", split)
        data = torch.from_numpy(pixels.reshape(-1, 28, 28).copy())
        targets = torch.from_numpy(labels.copy()).long()
        assert data.dtype == torch.uint8 and data.shape[1:] == (28, 28)
        _ARRAYS[split] = (data, targets)
    return _ARRAYS[split]


class FakeMNIST(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's interface (as torchvision ≥ 0.4 has it), with vaelab's arrays."""

    resources: list = []
    classes = [
        f"{d} - {w}" for d, w in enumerate("zero one two three four five six seven eight nine".split())
    ]

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
        self.root = root
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        if download:
            self.download()
        data, targets = _mnist_arrays("train" if train else "test")
        self.data, self.targets = data.clone(), targets.clone()

    @property
    def raw_folder(self):
        return os.path.join(self.root, self.__class__.__name__, "raw")

    def _check_exists(self):
        return True

    def download(self):
        return None

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def _unavailable(*args, **kwargs):
    raise RuntimeError("not available in the torchvision stand-in of benchmarks/pyro_ss_vae_own.py")


def install_stand_ins():
    torchvision = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    utils = types.ModuleType("torchvision.datasets.utils")
    transforms = types.ModuleType("torchvision.transforms")
    utils.download_and_extract_archive = _unavailable
    datasets.MNIST = FakeMNIST
    datasets.utils = utils
    datasets.URLError = urllib.error.URLError
    transforms.Compose = _unavailable
    transforms.ToTensor = _unavailable
    torchvision.datasets = datasets
    torchvision.transforms = transforms
    torchvision.__version__ = "0.0.0+vaelab-stand-in"
    visdom = types.ModuleType("visdom")
    visdom.Visdom = _unavailable
    sys.modules.update(
        {
            "torchvision": torchvision,
            "torchvision.datasets": datasets,
            "torchvision.datasets.utils": utils,
            "torchvision.transforms": transforms,
            "visdom": visdom,
        }
    )


def _is_main_guard(node) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def run(a):
    import pyro

    examples = Path(a.examples).resolve()
    header = dict(
        argv=sys.argv,
        cwd=os.getcwd(),
        nice=os.nice(0),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        pyro=pyro.__version__,
        pyro_commit=a.pyro_commit,
        examples=str(examples),
        git_blob_ids={f: _git_blob_id(examples / f) for f in EXAMPLE_FILES if (examples / f).exists()},
    )
    print("[shim] header " + json.dumps(header), flush=True)

    install_stand_ins()
    sys.path.insert(0, str(examples))
    path = examples / "ss_vae_M2.py"
    spec = importlib.util.spec_from_file_location("ss_vae_M2", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ss_vae_M2"] = module
    spec.loader.exec_module(module)

    start = time.time()
    clock = dict(epoch_start=None, train=None)
    run_inference_for_epoch, print_and_log = module.run_inference_for_epoch, module.print_and_log

    def timed_run_inference_for_epoch(*args, **kwargs):
        clock["epoch_start"] = time.time()
        result = run_inference_for_epoch(*args, **kwargs)
        clock["train"] = time.time() - clock["epoch_start"]
        return result

    def timed_print_and_log(logger, msg):
        print_and_log(logger, msg)
        if clock["epoch_start"] is not None:
            now = time.time()
            seconds = dict(train=clock["train"], epoch=now - clock["epoch_start"], wall=now - start)
            print("[shim] seconds " + json.dumps(seconds), flush=True)
            clock["epoch_start"] = None

    module.run_inference_for_epoch = timed_run_inference_for_epoch
    module.print_and_log = timed_print_and_log

    source = path.read_text()
    guard = next(node for node in ast.parse(source, str(path)).body if _is_main_guard(node))
    sys.argv = [str(path)] + a.example_args
    namespace = module.__dict__
    for statement in guard.body:
        if isinstance(statement, ast.Assert):
            passed = bool(eval(compile(ast.Expression(statement.test), str(path), "eval"), namespace))
            text = " ".join(ast.get_source_segment(source, statement).split())
            verdict = "passes" if passed else "FAILS (skipped)"
            print(f"[shim] assert at ss_vae_M2.py:{statement.lineno} {verdict}: {text}", flush=True)
            continue
        exec(compile(ast.Module([statement], []), str(path), "exec"), namespace)
    print("[shim] done " + json.dumps(dict(wall=time.time() - start)), flush=True)


EPOCH_LINE = re.compile(
    r"^(\d+) epoch: avg losses (.*) validation accuracy (\S+) test accuracy (\S+)\s*$",
)


def to_jsonl(a):
    header, epochs = None, []
    for line in Path(a.log).read_text().splitlines():
        if line.startswith("[shim] header "):
            header = json.loads(line[len("[shim] header ") :])
        elif line.startswith("[shim] seconds ") and epochs:
            seconds = json.loads(line[len("[shim] seconds ") :])
            epochs[-1].update(seconds=seconds["epoch"], train_seconds=seconds["train"])
        elif m := EPOCH_LINE.match(line):
            losses = [float(v) for v in m.group(2).split()]
            half = len(losses) // 2
            epochs.append(
                dict(
                    epoch=int(m.group(1)) + 1,
                    example_epoch_index=int(m.group(1)),
                    losses_sup=losses[:half],
                    losses_unsup=losses[half:],
                    valid=float(m.group(3)),
                    test=float(m.group(4)),
                )
            )
    if header is None:
        raise SystemExit(f"no '[shim] header' line in {a.log}")
    argv = header["argv"]
    env = f"OMP_NUM_THREADS={header['omp_num_threads']} " if header["omp_num_threads"] else ""
    nice = f"nice -n {header['nice']} " if header["nice"] else ""
    head = dict(
        header=True,
        date=a.date,
        command=env + nice + ".venv/bin/python " + " ".join(argv),
        pyro_commit=header["pyro_commit"],
        pyro_ppl=header["pyro"],
        torch=header["torch"],
        example_git_blob_ids=header["git_blob_ids"],
        losses="per example, as ss_vae_M2.py prints them: [TraceEnum_ELBO, aux] summed over the epoch's "
        "labelled batches / sup_num and over its unlabelled batches / (50000 - sup_num)",
        epoch="1-based (the example prints 0-based example_epoch_index)",
        log=str(Path(a.log)),
    )
    best_valid = 0.0
    with open(a.out, "w") as out:
        print(json.dumps(head), file=out)
        for record in epochs:
            if record["valid"] > best_valid:
                best_valid, test_at_best = record["valid"], record["test"]
            record.update(best_valid=best_valid, test_at_best=test_at_best)
            print(json.dumps(record), file=out)
    print(f"{len(epochs)} epochs -> {a.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run Pyro's ss_vae_M2.py on vaelab's MNIST")
    r.add_argument("--examples", required=True, help="folder with Pyro's ss_vae_M2.py and utils/")
    r.add_argument("--pyro-commit", default=None, help="the Pyro commit the files came from (recorded)")
    r.add_argument("example_args", nargs=argparse.REMAINDER, help="-- then the example's own arguments")
    j = sub.add_parser("jsonl", help="one JSON line per epoch from a run's printed log")
    j.add_argument("--log", required=True)
    j.add_argument("--out", required=True)
    j.add_argument("--date", required=True)
    a = p.parse_args()
    if a.cmd == "run":
        if a.example_args[:1] == ["--"]:
            a.example_args = a.example_args[1:]
        run(a)
    else:
        to_jsonl(a)


if __name__ == "__main__":
    main()
