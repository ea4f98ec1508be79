"""Which process this is when one command runs as several (``accelerate launch``, ``torchrun``), and what they share.

The same script works as a plain single process (rank 0 of 1: every helper here is then a no-op)
and under a launcher: ``world()`` asks ``accelerate.PartialState`` once the launcher's
``WORLD_SIZE`` says there are several processes (it starts the process group: NCCL on GPUs, gloo
on CPUs), and ``torch.distributed`` afterwards. The sharded embedding splits its chunks by rank
and waits at ``barrier``; stage 1 runs in every process and ``broadcast_module`` makes rank 0's
result everyone's; stage 2 wraps its trained modules in ``DistributedDataParallel``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """``(rank, number of processes)``: ``(0, 1)`` for a plain process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True accelerate runs CPU processes apart
        return state.process_index, state.num_processes
    return 0, 1


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a plain process)."""
    if world()[1] > 1:
        dist.barrier()


def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """Overwrite ``module``'s parameters and buffers with rank ``src``'s, in place; returns it."""
    if world()[1] > 1:
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src)
    return module


def mean_across(value: torch.Tensor) -> float:
    """The mean of a scalar tensor over all processes (itself in a plain process), e.g. a loss for the record."""
    value = value.detach().float().reshape(1).clone()
    n = world()[1]
    if n > 1:
        dist.all_reduce(value)
        value /= n
    return value.item()
