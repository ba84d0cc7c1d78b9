"""CPU thread control: tiny models are latency-bound, so the thread count is set deliberately."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def default_threads() -> int:
    """Threads for one process: $UNLEARN_AUDIT_THREADS, else every core this process may use."""
    env = os.environ.get("UNLEARN_AUDIT_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run a block with `n` intra-op threads (default: `default_threads()`), then restore."""
    previous = torch.get_num_threads()
    n = n or default_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)
