"""Honest numbers for a trained run: test ELBO and importance-sampled log p(x).

The log-likelihood is the IWAE bound with K samples (Burda et al., 2015),
log (1/K) Σ_k p(x, z_k) / q(z_k|x) with z_k ~ q(z|x), in nats per image; with
K = 5000 it is the number papers report. It is computed two ways that a test
holds against each other on the same noise:

- :func:`hand_log_weights`: the model's own ``log_importance_weights`` (PyTorch);
- :func:`pyro_log_weights`: the Pyro program, traced with a vectorised
  ``particles`` plate, the model replayed against the guide's draws.

>>> result = evaluate_run(vaelab.load_run("runs/demo"), iw_samples=5000)
>>> result["test_log_likelihood"]
"""

import contextlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from vaelab import amortization, data
from vaelab.bounds import site_log_prob_sum
from vaelab.data.batches import Batch, ImageBatches
from vaelab.errors import ConfigError, choices_error
from vaelab.fileio import write_json
from vaelab.models.base import as_batch, dataset_elbo
from vaelab.stopping import SignalCatcher

GIB = 2**30
IW_BACKENDS = ("torch", "pyro")


def hand_log_weights(model, batch: Batch, num_samples: int, generator=None) -> torch.Tensor:
    """Returns log p(x, z) - log q(z|x) for `num_samples` guide draws: (num_samples, batch)."""
    return model.log_importance_weights(as_batch(batch), num_samples, generator=generator)


def _traced_log_weights(model, guide, batch) -> torch.Tensor:
    """Returns Σ log p − Σ log q over the sites of one guide trace and the replayed model."""
    guide_trace = poutine.trace(guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    return site_log_prob_sum(model_trace) - site_log_prob_sum(guide_trace)


def pyro_log_weights(model, batch: Batch, num_samples: int) -> torch.Tensor:
    """The same log-weights from the Pyro program: (num_samples, batch).

    The guide runs once inside a ``particles`` plate of size `num_samples`
    (dim -2, outside the data plate), the model is replayed against its
    draws, and each site's log-probability is kept per image. A model whose
    program does not broadcast over particles (AIR's recurrent guide) is
    traced once per particle instead. A weighted model's program is taken
    unweighted (the β-VAE's β = 1): these are the weights of log p(x).
    """
    batch = as_batch(batch)
    with model.unweighted():  # log p(x, z) - log q(z|x) itself, whatever weights training used
        if not model.vectorised_particles:
            return torch.stack(
                [_traced_log_weights(model.model, model.guide, batch) for _ in range(num_samples)]
            )
        return _vectorised_log_weights(model, batch, num_samples)


def _vectorised_log_weights(model, batch: Batch, num_samples: int) -> torch.Tensor:
    def vectorised(fn):
        def run(*args):
            with pyro.plate("particles", num_samples, dim=-2):
                return fn(*args)

        return run

    log_w = _traced_log_weights(vectorised(model.model), vectorised(model.guide), batch)
    return log_w.reshape(num_samples, batch.x.shape[0])


# On a CPU, chunks of about this many (image, sample) rows keep the decoder's
# output in cache; bigger chunks ran at half the speed (benchmarks/iwae_eval.py).
CPU_ROWS = 2500


def plan_chunks(model, num_images: int, iw_samples: int, max_memory: int, max_rows=None) -> tuple[int, int]:
    """Returns (images per batch, samples per chunk) within `max_memory` bytes and `max_rows` rows.

    All K samples of several images at once when they fit, else chunks of
    samples of one image at a time.
    """
    rows = max(1, max_memory // (4 * model.floats_per_particle()))
    if max_rows is not None:
        rows = min(rows, max_rows)
    if rows >= iw_samples:
        return max(1, min(num_images, rows // iw_samples)), iw_samples
    return 1, rows


def _batch_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def _batch_log_likelihood(batch, iw_samples, sample_chunk, log_weights, stop=None) -> torch.Tensor:
    """Returns log (1/K) Σ_k w_k for each image of `batch`, log-sum-exp running across chunks.

    Returns early (with a partial sum nobody reads) once `stop` is set.
    """
    x = batch.x
    total = torch.full((x.shape[0],), -math.inf, device=x.device)
    for done in range(0, iw_samples, sample_chunk):
        if stop is not None and stop.is_set():
            break
        chunk = log_weights(batch, min(sample_chunk, iw_samples - done))
        total = torch.logaddexp(total, torch.logsumexp(chunk, dim=0))
    return total - math.log(iw_samples)


@contextlib.contextmanager
def _flushing_denormals():
    """Treats denormal floats as zero inside, as x86 can do in hardware; restores the default after.

    A trained decoder's large logits make exp(-|logit|) underflow into denormals,
    which the CPU computes many times slower: K=5000 over 1,000 test images of a
    trained pyro-tutorial network took 49.6 s, and 37.7-41.2 s flushing them, with
    the same mean log p(x) to 1e-3 (benchmarks/denormals.py).
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def _run_all(score, count: int, workers: int, stop: threading.Event) -> None:
    """Runs score(0 … count-1) on `workers` threads; on SIGINT or SIGTERM, stops them, then raises.

    While the threads run, the main thread waits on their futures' locks. A
    signal handler that raises there can leave a lock half-taken, and the
    workers then wait on it for ever (SIGTERM hung 3 stops in 12 so). So here
    the signals only set `stop`: the workers skip what is left and end at their
    next chunk, and the signal is then handed to the handler it had before
    (KeyboardInterrupt for Ctrl-C; the command's exit for SIGTERM).
    """
    caught = SignalCatcher(on_signal=stop.set, second_interrupt_raises=False)
    with caught:
        pool = None
        try:
            pool = ThreadPoolExecutor(workers)
            pending = {pool.submit(score, index) for index in range(count)}
            while pending and not caught():
                done, pending = futures_wait(pending, timeout=0.1)
                for future in done:
                    future.result()  # a worker's error, raised here
        except BaseException:
            stop.set()
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    caught.deliver()


@contextlib.contextmanager
def _single_threaded_ops():
    """Runs torch ops on one thread each, so Python threads can share the cores.

    For these many small ops, one image per core beats splitting each op
    across cores (benchmarks/results/README.md, the log-likelihood's section).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def log_likelihood(
    model,
    images: ImageBatches,
    iw_samples=5000,
    max_memory=2 * GIB,
    backend="torch",
    seed=0,
    progress=True,
    plan=None,
) -> torch.Tensor:
    """Returns the IWAE estimate of log p(x) for each image, (N,), in nats.

    Batched over images and over samples in chunks that fit `max_memory`
    (or the (images, samples) `plan` given); the log-sum-exp runs across
    chunks, so any K fits. Batch i's noise comes from seed·1000003 + i, the
    same for both backends, so they can be compared draw for draw.
    """
    if iw_samples < 1:
        raise ConfigError(f"iw_samples must be at least 1, got {iw_samples}")
    if backend not in IW_BACKENDS:
        raise choices_error("backend", backend, IW_BACKENDS)
    was_training = model.training
    model.eval()
    device = images.pixels.device
    on_cpu = device.type == "cpu"
    # Threads need a generator each; a model that draws from torch's global one
    # (AIR, through torch.distributions) is scored in one thread, over batches
    # as large as memory allows (the cache-sized chunks are for the VAE's threads).
    own_generator = model.samples_with_generator
    image_batch, sample_chunk = plan or plan_chunks(
        model, len(images), iw_samples, max_memory, max_rows=CPU_ROWS if on_cpu and own_generator else None
    )
    starts = list(range(0, len(images), image_batch))
    with torch.inference_mode():
        out = torch.empty(len(images), device=device)
    bar = tqdm(total=len(images), desc=f"log p(x), K={iw_samples}", unit="img", disable=not progress)

    stop = threading.Event()  # set on Ctrl-C: the workers stop at their next chunk

    def score(index):
        if stop.is_set():
            return
        start = starts[index]
        batch = images.batch(torch.arange(start, min(start + image_batch, len(images)), device=device))
        if model.hides_test_labels:  # log p(x) of the images alone
            batch = Batch(batch.x)
        if backend == "torch" and own_generator:
            generator = torch.Generator(device=device).manual_seed(_batch_seed(seed, index))

            def log_weights(x, n):
                return hand_log_weights(model, x, n, generator)
        elif backend == "torch":  # the model draws from the global generator, forked below
            torch.manual_seed(_batch_seed(seed, index))

            def log_weights(x, n):
                return hand_log_weights(model, x, n)
        else:  # Pyro samples from the global generator, forked below
            torch.manual_seed(_batch_seed(seed, index))

            def log_weights(x, n):
                return pyro_log_weights(model, x, n)

        # Grad mode is per thread: the decorator above does not reach the workers.
        with torch.inference_mode():
            out[start : start + len(batch.x)] = _batch_log_likelihood(
                batch, iw_samples, sample_chunk, log_weights, stop
            )
        bar.update(len(batch.x))

    if backend == "torch" and own_generator and on_cpu and torch.get_num_threads() > 1 and len(starts) > 1:
        with _flushing_denormals(), _single_threaded_ops() as workers:
            _run_all(score, len(starts), workers, stop)
    else:
        with _flushing_denormals(), torch.random.fork_rng(devices=[] if on_cpu else [device]):
            for index in range(len(starts)):
                score(index)
    bar.close()
    model.train(was_training)
    return out


def evaluate_run(
    run,
    iw_samples=None,
    split="test",
    max_memory=2 * GIB,
    backend="torch",
    progress=True,
    device=None,
    gap=None,
) -> dict:
    """Evaluates `run` on `split`; writes and returns ``RUN/eval.json``.

    Fields: test_elbo, test_log_likelihood (nats per image), iw_samples (None:
    the model's default), split, binarize, backend, seconds, and the model's
    own evaluation scores (AIR on multi-mnist: count_accuracy, count_confusion
    and box_iou). "test_" names the quantity, `split` says on which images it was measured.
    `gap`: {"num_images", "steps"} to measure the amortisation gap too
    (:func:`vaelab.amortization.amortization_gap`, by `backend`): amortized_elbo,
    optimized_elbo, amortization_gap and its settings.
    """
    config, model = run.config, run.model
    if gap is not None:
        amortization.check_model(model, config.model)
    device = device or next(model.parameters()).device
    if split == "validation":  # the training split's last images, held out by --validation
        if not config.validation:
            raise ConfigError(f"{run.dir}: has no validation split (it was trained without --validation N)")
        images = data.validation_split(
            config.dataset, config.validation, config.binarize, device, config.data_dir
        )
    else:
        images = data.evaluation_split(config.dataset, split, config.binarize, device, config.data_dir)
    if iw_samples is None:
        iw_samples = model.default_iw_samples
    start = time.perf_counter()
    elbo = dataset_elbo(model, images, config.eval_batch_size, seed=config.seed)
    ll = log_likelihood(model, images, iw_samples, max_memory, backend, progress=progress)
    scores = model.evaluation_scores(images, split, config.eval_batch_size)
    if gap is not None:
        scores.update(amortization.amortization_gap(model, images, backend=backend, seed=config.seed, **gap))
    result = {
        "test_elbo": elbo,
        "test_log_likelihood": ll.mean().item(),
        "iw_samples": iw_samples,
        "split": split,
        "binarize": run.config.binarize,
        "backend": backend,
        "num_images": len(images),
        **scores,
        "seconds": time.perf_counter() - start,
    }
    write_json(Path(run.dir) / "eval.json", result)
    return result
