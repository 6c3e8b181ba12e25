"""Training on several processes or machines through torch.distributed (torchrun, DDP).

``torchrun --nproc_per_node=N -m vaelab train ...`` starts N processes with
RANK, WORLD_SIZE and LOCAL_RANK set; :func:`setup` joins them into one
process group (gloo on a CPU, NCCL on GPUs). Without torchrun it is a world
of one and nothing here does anything.

Semantics, the same for every backend:

- a step's global batch (``batch_size`` images) is split into WORLD_SIZE
  contiguous shards; rank r trains on shard r;
- each rank draws its noise from its own stream, ``seed + 10007·r``;
- each rank's loss is multiplied by WORLD_SIZE, so DDP's gradient average is
  the gradient of the summed loss over the global batch, as on one process;
- metrics are summed across ranks; rank 0 alone writes the run directory.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

RANK_SEED_STRIDE = 10007


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """Returns this rank's contiguous part of a global batch's indices."""
        return index if self.size == 1 else torch.tensor_split(index, self.size)[self.rank]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Returns `value` summed over every rank (in place when distributed)."""
        if self.size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def broadcast(self, obj):
        """Returns rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Returns `obj` from every rank, in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


ALONE = World()  # a world of one process: no torchrun


def setup(device_name: str = "auto") -> World:
    """Joins the process group torchrun describes in the environment; returns this process's World."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return ALONE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = device_name != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return World(rank, size, local_rank)


def finish() -> None:
    """Leaves the process group, every rank together (under torchrun; nothing otherwise).

    Left to the interpreter's exit, gloo's teardown could abort a rank
    (SIGABRT) when the other had already gone, seen on a loaded machine.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """Returns the seed of rank `rank`'s noise stream."""
    return seed + RANK_SEED_STRIDE * rank


class LossModule(torch.nn.Module):
    """The objective applied to the model, as a module DDP can wrap.

    DDP synchronises gradients of whatever its forward computed; the Pyro
    backend never calls the model's forward, so the loss itself is the forward.
    """

    def __init__(self, model, objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch):
        return self.objective(self.model, batch)


def pick_device(name: str) -> torch.device:
    """Returns the torch device for a config's `device` field ("auto" prefers CUDA)."""
    from vaelab.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)"
        )
    return device
