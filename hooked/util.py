"""Small helpers every package shares: batching and a temporary torch thread count.

(JSON cleaning lives next door in :mod:`hooked.jsonutil`.)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return batch_size


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """``slice(0, b), slice(b, 2b), ...`` covering ``range(n)``."""
    _check_batch_size(batch_size)
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def batched(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    """Consecutive chunks of ``items`` of at most ``batch_size`` (the last may be shorter)."""
    for sl in batch_slices(len(items), batch_size):
        yield items[sl]


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch threads, restoring the previous count after (``None``/0: leave as is).

    Small models are latency-bound: on a shared CPU one thread avoids oversubscription, and
    OpenMP threads spinning on a busy machine can make them many times slower.
    """
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
