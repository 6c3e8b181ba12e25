"""The ``vaelab`` command: parses arguments, calls the library, prints.

Exit codes: 0 success; 1 bad input or a failed run (one line on stderr, no
traceback unless --debug); 130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM:
training writes a checkpoint at the current step first and says how to resume.
"""

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from vaelab.errors import VaelabError
from vaelab.stopping import SignalCatcher


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 1, like every other bad input."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def _chosen_model(argv) -> str | None:
    """Returns the model `argv` names (by --model, or through --preset), or None: for --help."""
    from vaelab.config import PRESETS
    from vaelab.models import MODELS

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--model")
    early.add_argument("--preset")
    known, _ = early.parse_known_args(argv)
    model = known.model or PRESETS.get(known.preset or "", {}).get("model")
    return model if model in MODELS else None


def _setting_help(f, defaults: dict) -> str:
    """Returns a flag's help: the declaration's text, its choices, and its default(s)."""
    from vaelab.settings import choices_of

    text = f.metadata["help"]
    choices = choices_of(f)
    if choices and not all(str(c) in text for c in choices):
        text += f" ({', '.join(map(str, choices))})"
    shown = {owner: _shown(value) for owner, value in defaults.items()}
    if len(set(shown.values())) == 1:
        value = next(iter(shown.values()))
        return text + ("" if value == "None" else f"; default {value}")
    by_value = {}
    for owner, value in shown.items():
        by_value.setdefault(value, []).append(owner)
    return text + "; default " + ", ".join(f"{v} ({', '.join(owners)})" for v, owners in by_value.items())


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_train(sub, argv=()):
    """Adds `vaelab train`: its own flags, then one flag per setting (see :func:`_add_settings`)."""
    from vaelab.config import PRESETS

    p = sub.add_parser(
        "train",
        help="train a model into a run directory",
        description="Train a model. Explicit flags override --config, which overrides --preset.",
        epilog="`vaelab train --model NAME --help` lists the settings of that model alone.",
    )
    p.add_argument("--preset", help=f"a published set-up: {', '.join(PRESETS)}")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (the flags' names, with _)")
    p.add_argument(
        "--detect-anomaly", action="store_true", help="PyTorch anomaly detection: name the op that made a NaN"
    )
    p.add_argument(
        "--download", action="store_true", help="download the dataset (sha256-checked) if not found"
    )
    p.add_argument("--out", help="run directory (default: runs/<dataset>-<model>-<backend>[-<elbo>]-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the pictures and report at the end")
    _add_settings(p, argv)


def _add_sweep(sub, argv=()):
    """Adds `vaelab sweep`: train's settings, with --seeds for --seed."""
    from vaelab.config import PRESETS

    p = sub.add_parser(
        "sweep",
        help="train one set-up from several seeds; summarise them as a distribution",
        description="Train DIR/seed-S for each seed (each a normal run directory), evaluate each with "
        "--iw-samples K if given, and write DIR/summary.md, summary.json and summary.png: per seed "
        "and as mean, sd, min and max, with the success rate where a threshold is named. Explicit "
        "flags override --config, which overrides --preset.",
        epilog="`vaelab sweep --resume --out DIR` continues a sweep (more --epochs, or more --seeds).",
    )
    p.add_argument("--preset", help=f"a published set-up: {', '.join(PRESETS)}")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (the flags' names, with _)")
    p.add_argument("--seeds", help="the seeds: 0,1,2 or 0-4 (with --resume: seeds to add)")
    p.add_argument("--seed", dest="single_seed", help=argparse.SUPPRESS)  # not taken for --seeds
    p.add_argument("--out", required=True, help="the sweep's folder")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    p.add_argument("--parallel", type=int, default=1, help="seeds trained at once, in processes (default 1)")
    p.add_argument(
        "--stack",
        action="store_true",
        help="train the seeds together in one process, their networks stacked (torch backend; vae, "
        "beta-vae, cvae); each seed's run is the one it would be alone, to float rounding",
    )
    p.add_argument("--iw-samples", type=int, help="evaluate each seed's log p(x) with K importance samples")
    p.add_argument(
        "--success",
        metavar="SCORE>=VALUE",
        help="what a successful seed reaches, e.g. count_accuracy>=0.95 (the air preset's by default)",
    )
    p.add_argument(
        "--download", action="store_true", help="download the dataset (sha256-checked) if not found"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_settings(p, argv, without=("seed",))


def _add_settings(p, argv=(), without=()):
    """Adds one flag per setting to `p`, from the settings' declarations.

    With a model named (--model, or a preset's), only that model's settings are
    offered, so `vaelab train --model air --help` lists what applies to AIR.
    """
    from vaelab.config import COMMON
    from vaelab.models import MODELS
    from vaelab.settings import declared, default_of, flag_name

    common = p.add_argument_group("settings of every run")
    for name, f in COMMON.items():
        if name in without:
            continue
        if f.type in (bool, "bool"):  # --tensorboard / --no-tensorboard; absent: the config's
            common.add_argument(
                flag_name(name), dest=name, action=argparse.BooleanOptionalAction, help=f.metadata["help"]
            )
            continue
        common.add_argument(
            flag_name(name), dest=name, metavar=name.upper(), help=_setting_help(f, {"": default_of(f)})
        )
    chosen = _chosen_model(argv)
    shown = [chosen] if chosen else list(MODELS)
    added = set()
    # Every model's flags are parsed (a setting of another model then gets the
    # config's one-line error naming its model); --help shows the chosen model's.
    for model in [*shown, *(m for m in MODELS if m not in shown)]:
        own = declared(MODELS[model].Settings)
        new = [name for name in own if name not in added]
        if not new:
            continue
        group = p.add_argument_group(f"settings of model {model}") if model in shown else p
        for name in new:
            owners = [m for m in shown if name in declared(MODELS[m].Settings)]
            if owners:
                defaults = {m: default_of(declared(MODELS[m].Settings)[name]) for m in owners}
                text = _setting_help(own[name], defaults)
                if not chosen and len(owners) > 1:
                    text += f" [models {', '.join(owners)}]"
            else:
                text = argparse.SUPPRESS
            group.add_argument(flag_name(name), dest=name, metavar=name.upper(), help=text)
            added.add(name)
    p.set_defaults(setting_names=sorted((set(COMMON) - set(without)) | added))


def torch_anomaly(enabled: bool):
    """Returns a context that turns on PyTorch's anomaly detection when `enabled` (slow)."""
    import contextlib

    import torch

    return torch.autograd.detect_anomaly(check_nan=True) if enabled else contextlib.nullcontext()


def _plots_and_report(run_dir, tsne_points=2000) -> None:
    from vaelab.figures import make_plots
    from vaelab.report import write_report
    from vaelab.run import load_run

    run = load_run(run_dir)
    written = make_plots(run, tsne_points=tsne_points)
    units = written.get("num_active_units")  # a VAE's; AIR has no single latent to count
    print(
        f"pictures: {Path(run_dir) / 'plots'}"
        + (f" ({units} active latent units)" if units is not None else "")
    )
    print(f"report: {write_report(run)}")


def _check_folder(out: Path) -> Path:
    """Returns `out`, a folder to write; raises VaelabError if it is a file (mkdir says only "exists")."""
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {out}: a file, not a folder")
    return out


def _cmd_train(args) -> int:
    from vaelab import distributed
    from vaelab.config import resolve
    from vaelab.train import resume_config, train

    overrides = {k: getattr(args, k) for k in args.setting_names if getattr(args, k) is not None}
    if args.resume:
        if args.out is None:
            raise VaelabError("--resume needs --out, the run directory to continue")
        if args.preset or args.config:
            # The command that started the run, with --resume added: its settings must be the run's.
            overrides = resolve(args.preset, args.config, overrides).to_dict()
        config = resume_config(args.out, overrides)
        out = Path(args.out)
    else:
        config = resolve(args.preset, args.config, overrides)
        name = f"{config.dataset}-{config.model}-{config.backend}"
        name += f"-{config.elbo}" if config.elbo else ""
        out = Path(args.out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_folder(out)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks
    if main_process:
        print(f"run directory: {out}")
    with torch_anomaly(args.detect_anomaly):
        train(config, out, resume=args.resume, progress=not args.no_progress, download=args.download)
    distributed.finish()  # under torchrun: the ranks leave together, then rank 0 draws alone
    if main_process:
        print(f"done: {out}")
        if not args.no_plots:
            _plots_and_report(out)
    return 0


def _cmd_sweep(args) -> int:
    from vaelab.config import from_mapping, plain, resolve
    from vaelab.sweep import parse_seeds, parse_success, plan, resumed_config, run_sweep

    overrides = {k: getattr(args, k) for k in args.setting_names if getattr(args, k) is not None}
    if args.single_seed is not None:
        raise VaelabError(f"--seed {args.single_seed}: a sweep trains each of --seeds (like --seeds 0-4)")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    success = parse_success(args.success) if args.success is not None else None
    if not 1 <= args.parallel <= 256:
        raise VaelabError(f"--parallel must be in [1, 256], got {args.parallel}")
    if args.stack and args.parallel > 1:
        raise VaelabError("--stack trains the seeds in one process; leave out --parallel")
    _check_folder(Path(args.out))
    if args.iw_samples is not None and args.iw_samples < 1:
        raise VaelabError(f"--iw-samples must be at least 1, got {args.iw_samples}")
    if not args.resume or args.preset or args.config:
        config = resolve(args.preset, args.config, overrides)
    else:  # only what the command line says is compared with the sweep's settings
        config = {k: plain(v) for k, v in from_mapping(overrides, "command line").items()}
    if not isinstance(config, dict):
        from vaelab.restarts import refusal as restarts_refusal

        why = restarts_refusal(config)
        if why:
            raise VaelabError(why)
    if args.stack:  # refused before anything is written
        from vaelab.fileio import read_json
        from vaelab.stacked import refusal

        if isinstance(config, dict):  # resuming: the sweep's own settings, with what is given
            path = Path(args.out) / "sweep.json"
            saved = read_json(path, default=None)
            base = None if saved is None else resumed_config(saved, config, args.out, path)
        else:
            base = config
        why = base is not None and refusal(base)
        if why:
            raise VaelabError(f"--stack: {why}; leave out --stack to train the seeds one by one")
    command = shlex.join(["vaelab", *args.argv])
    sweep = plan(args.out, config, seeds, args.resume, args.preset, args.iw_samples, success, command)
    if args.download:
        from vaelab.data import load_all

        load_all(sweep["config"]["dataset"], sweep["config"].get("data_dir"), download=True)
    summary = run_sweep(sweep, args.out, args.parallel, progress=not args.no_progress, stack=args.stack)
    print((Path(args.out) / "summary.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'summary.md'}, summary.json and summary.png")
    return 0 if summary["finished"] == len(sweep["seeds"]) else 1


def _cmd_explore(args) -> int:
    from vaelab.explore import write_explorer
    from vaelab.run import load_run

    run = load_run(args.run)
    path = write_explorer(run, args.points, args.out)
    print(f"wrote {path} (one file: open it in a browser, offline)")
    if args.out is None and (run.dir / "report.html").exists():
        from vaelab.report import write_report

        print(f"report: {write_report(run)} (now links the explorer)")
    return 0


def _cmd_plot(args) -> int:
    if args.tsne_points < 2:
        raise VaelabError(f"--tsne-points must be at least 2, got {args.tsne_points}")
    _plots_and_report(args.run, args.tsne_points)
    return 0


def _cmd_report(args) -> int:
    from vaelab.report import write_report
    from vaelab.run import load_run

    run = load_run(args.run)
    if not (Path(args.run) / "plots").is_dir():
        return _cmd_plot(args)
    print(f"report: {write_report(run)}")
    return 0


def _cmd_sample(args) -> int:
    import torch

    from vaelab.plots import image_grid, save_png
    from vaelab.run import load_run

    if not 1 <= args.n <= MAX_SAMPLES:
        raise VaelabError(f"-n must be from 1 to {MAX_SAMPLES}, got {args.n}")
    if not 0 <= args.seed < 2**32:
        raise VaelabError(f"--seed must be in [0, 2^32), got {args.seed}")
    if args.out is not None and Path(args.out).suffix.lower() != ".png":
        raise VaelabError(f"--out {args.out}: the samples are a PNG picture; name a .png file")
    run = load_run(args.run)
    torch.manual_seed(args.seed)
    labels = None if args.label is None else torch.full((args.n,), args.label, dtype=torch.long)
    images = run.model.sample(args.n, y=labels).cpu().numpy()
    label = "" if args.label is None else f"-label{args.label}"
    out = Path(args.out or Path(args.run) / f"samples-{args.n}{label}-seed{args.seed}.png")
    save_png(image_grid(images.reshape(-1, *run.image_shape)), out, scale=2)
    print(out)
    return 0


MAX_SAMPLES = 10_000  # `vaelab sample -n`: a grid of more images than this is no picture


def parse_bytes(text: str) -> int:
    """Returns a size like 2G, 512M or 1000000 in bytes; raises VaelabError naming it."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        value = -1
    if not 1 <= value < 2**62:  # NaN fails this too
        raise VaelabError(f"--max-memory must be a size like 2G, 512M or 1000000, got {text!r}")
    return int(value)


def _cmd_evaluate(args) -> int:
    import json

    from vaelab.distributed import pick_device
    from vaelab.evaluate import evaluate_run
    from vaelab.run import load_run

    if args.iw_samples is not None and args.iw_samples < 1:
        raise VaelabError(f"--iw-samples must be at least 1, got {args.iw_samples}")
    max_memory = parse_bytes(args.max_memory)
    gap = None
    given = [("--gap-images", args.gap_images), ("--gap-steps", args.gap_steps)]
    if args.amortization_gap:
        gap = {"num_images": args.gap_images or 1000, "steps": args.gap_steps or 500}
        for flag, value in given:
            if value is not None and not 1 <= value <= 10**7:
                raise VaelabError(f"{flag} must be in [1, 10^7], got {value}")
    elif any(value is not None for _, value in given):
        raise VaelabError(f"{next(f for f, v in given if v is not None)} applies with --amortization-gap")
    run = load_run(args.run, device=pick_device(args.device))
    result = evaluate_run(
        run, args.iw_samples, args.split, max_memory, args.backend, progress=not args.no_progress, gap=gap
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.split} ELBO            {result['test_elbo']:10.3f} nats")
        print(
            f"{args.split} log p(x), K={result['iw_samples']:<5d} {result['test_log_likelihood']:10.3f} nats"
        )
        if "count_accuracy" in result:
            print(f"{args.split} count accuracy  {result['count_accuracy']:10.4f}")
            print(f"{args.split} box IoU         {result['box_iou']:10.4f}")
        if gap is not None:
            n, steps = result["gap_images"], result["gap_steps"]
            print(f"amortized ELBO          {result['amortized_elbo']:10.3f} nats  (first {n} images)")
            print(f"optimized ELBO          {result['optimized_elbo']:10.3f} nats  ({steps} steps per image)")
            print(f"amortization gap        {result['amortization_gap']:10.3f} nats")
        print(f"wrote {run.dir / 'eval.json'}")
    return 0


def _cmd_runs(args) -> int:
    import json

    from vaelab.runs import describe, find, sort_rows, text_table

    roots = args.dirs or ["runs"]
    absent = [r for r in roots if not Path(r).exists()]
    if absent:
        raise VaelabError(f"{absent[0]}: no such folder")
    rows = [describe(d) for d in find(roots)]
    if args.sort:
        rows = sort_rows(rows, args.sort)
    if args.reverse:
        rows.reverse()
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no run directories under {', '.join(roots)}")
    else:
        print(text_table(rows))
    return 0


def _cmd_compare(args) -> int:
    from vaelab.compare import compare

    if args.runs:
        from vaelab.runs import compare_runs, text_table

        if args.preset is not None or args.elbo is not None:
            raise VaelabError("compare takes run directories or --preset/--elbo, not both")
        out = _check_folder(Path(args.out or Path("runs") / f"compare-runs-{time.strftime('%Y%m%d-%H%M%S')}"))
        summary = compare_runs(args.runs, out)
        print(text_table(summary["runs"]))
        print(f"wrote {out / 'compare.html'} and {out / 'compare.md'}")
        return 0
    args.preset = args.preset or "pytorch-examples"
    args.elbo = args.elbo or "trace,meanfield"

    overrides = {k: getattr(args, k) for k in ("epochs", "seed", "dataset", "device") if getattr(args, k)}
    elbos = [e.strip() for e in args.elbo.split(",") if e.strip()]
    if args.iw_samples < 1:
        raise VaelabError(f"--iw-samples must be at least 1, got {args.iw_samples}")
    out = _check_folder(Path(args.out or Path("runs") / f"compare-{args.preset}"))
    summary = compare(args.preset, elbos, out, overrides, args.iw_samples, progress=not args.no_progress)
    for row in summary["runs"]:
        print(
            f"{row['spec']:16s} test ELBO {row['test_elbo']:9.3f}  log p(x) {row['test_log_likelihood']:9.3f}"
            f"  {row['seconds_per_epoch']:6.2f} s/epoch ({row['time_ratio_to_torch']:.2f}× torch)"
        )
    print(f"wrote {out / 'compare.html'} and {out / 'compare.md'}")
    return 0


def _cmd_data_list(args) -> int:
    from vaelab.config import check_data_dir
    from vaelab.data import availability

    check_data_dir(args.data_dir)
    for row in availability(args.data_dir):
        mark = "yes" if row["available"] else "no "
        print(f"{row['name']:14s} {mark}  {row['source']}")
    return 0


def _cmd_data_make(args) -> int:
    from vaelab.data import multi_mnist

    settings = {
        "train_size": args.train_size,
        "test_size": args.test_size,
        "max_digits": args.max_digits,
        "seed": args.seed,
        "canvas": args.canvas,
    }
    multi_mnist.check_settings(**settings, flags=True)  # before loading MNIST or writing anything
    made = multi_mnist.make(**settings, progress=not args.no_progress, overlap=args.allow_overlap)
    meta = made["meta"]
    print(f"wrote {made['path']}")
    print(
        f"train {meta['train_size']}, test {meta['test_size']} canvases of "
        f"{meta['canvas']}×{meta['canvas']} with 0 to {meta['max_digits']} digits (seed {meta['seed']})"
    )
    print(f"sha256 {meta['sha256']}")
    return 0


def _cmd_data(args) -> int:
    return {"list": _cmd_data_list, "make": _cmd_data_make}[args.data_command](args)


def build_parser(argv=()) -> argparse.ArgumentParser:
    """Returns the argument parser of the ``vaelab`` command (`argv` may name a model for train's flags)."""
    parser = _Parser(
        prog="vaelab",
        description="Variational autoencoders in Pyro and in plain PyTorch, side by side.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub, argv)
    _add_sweep(sub, argv)

    p = sub.add_parser("sample", help="write a grid of samples from a trained model's prior")
    p.add_argument("run", help="run directory")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", help="PNG file (default RUN/samples-N-seedS.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws")
    p.add_argument("--label", type=int, help="draw this class (a conditional model: cvae, m2)")

    p = sub.add_parser(
        "evaluate",
        help="test ELBO and importance-sampled log-likelihood of a run",
        description="Test ELBO and the IWAE estimate of log p(x) in nats per image; writes RUN/eval.json.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--iw-samples",
        type=int,
        help="importance samples K (default: the model's: 5000; 100 for AIR, whose guide is slow; "
        "1000 for cvae-completion)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "train", "validation"],
        help="images to score (validation: the run's --validation images; train: the whole training split)",
    )
    p.add_argument("--max-memory", default="2G", help="memory budget for a chunk (default 2G)")
    p.add_argument("--backend", default="torch", choices=["torch", "pyro"], help="which estimator")
    p.add_argument(
        "--amortization-gap",
        action="store_true",
        help="also fit a Normal per image (decoder fixed, from the encoder's output) and report "
        "amortized_elbo, optimized_elbo and their gap (models with one Gaussian latent)",
    )
    p.add_argument("--gap-images", type=int, help="the split's first images to fit (default 1000)")
    p.add_argument("--gap-steps", type=int, help="Adam steps per image, lr 0.01 (default 500)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "compare",
        help="compare existing runs side by side; or train torch and each Pyro ELBO from one seed",
        description="With run directories: their curves overlaid, a table, and their pictures side by "
        "side, training nothing. With --preset: train the same network from the same seed with the "
        "hand-written objective and each chosen Pyro ELBO, evaluate each, and compare numbers, speed, "
        "code and mistakes. Either way writes DIR/compare.html and DIR/compare.md.",
    )
    p.add_argument("runs", nargs="*", help="run directories to set side by side")
    p.add_argument("--preset", help="network and training set-up (default pytorch-examples)")
    p.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    p.add_argument("--elbo", help="Pyro ELBOs, comma-separated (default trace,meanfield)")
    p.add_argument("--dataset", help="override the preset's dataset")
    p.add_argument("--seed", type=int, help="seed shared by every run (default 0)")
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--iw-samples", type=int, default=1000, help="K for log p(x) (default 1000)")
    p.add_argument("--out", help="output folder (default runs/compare-<preset>, or runs/compare-runs-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "explore",
        help="write RUN/explore.html: a latent explorer that runs the decoder in the browser",
        description="Write one self-contained page (no network, opens from disk) with the decoder's weights: "
        "a map of test images in latent space, sliders for the most active latent dimensions decoding as "
        "they move, interpolation between two latents, and a label picker for conditional models. "
        "Models vae, beta-vae, cvae, m2 and vampprior.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--points", type=int, default=1000, help="test images on the map (default 1000)")
    p.add_argument("--out", help="HTML file (default RUN/explore.html)")

    p = sub.add_parser(
        "runs",
        help="one table of the run directories under DIR (default runs/)",
        description="List every run directory under each DIR: model, backend, objective, dataset, epochs "
        "done of planned, final test ELBO, log p(x) if evaluated, the model's scores, training time, and "
        "whether it is finished, interrupted, training now or broken (and why).",
    )
    p.add_argument("dirs", nargs="*", metavar="DIR", help="folders to search (default runs/)")
    p.add_argument("--sort", metavar="FIELD", help="sort by a field: test_elbo, train_seconds, a score …")
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    for name, text in (
        ("plot", "draw every picture of a run into RUN/plots/ and rewrite RUN/report.html"),
        ("report", "write RUN/report.html (drawing the pictures first if RUN/plots/ is missing)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("run", help="run directory")
        p.add_argument(
            "--tsne-points", type=int, default=2000, help="test images in the t-SNE map (default 2000)"
        )

    data = sub.add_parser("data", help="list the datasets; make multi-mnist").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("list", help="each dataset, whether it is available, and from where")
    p.add_argument("--data-dir", help="also look for idx files in this folder")
    p = data.add_parser(
        "make",
        help="make a synthetic dataset into the data cache",
        description="Make multi-mnist: canvases of 0 to --max-digits MNIST digits, each scaled to a "
        "square of side 18-28 pixels at a random place (ink kept apart), with each digit's box and "
        "class. Written to $VAELAB_DATA/multi-mnist.npz (default ~/.cache/vaelab), replacing any "
        "there; the same settings give the same file.",
    )
    p.add_argument("name", choices=["multi-mnist"], help="dataset to make")
    p.add_argument("--train-size", type=int, default=60000, help="training canvases (default 60000)")
    p.add_argument("--test-size", type=int, default=10000, help="test canvases (default 10000)")
    p.add_argument("--max-digits", type=int, default=2, help="most digits on a canvas, 1-5 (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--canvas", type=int, default=50, help="canvas side in pixels, at least 28 (default 50)")
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="let digits' ink boxes overlap (default: kept apart, as in the AIR paper)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that every ``finally`` (temporary files) runs."""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv=None) -> int:
    """Runs the ``vaelab`` command with `argv`; returns the exit code.

    Ctrl-C (SIGINT) stops any command at once with exit code 130, SIGTERM with
    143; either way temporary files are removed on the way out (training
    writes a checkpoint at the current step first).
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # an ignored SIGTERM stays ignored
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        print("vaelab: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("vaelab: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv) -> int:
    # Building the parser imports every model: torch, Pyro, matplotlib. A
    # KeyboardInterrupt raised inside a C extension's start can turn into an
    # ImportError and a fatal error at exit (-6), or leave the interpreter to
    # kill itself with SIGINT after printing (-2); so a signal there waits for
    # the imports (about a second), then acts: exit 130 or 143 as anywhere else.
    held = SignalCatcher(second_interrupt_raises=False)
    with held:
        args = build_parser(argv).parse_args(argv)
        args.argv = [a for a in argv if a != "--debug"]
        from vaelab.train import Interrupted
    held.deliver()
    commands = {
        "train": _cmd_train,
        "sample": _cmd_sample,
        "evaluate": _cmd_evaluate,
        "plot": _cmd_plot,
        "report": _cmd_report,
        "compare": _cmd_compare,
        "sweep": _cmd_sweep,
        "runs": _cmd_runs,
        "explore": _cmd_explore,
        "data": _cmd_data,
    }
    try:
        return commands[args.command](args)
    except Interrupted as e:
        print(f"vaelab: {e}", file=sys.stderr)
        return 128 + e.signum  # 130 for SIGINT, 143 for SIGTERM
    except VaelabError as e:
        if args.debug:
            raise
        print(f"vaelab: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a vanished folder: say which file, keep it to one line
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"vaelab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
