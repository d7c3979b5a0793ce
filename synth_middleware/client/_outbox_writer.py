"""The reporter's outbox writer: group commit of rewards, lease upkeep, claims.

``reward()`` with an outbox only appends to ``_incoming``; one daemon thread
per reporter (:meth:`OutboxWriter.run`) commits what arrived since its last
commit in one transaction (one INSERT per reward in ``reward()`` itself would
cost about 25 us) and then queues the rewards for delivery with their row
ids, so a row is never deleted before it exists. Between commits it renews
this process's lease on its rows, adopts the rows of processes that are gone,
and claims waiting rows (spilled, deferred, adopted) back into the memory
queue when there is room. The SQLite work itself is
:class:`~synth_middleware.client._outbox.Outbox`'s.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from synth_middleware.client._delivery_state import WRITE_CHUNK, DeliveryState

if TYPE_CHECKING:
    from synth_middleware.backends.base import Backend


class OutboxWriter:
    """Writes one reporter's rewards to its outbox (see the module docs)."""

    def __init__(self, state: DeliveryState) -> None:
        self._s = state

    # --------------------------------------------------------------- thread
    def run(self) -> None:
        """The writer thread's body."""
        try:
            self._loop()
        finally:
            self._s._thread_exited("_writer")

    def _loop(self) -> None:
        s = self._s
        every = s.outbox_lease / 3
        next_maint = time.monotonic() + every
        while not s._closed:
            s._writer_awake = False
            s._wwake.clear()
            if s._incoming:
                s._writer_awake = True
                self.commit_incoming()
                continue
            now = time.monotonic()
            if now >= next_maint:
                next_maint = now + every
                try:
                    if s._outbox is not None:
                        s._outbox.renew()
                        self.adopt_and_claim()
                except Exception as exc:
                    s._note_error(f"outbox: {type(exc).__name__}: {exc}")
                    s._log_limited("outbox-maint", "outbox upkeep failed: %s", exc)
            elif s._backlog > 0:
                # While a flush() waits, rows deferred by an outage are due now, and
                # stay due until that flush ends (not just for the first claim).
                urgent = s._flushing > 0
                if urgent or len(s._queue) < s.max_queue // 4:
                    try:
                        self.claim(ignore_not_before=urgent)
                    except Exception as exc:
                        s._note_error(f"outbox: {type(exc).__name__}: {exc}")
            if s._incoming:
                continue
            wait = min(every, 0.5) if s._backlog > 0 else every
            s._wwake.wait(max(0.01, min(wait, next_maint - time.monotonic())))

    # ------------------------------------------------------------- writing
    def commit_incoming(self) -> None:
        """Commit up to ``WRITE_CHUNK`` incoming rewards in one transaction and queue
        them (or, with the memory queue full, leave them in the outbox)."""
        s = self._s
        ob = s._outbox
        assert ob is not None
        inc = s._incoming
        with s._cond:
            batch = [inc.popleft() for _ in range(min(len(inc), WRITE_CHUNK))]
            s._writing = len(batch)
        full = len(s._queue) >= s.max_queue
        error: Exception | None = None
        # the move from "writing" to "queued" (or "backlog") is one step under the
        # condition, so flush() never counts an item twice or not at all
        with s._ob_lock:
            try:
                ids = ob.add(batch, queued=not full)
            except Exception as exc:
                ids, error = [None] * len(batch), exc
            stored = sum(1 for i in ids if i is not None)
            s._stats.persisted += stored
            with s._cond:
                if full:  # spilled: claimed from the outbox once there is room
                    s._backlog += stored
                    unstored = [rec for rec, rid in zip(batch, ids, strict=True) if rid is None]
                    s._settled += len(unstored)  # dropped just below
                else:
                    s._queue.extend(
                        ("reward", rec, rid) for rec, rid in zip(batch, ids, strict=True)
                    )
                    unstored = []
                s._writing = 0
                s._cond.notify_all()
        if error is not None:
            self.failed(len(batch), error)
        for rec in unstored:  # full queue and not storable: a counted drop
            s._drop(rec)
        if not full and batch and not s._rewards_queued:
            s._rewards_arrived()
        if len(s._queue) >= s.batch_size:
            s._wake.set()

    def put_sync(self, item: Any) -> bool:
        """``outbox_sync=True``: commit one reward inside ``reward()`` and queue it."""
        s = self._s
        ob = s._outbox
        assert ob is not None
        full = len(s._queue) >= s.max_queue
        rid: int | None = None
        try:
            with s._ob_lock:
                (rid,) = ob.add([item], queued=not full)
                if rid is not None:
                    s._stats.persisted += 1
                    if full:  # spilled: claimed from the outbox once there is room
                        with s._cond:
                            s._backlog += 1
        except Exception as exc:
            self.failed(1, exc)
        if full:
            return True if rid is not None else s._drop(item)
        q = s._queue
        q.append(("reward", item, rid))
        thread = s._thread
        if thread is None or not thread.is_alive():
            s._ensure_threads()
        if len(q) >= s.batch_size:
            s._wake.set()
        if not s._rewards_queued:
            s._rewards_arrived()
        return True

    def failed(self, n: int, exc: Exception) -> None:
        """``n`` rewards could not be written: counted; delivered from memory only."""
        s = self._s
        s._stats.outbox_errors += n
        s._note_error(f"outbox: {type(exc).__name__}: {exc}")
        s._log_limited(
            "outbox-write",
            "could not write %d reward(s) to the outbox (%s); delivering from memory only",
            n,
            exc,
        )

    # ------------------------------------------------------------- claiming
    def adopt_and_claim(self, *, ignore_not_before: bool = False) -> int:
        """Adopt the rows of owners that are gone, count this process's waiting rows
        and claim what fits in memory; return how many rows were adopted."""
        s = self._s
        ob = s._outbox
        assert ob is not None
        with s._ob_lock:
            adopted = ob.adopt()
            waiting = ob.waiting()
            with s._cond:
                s._backlog = waiting
        self.claim(ignore_not_before=ignore_not_before)
        return adopted

    def claim(self, *, ignore_not_before: bool = False) -> int:
        """Move waiting rows into the memory queue while it is under half full."""
        s = self._s
        ob = s._outbox
        if ob is None or s._backlog <= 0:
            return 0
        room = s.max_queue // 2 - len(s._queue)
        if room <= 0:
            return 0
        with s._ob_lock:
            rows = ob.claim(min(room, WRITE_CHUNK), ignore_not_before=ignore_not_before)
            waiting = ob.waiting()
            with s._cond:
                s._queue.extend(("reward", rec, rid) for rid, rec in rows)
                s._backlog = waiting
                s._cond.notify_all()
        if rows:
            s._rewards_arrived()
        return len(rows)


def dest_of(backend: Backend) -> str:
    """Names a backend in a shared outbox file."""
    key = getattr(backend, "outbox_key", None)
    if isinstance(key, str) and key:
        return key
    path = getattr(backend, "path", None)
    if isinstance(path, str) and path:
        return f"local:{path if path == ':memory:' else os.path.abspath(path)}"
    return f"{type(backend).__module__}.{type(backend).__qualname__}"
