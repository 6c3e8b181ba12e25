"""A training step recorded once as a CUDA graph and replayed: `vaelab train --cuda-graph`.

At the batch sizes the papers use (20 to 200 images), a step on a GPU does
little arithmetic and many small kernel launches: the loss, its backward and
Adam's update are a hundred or so launches, each costing the CPU more than the
GPU spends on it. A CUDA graph records the step's launches once and replays
them with one call, so the step costs about what its kernels cost.

How it stays the same training:
- The first step of a run (and of a resumed run) is taken eagerly, on a side
  stream: it creates Adam's moments and the libraries' workspaces, which a
  capture may not allocate. That step is a real step on a real batch.
- Capturing records without running, so the batch it was captured on is then
  trained by a replay. Each step copies its batch into the graph's own input
  tensors and replays; the loss comes back in the graph's output tensor.
- The noise is drawn inside the graph from torch's CUDA generator, whose
  offset each replay advances as an eager step would: a checkpoint's RNG state
  and an exact resume hold as before.
- Adam is made `capturable` (its step count on the device, the learning rate
  read when the graph is captured): the graphs are dropped at the start of
  every epoch, where the learning rate and the model's own schedule may
  change, and recorded again.
- A batch of another shape (an epoch's last, smaller batch) is one more
  graph, kept until the epoch ends.

Only a lone process with the torch backend on a CUDA device, for a model
whose step has no data-dependent shapes: see `graph_refusal`.
"""

import torch

from vaelab.errors import ConfigError
from vaelab.models.base import Loss


def graph_refusal(config, device: torch.device, world_size: int, model) -> str | None:
    """Returns why `config` cannot train `model` with --cuda-graph on `device`, or None if it can."""
    if torch.is_anomaly_enabled():  # vaelab train --detect-anomaly, or a caller's own
        return (
            "--detect-anomaly reads every gradient on the host, which a CUDA graph cannot record: "
            "drop --cuda-graph to use it"
        )
    if device.type != "cuda":
        return f"--cuda-graph needs a CUDA device; this run's device is {device.type}"
    if config.backend != "torch":
        return "--cuda-graph records the torch backend's step; backend pyro builds its trace anew each step"
    if world_size > 1:
        return "--cuda-graph trains in one process; under torchrun leave it off"
    if model.not_graphable is not None:
        return f"--cuda-graph: model {config.model}'s step {model.not_graphable}"
    return None


def eager_step(state, batch) -> Loss:
    """Takes one optimiser step on `batch`; returns its Loss, detached.

    Under torchrun each rank's loss is scaled so that DDP's gradient average
    is the gradient of the global batch's sum.
    """
    out = state.loss_fn(batch)
    optimizer = state.optimizer
    optimizer.zero_grad(set_to_none=True)
    size = state.world.size
    (out.loss * size if size > 1 else out.loss).backward()
    if state.config.clip_grad is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, state.config.clip_grad, foreach=True)
    optimizer.step()
    return Loss(out.loss.detach(), None if out.neg_elbo is None else out.neg_elbo.detach())


class GraphedStep:
    """A state's training step as CUDA graphs, one per batch shape; `reset()` drops them.

    Called as ``graph(state, batch)``: it keeps no reference to the state, so
    a state and its graphs are freed together when the state goes, not later
    by the cycle collector (which might run during another state's capture).
    """

    def __init__(self):
        self.graphs = {}  # batch shapes -> (graph, input tensors, Loss of output tensors)
        self.warm = False
        self.captures = 0  # graphs recorded so far (for tests and benchmarks)

    def reset(self) -> None:
        """Drops the recorded graphs: the next step records anew (a new epoch's rate or schedule)."""
        self.graphs.clear()

    def __call__(self, state, batch) -> Loss:
        tensors = batch.tensors()
        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        if not self.warm:
            self.warm = True
            return self._on_side_stream(lambda: eager_step(state, batch))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(state, batch)
        graph, inputs, out = entry
        for static, t in zip(inputs, tensors, strict=True):
            static.copy_(t)
        graph.replay()
        return out

    def _on_side_stream(self, work):
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            result = work()
        main.wait_stream(side)
        return result

    def _capture(self, state, batch):
        inputs = tuple(t.clone() for t in batch.tensors())
        static = type(batch)(*inputs, *batch[len(inputs) :])
        graph = torch.cuda.CUDAGraph()
        # Gradients set to None: backward allocates them inside the graph's memory pool.
        state.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph):
                out = eager_step(state, static)
        except RuntimeError as e:  # a model whose step reads the device, or a kernel graphs refuse
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"--cuda-graph: the step of model {state.config.model} could not be recorded as a CUDA "
                f"graph ({first}); train without --cuda-graph"
            ) from e
        self.captures += 1
        return graph, inputs, out
