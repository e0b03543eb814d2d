"""Timing shared by the benchmarks: every contender timed in the same process, side by side."""

from __future__ import annotations

import time


def timed_all(fns: dict, repeats: int) -> dict:
    """Best-of-``repeats`` seconds per function, the functions interleaved round-robin after one
    warm-up each, so that load from other processes hits every contender alike (the minimum is the
    least noisy estimate of the true cost on a shared machine)."""
    for fn in fns.values():
        fn()
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in ts.items()}
