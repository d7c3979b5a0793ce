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


def dist_version(dist: str) -> str:
    """The installed version of a distribution, or ``not installed``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    calls: int,
    rounds: int,
    cpu: bool = False,
    between: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Per-call seconds for each fn, measured in alternating rounds so that
    noise on this shared machine hits every contender alike. With ``cpu``,
    the calling thread's CPU time (excludes other threads and GIL waits).
    ``between`` runs untimed after each contender's round (e.g. a flush)."""
    clock = time.thread_time if cpu else time.perf_counter
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(calls):
                fn()
            out[name].append((clock() - t0) / calls)
            if between is not None:
                between()
    return out


def paired_median(a: list[float], b: list[float]) -> float:
    """Median of per-round differences a - b (robust to drifting machine load)."""
    diffs = sorted(x - y for x, y in zip(a, b, strict=True))
    return diffs[len(diffs) // 2]


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


def _serve_forever(port_queue: object) -> None:
    import threading

    from synth_middleware.testing import FakeOpenAIServer

    server = FakeOpenAIServer(record=False).start()  # a load run: keep no bodies
    port_queue.put(server.url)  # type: ignore[attr-defined]
    threading.Event().wait()


class ModelServerProcess:
    """A FakeOpenAIServer in its own process, so the model side does not share
    the benchmark process's GIL (as a real model provider would not)."""

    def __enter__(self) -> ModelServerProcess:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        self._proc = ctx.Process(target=_serve_forever, args=(q,), daemon=True)
        self._proc.start()
        self.url: str = q.get(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        self._proc.join(10)
