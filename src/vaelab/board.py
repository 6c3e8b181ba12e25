"""TensorBoard's view of a run: RUN/tensorboard/, written as training goes (``--tensorboard``).

Per epoch, as scalars under the epoch number: the train and test ELBO, the
objective maximised when it is not the ELBO (``train_objective``), the
learning rate, the epoch's seconds, and the model's own scores
(``scores/…``). Every `image_every` epochs, and at the last: 16 test images
over their reconstructions, and 16 draws from the prior where the model draws.

Only the process that writes the run directory (rank 0 under torchrun)
writes here. A resumed run purges whatever was logged past its checkpoint
(a run killed between the two), so no epoch appears twice.

``tensorboard`` is an optional dependency: ``pip install 'vaelab[tensorboard]'``.
"""

from pathlib import Path

import torch

from vaelab.errors import ConfigError, VaelabError

FOLDER = "tensorboard"
SHOWN = 16  # images in each picture


def check_available() -> None:
    """Raises ConfigError with the install command if TensorBoard's writer cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install 'vaelab[tensorboard]'"
        ) from None


def image_every(epochs: int) -> int:
    """Epochs between pictures: about ten pictures over the run."""
    return max(1, epochs // 10)


class Board:
    """Writes one run's epochs to RUN/tensorboard/ (see the module's docstring)."""

    def __init__(self, run_dir, last_epoch: int, test_data, seed: int):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER), purge_step=last_epoch + 1)
        self.test_data = test_data
        pick = torch.randperm(len(test_data), generator=torch.Generator().manual_seed(seed))[:SHOWN]
        self.pick = pick.to(test_data.pixels.device)

    def epoch(self, model, line: dict, lr: float, epochs: int) -> None:
        """Logs epoch `line` (a metrics.jsonl record); pictures too when it is their epoch."""
        step = line["epoch"]
        add = self.writer.add_scalar
        curves = ("train_elbo", "test_elbo", "val_elbo", "train_objective")
        for name in curves:
            if line.get(name) is not None:
                add(name, line[name], step)
        add("learning_rate", lr, step)
        add("seconds", line["train_seconds"], step)
        for name, value in line.items():
            if name not in ("epoch", *curves, "train_seconds"):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    add(f"scores/{name}", value, step)
        if step % image_every(epochs) == 0 or step == epochs:
            self._pictures(model, step)
        self.writer.flush()

    @torch.no_grad()
    def _pictures(self, model, step: int) -> None:
        from vaelab.models.base import evaluating

        shape = self.test_data.image_shape
        # The pictures draw from a forked generator, so that training's random
        # stream (and so the run, and its exact resume) is the same with or without them.
        devices = [self.pick.device] if self.pick.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), evaluating(model):
            torch.manual_seed(step)
            batch = self.test_data.batch(self.pick)
            recon = model.reconstruct(batch)
            pair = torch.stack([batch.x, recon]).reshape(2 * len(batch.x), 1, *shape)  # truth row, then recon
            self.writer.add_images("reconstructions", _grid(pair, rows=2), step, dataformats="CHW")
            try:
                drawn = model.sample(SHOWN)
            except (VaelabError, NotImplementedError):  # a model that completes rather than draws
                return
            self.writer.add_images(
                "samples", _grid(drawn.reshape(-1, 1, *shape), rows=2), step, dataformats="CHW"
            )

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _grid(images: torch.Tensor, rows: int) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] as one (1, rows·(H+1), cols·(W+1)) picture, a pixel of space between."""
    n, _, h, w = images.shape
    cols = -(-n // rows)
    out = torch.ones(1, rows * (h + 1), cols * (w + 1))
    for i, image in enumerate(images.float().clamp(0, 1).cpu()):
        r, c = divmod(i, cols)
        out[:, r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return out
