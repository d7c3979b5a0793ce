"""What this library does in a child process after ``fork``.

Threads do not survive ``fork``, and a lock another thread held at that moment
stays held forever in the child; connections and sockets are the parent's.
Every module or object holding such state registers here a callback that
resets it; the callbacks run in the child right after the fork, before any of
the child's own code. Gunicorn ``--preload``, ``multiprocessing`` with the
fork start method and plain ``os.fork`` all go through it.

On a platform without ``os.register_at_fork`` there is no ``fork`` either
(Windows), so nothing needs resetting there.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["after_fork_in_child", "reset_after_fork"]

log = logging.getLogger("synth_middleware")

# objects whose method resets them in a child: (weak object, method name)
_objects: list[tuple[weakref.ref[object], str]] = []
_objects_lock = threading.Lock()
_prune_at = 64  # prune the dead when the list grows past this (amortised: doubles)


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every child process forked from now on (module state)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=callback)


def reset_after_fork(obj: object, method: str) -> None:
    """Call ``obj.<method>()`` in every child forked while ``obj`` is alive.

    Held weakly: registering does not keep ``obj`` alive."""
    global _prune_at
    with _objects_lock:
        if len(_objects) >= _prune_at:  # drop the dead now and then, so the list stays short
            _objects[:] = [(ref, m) for ref, m in _objects if ref() is not None]
            _prune_at = max(64, 2 * len(_objects))
        _objects.append((weakref.ref(obj), method))


def _reset_objects() -> None:
    global _objects_lock
    # the parent's lock may have been held by a thread the child does not have
    _objects_lock = threading.Lock()
    live = [(obj, m) for obj, m in ((ref(), m) for ref, m in _objects) if obj is not None]
    _objects[:] = [(weakref.ref(obj), m) for obj, m in live]
    for obj, m in live:
        try:
            getattr(obj, m)()
        except Exception:  # one object's reset must not stop the others'
            log.exception("synth-middleware: resetting %r after fork failed", obj)


after_fork_in_child(_reset_objects)
