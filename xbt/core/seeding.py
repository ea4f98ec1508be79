"""Seeded blocks on torch's global RNG, the caller's random stream left as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded to ``seed``; the caller's RNG state is restored after.

    For what draws from the global generator and cannot be given its own (module initialisation,
    PEFT's LoRA initialisation, dropout): the same seed gives the same numbers, and the caller's
    random stream (CPU and every CUDA device) is the same before and after.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
