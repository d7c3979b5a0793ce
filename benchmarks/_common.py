"""Shared helpers for the benchmarks: robust timing and report writing."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def machine() -> str:
    """One line naming the machine and interpreter."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def interleaved(
    fns: dict[str, Callable[[], object]], *, calls: int, rounds: int
) -> dict[str, list[float]]:
    """Per-call seconds for each fn, measured in alternating rounds so that
    noise on this shared machine hits every contender alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out[name].append((time.perf_counter() - t0) / calls)
    return out


def median_us(samples: list[float]) -> float:
    """Median in microseconds."""
    return statistics.median(samples) * 1e6


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
