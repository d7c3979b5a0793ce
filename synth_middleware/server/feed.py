"""In-process change notifications: wake whoever waits on a session when it changes.

The engine calls :meth:`ChangeFeed.notify` after each commit (from the
writing thread: the server's writer or the optimizer's); long-poll requests, server-sent-event streams and the proxy's
candidate cache wait on or poll it. Writes by other processes sharing the
database are not seen here, so waiters also re-check the engine on a timer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ChangeFeed:
    """Per-session change counters and waiters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._everything = 0
        self._waiters: dict[str, set[_Waiter]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (streams should end)."""
        return self._closed

    def hint(self, session_id: str) -> int:
        """A number that changes whenever the session may have changed (cheap, lock-free)."""
        return self._counts.get(session_id, 0) + self._everything

    def notify(self, session_ids: Iterable[str] = (), *, everything: bool = False) -> None:
        """Mark sessions changed (``everything``: any session may have) and wake their waiters."""
        woken: list[_Waiter] = []
        with self._lock:
            if everything:
                self._everything += 1
                for waiters in self._waiters.values():
                    woken.extend(waiters)
                self._waiters.clear()
            else:
                for sid in session_ids:
                    self._counts[sid] = self._counts.get(sid, 0) + 1
                    if sid in self._waiters:
                        woken.extend(self._waiters.pop(sid))
        for loop, fut in woken:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # loop closed
                pass

    async def wait(self, session_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change of ``session_id``; True if woken."""
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            self._waiters.setdefault(session_id, set()).add(entry)
        try:
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, timeout))
            return bool(done)
        finally:
            with self._lock:
                waiters = self._waiters.get(session_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[session_id]
            if not fut.done():
                fut.cancel()

    def close(self) -> None:
        """Wake every waiter for good (server shutdown)."""
        self._closed = True
        self.notify(everything=True)
