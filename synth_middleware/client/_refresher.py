"""A few daemon threads per process that refresh session caches.

Several threads rather than one so a backend that hangs for one session
cannot starve the others (callers de-duplicate work per session). Daemon
threads, not a ThreadPoolExecutor, because the executor joins its workers at
exit and a hung backend would then hang the app's shutdown. After a fork the
child starts its own threads lazily (threads do not survive ``fork``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from synth_middleware import _fork

log = logging.getLogger("synth_middleware")

_MAX_WORKERS = 4
_lock = threading.Lock()
_queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_threads: list[threading.Thread] = []
_idle = 0


def _worker() -> None:
    global _idle
    while True:
        with _lock:
            _idle += 1
        fn = _queue.get()
        with _lock:
            _idle -= 1
        try:
            fn()
        except Exception:  # contained: a refresh error must never kill the worker
            log.exception("synth-middleware: background refresh failed")


def submit(fn: Callable[[], None]) -> None:
    """Run ``fn`` on a background refresh thread."""
    _queue.put(fn)
    with _lock:
        if _idle == 0 and len(_threads) < _MAX_WORKERS:
            t = threading.Thread(target=_worker, name="synth-refresh", daemon=True)
            _threads.append(t)
            t.start()


def _after_fork_in_child() -> None:
    # the parent's threads are gone and its lock may be held by one of them
    global _lock, _queue, _threads, _idle
    _lock = threading.Lock()
    _queue = queue.SimpleQueue()
    _threads = []
    _idle = 0


_fork.after_fork_in_child(_after_fork_in_child)
