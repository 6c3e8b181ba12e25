"""A training step at the papers' small batches: vaelab's against a bare eager loop, interleaved.

    python benchmarks/small_batch.py [--preset iwae-paper] [--batch-size 20] [--steps 300]
                                     [--rounds 5] [--threads 1] [--no-compile] [--device cuda]

At batch 20 (Burda et al.) each step's fixed cost, not arithmetic, sets the
time. Timed alternately, `--rounds` rounds of `--steps` steps each, on the
preset's network (default 784-200-200-50 tanh, dynamic binarisation), the
median per step of each:

- `bare`: the baseline: an `nn.Sequential` encoder and decoder, the ELBO with
  closed-form KL written inline, `torch.optim.Adam(fused=True)`, batches cut
  from a pre-binarised tensor: the least a hand-written loop does;
- `vaelab`: `vaelab.train.train_step` on a state built from the preset
  (its batch gather, dynamic binarisation, the model's loss, Adam);
- `vaelab-hand`: the same state with `--hand-gradients` (vaelab.handgrad:
  the gradients written out by hand, Adam's fused kernel called directly);
- `vaelab-compiled`: the same, its loss under `torch.compile` (inductor,
  `fallback_random` so the draws are eager's);
- `vaelab-hand-compiled`: `vaelab-hand` with its hand-written forward and
  backward (``_gradients``) under `torch.compile`, Adam's kernel outside it;
- `bare-compiled`: the bare loop's loss under `torch.compile`;
- with `--device cuda`, `vaelab-graph`: vaelab's step under `--cuda-graph`
  (vaelab.graphstep), each round synchronised before its clock is read.

The issue's target: vaelab's step at most 0.8× the bare eager loop's. Prints
a JSON record with the ratios to `bare` measured in the same run.
"""

import argparse
import json
import statistics
import sys
import time
from datetime import date

import torch
from torch import nn


def _bare(x_dim, z_dim, hidden, activation, lr, betas, eps, device="cpu"):
    act = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus}[activation]
    sizes = [x_dim, *hidden]
    body = [layer for a, b in zip(sizes[:-1], sizes[1:], strict=True) for layer in (nn.Linear(a, b), act())]
    encoder = nn.Sequential(*body, nn.Linear(hidden[-1], 2 * z_dim))
    sizes = [z_dim, *hidden[::-1]]
    body = [layer for a, b in zip(sizes[:-1], sizes[1:], strict=True) for layer in (nn.Linear(a, b), act())]
    decoder = nn.Sequential(*body, nn.Linear(hidden[0], x_dim))
    encoder, decoder = encoder.to(device), decoder.to(device)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)

    def loss(x):
        loc, log_scale = encoder(x).chunk(2, -1)
        scale = log_scale.exp()
        z = loc + scale * torch.randn_like(loc)
        logits = decoder(z)
        rec = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum() - log_scale.sum()
        return rec + kl

    return loss, optimizer


def config_overrides(args) -> dict:
    return {"device": args.device, "batch_size": args.batch_size}


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="iwae-paper")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: adds the --cuda-graph variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch._inductor.config.fallback_random = True

    from vaelab import handgrad
    from vaelab.config import resolve
    from vaelab.train import build_state, datasets, train_step

    config = resolve(args.preset, None, config_overrides(args))
    state = build_state(config)
    images = state.train_data
    device = images.pixels.device
    generator = torch.Generator().manual_seed(0)
    size = (args.batch_size,)
    indices = [torch.randint(len(images), size, generator=generator).to(device) for _ in range(args.steps)]
    binary = (images.pixels[: 20 * args.batch_size].float() / 255).bernoulli()
    bare_batches = [binary[torch.randint(len(binary), size, generator=generator).to(device)] for _ in indices]

    s = config.settings
    loss, optimizer = _bare(images.x_dim, s.z_dim, tuple(s.hidden), s.activation, config.lr,
                            tuple(config.adam_betas), config.adam_eps, device)  # fmt: skip

    def bare_loop(fn):
        def run():
            for x in bare_batches:
                value = fn(x)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()

        return run

    def vaelab_loop():
        for index in indices:
            train_step(state, images.batch(index))

    variants = {"bare": bare_loop(loss), "vaelab": vaelab_loop}
    hand_config = resolve(args.preset, None, {**config_overrides(args), "hand_gradients": True})
    if handgrad.refusal(hand_config, state.model) is None:  # a preset of the plain MLP VAE
        hand_state = build_state(hand_config, data=datasets(state))

        def vaelab_hand():
            for index in indices:
                train_step(hand_state, images.batch(index))

        variants["vaelab-hand"] = vaelab_hand
    if device.type == "cuda":
        graph_state = build_state(resolve(args.preset, None, {**config_overrides(args), "cuda_graph": True}))

        def vaelab_graph():
            for index in indices:
                train_step(graph_state, images.batch(index))

        variants["vaelab-graph"] = vaelab_graph
    if not args.no_compile:
        compiled_state = build_state(config)
        compiled_state.loss_fn = torch.compile(compiled_state.loss_fn)

        def vaelab_compiled():
            for index in indices:
                train_step(compiled_state, images.batch(index))

        variants["vaelab-compiled"] = vaelab_compiled
        if "vaelab-hand" in variants:
            hand_compiled = build_state(hand_config, data=datasets(state))
            hand_compiled.hand._gradients = torch.compile(hand_compiled.hand._gradients, dynamic=False)

            def vaelab_hand_compiled():
                for index in indices:
                    train_step(hand_compiled, images.batch(index))

            variants["vaelab-hand-compiled"] = vaelab_hand_compiled
        variants["bare-compiled"] = bare_loop(torch.compile(loss))
    for run in variants.values():  # warm up: compile, caches
        run()
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    record = {
        "benchmark": "small_batch",
        "date": date.today().isoformat(),
        "command": " ".join(["python benchmarks/small_batch.py", *(sys.argv[1:] if argv is None else argv)]),
        "preset": args.preset,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ms_per_step": medians,
        "ratio_to_bare": {name: m / medians["bare"] for name, m in medians.items()},
        "rounds_ms": times,
    }
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
