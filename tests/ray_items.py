"""Gallery items for the Ray tests: each read is logged, and one read can kill the worker process once.

A module of its own (not a test module) so Ray's workers import it by name: the tests put this folder on
the workers' ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path


class WatchedItems(Sequence):
    """``items`` whose reads append the id to ``log``; reading ``die_at`` the first time ends the process."""

    def __init__(self, items, log: str, die_at: int | None = None, delay: float = 0.0) -> None:
        self.items, self.log, self.die_at, self.delay = list(items), log, die_at, delay

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if self.die_at is not None and i == self.die_at:
            marker = Path(self.log + ".died")
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # a worker lost mid-batch, as a preempted node would
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{i}\n")
        if self.delay:
            time.sleep(self.delay)
        return self.items[i]


def reads(log: str) -> list[int]:
    """The ids read, in order (empty when nothing was read)."""
    path = Path(log)
    return [int(x) for x in path.read_text(encoding="utf-8").split()] if path.exists() else []
