"""Asynchronous delivery of rollouts and rewards to a backend.

``reward()`` only appends to a bounded in-memory queue (about a microsecond);
one daemon worker per backend drains it in batches (``batch_size`` items, or
whatever arrived within ``flush_interval`` seconds), retrying transient
failures (network errors, timeouts, 408, 429, 5xx) with exponential backoff
and jitter, honouring ``Retry-After``. Answers that retrying cannot fix (other
4xx) are not retried: a batch the server refused as malformed (400/413/422) is
split in halves until the offending reward is alone and rejected, so nothing
else in it is lost; anything else (401, 403, ...) is counted as failed and
logged with the server's message. Nothing is dropped silently: a full queue,
a rejected reward and a failure are each counted, logged and passed to
``on_error``. ``flush(timeout)`` waits at most ``timeout``, even when the
worker died (it is restarted), and at interpreter exit an automatic flush
waits at most ``settings.exit_flush_timeout`` seconds.

Durable outbox (``outbox=``): rewards also go to a SQLite file
(:mod:`synth_middleware.client._outbox`) and are deleted only once the backend
answered for them; leftovers of a previous run (or of a process that died)
are sent at start-up. ``reward()`` stays cheap because a writer thread commits
what arrived since its last commit in one transaction (a group commit: one
INSERT per reward in ``reward()`` itself would cost about 25 us). So with the
outbox on, **accepted means committed**: a reward is durable once the writer
committed it, normally well under a millisecond after ``reward()`` returned
(``flush()`` waits for that first); a process killed inside that window
loses those rewards. ``outbox_sync=True`` commits inside ``reward()`` instead
(about 25 us per call), for when even that window matters. Rewards are only
taken from the outbox for delivery once committed, so a row is never deleted
before it exists. When delivery gives up, the rows stay in the outbox and are
tried again ``max_backoff`` seconds later (counted as ``deferred``); when the
memory queue is full they spill to the outbox instead of being dropped.

Rollout records, which nothing waits for, gather longer: while only rollouts
are queued the worker wakes every ``ROLLOUT_GATHER`` seconds (or
``flush_interval`` if longer), so it sends bigger batches (cheaper per record,
most of a write's cost is per transaction) and competes for the app's GIL
less often. A reward arriving cuts that short; it goes, with every rollout
queued before it, within ``flush_interval``. ``flush()`` sends everything now.

Fork safety: a child process starts with empty queues and gets workers of its
own on first use; what the parent had queued stays with the parent, so
nothing is sent twice.

This module is the facade (queue, flush, stats, one reporter per backend);
the state its parts share is :mod:`~synth_middleware.client._delivery_state`,
the worker that sends batches with retries :mod:`~synth_middleware.client._delivery`,
and the group-commit writer :mod:`~synth_middleware.client._outbox_writer`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from synth_middleware import _fork
from synth_middleware.client._delivery import Delivery
from synth_middleware.client._delivery_state import (
    WRITE_CHUNK,
    DeliveryState,
    ErrorCallback,
    ReporterStats,
    RolloutHook,
)
from synth_middleware.client._outbox_writer import OutboxWriter, dest_of

if TYPE_CHECKING:
    from synth_middleware.backends.base import Backend, RewardRecord, RolloutRecord
    from synth_middleware.client._outbox import Outbox

__all__ = [
    "ROLLOUT_GATHER",
    "ErrorCallback",
    "ReporterStats",
    "RewardReporter",
    "all_reporters",
    "flush_all",
    "reporter_for",
]

log = logging.getLogger("synth_middleware")

ROLLOUT_GATHER = 1.0
"""Seconds rollout records may gather while no reward is queued (see the module docs)."""
# flush() re-checks a worker that may have died this often; delivery itself
# notifies it, so a flush returns as soon as its items are settled
_FLUSH_POLL = 0.05


class RewardReporter(DeliveryState):
    """Queue + background worker delivering to one backend.

    Args:
        backend: where rollouts and rewards go.
        max_queue: items held in memory; beyond it new items are dropped
            (counted) or, with an outbox, spilled to it.
        batch_size: most items per backend call.
        flush_interval: seconds the worker lets items gather before sending a
            partial batch (``interval`` is the older name).
        max_retries: retries of one batch before giving up (with the defaults,
            about three minutes of outage).
        backoff / max_backoff: first retry delay and its cap, in seconds; the
            delay doubles per retry, with jitter; ``Retry-After`` overrides it
            (capped at ``max_backoff``).
        on_error: ``(what, item)`` for dropped, rejected and failed items.
        outbox: an :class:`~synth_middleware.client._outbox.Outbox` or a path
            to make rewards durable; ``None`` for none.
        outbox_sync: commit each reward inside ``reward()`` (about 25 us)
            instead of in the writer's group commit.
        outbox_lease: seconds this process's claim on its outbox rows lasts
            without renewal (renewed every third of it).
        before_rollouts: called with the session ids of each rollout batch
            before it is sent (the client registers those sessions with it).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_queue: int = 100_000,
        batch_size: int = 500,
        flush_interval: float | None = None,
        interval: float = 0.05,
        max_retries: int = 12,
        backoff: float = 0.2,
        max_backoff: float = 30.0,
        on_error: ErrorCallback | None = None,
        outbox: Outbox | str | os.PathLike[str] | None = None,
        outbox_sync: bool = False,
        outbox_lease: float = 30.0,
        before_rollouts: RolloutHook | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        self.backend = backend
        self.max_queue = int(max_queue)
        self.batch_size = int(batch_size)
        self.interval = float(flush_interval if flush_interval is not None else interval)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.on_error = on_error
        self.outbox_sync = bool(outbox_sync)
        self.outbox_lease = float(outbox_lease)
        self.before_rollouts = before_rollouts
        self._init_state()
        self._delivery = Delivery(self)
        self._outbox_writer = OutboxWriter(self)
        # a forked child starts with empty queues and threads of its own
        _fork.reset_after_fork(self, "_init_runtime")
        _reporters.add(self)
        if outbox is not None:
            self.attach_outbox(outbox)

    @property
    def flush_interval(self) -> float:
        """Seconds the worker lets items gather before sending a partial batch."""
        return self.interval

    @flush_interval.setter
    def flush_interval(self, value: float) -> None:
        self.interval = float(value)

    @property
    def rollout_interval(self) -> float:
        """Seconds rollout records gather while no reward is queued:
        ``ROLLOUT_GATHER`` or ``flush_interval``, whichever is longer."""
        return max(self.interval, ROLLOUT_GATHER)

    @property
    def outbox(self) -> Outbox | None:
        """The durable outbox, if any."""
        return self._outbox

    # ------------------------------------------------------------ outbox setup
    def attach_outbox(self, outbox: Outbox | str | os.PathLike[str]) -> Outbox:
        """Make rewards durable in ``outbox`` (a path or an ``Outbox``); adopt and
        queue the leftovers of earlier runs now. Attaching twice keeps the first."""
        from synth_middleware.client._outbox import Outbox

        if self._outbox is not None:
            path = outbox.path if isinstance(outbox, Outbox) else os.fspath(outbox)
            if os.path.abspath(path) != os.path.abspath(self._outbox.path):
                log.warning(
                    "synth-middleware: rewards for this backend already use the outbox %s; "
                    "ignoring %s",
                    self._outbox.path,
                    path,
                )
            return self._outbox
        if not isinstance(outbox, Outbox):
            outbox = Outbox(outbox, dest=dest_of(self.backend), lease=self.outbox_lease)
        self._outbox = outbox
        try:
            adopted = self._outbox_writer.adopt_and_claim(ignore_not_before=True)
        except Exception as exc:
            self._note_error(f"outbox: {type(exc).__name__}: {exc}")
            log.error("synth-middleware: outbox %s unreadable: %s", outbox.path, exc)
        else:
            if adopted:
                log.warning(
                    "synth-middleware: outbox %s: resending %d reward(s) left by an earlier run",
                    outbox.path,
                    adopted,
                )
        self._ensure_threads()
        return outbox

    # ------------------------------------------------------------ producers
    def add_rollout(self, record: RolloutRecord) -> bool:
        """Queue a rollout record; ``False`` when the queue is full (counted)."""
        return self._put("rollout", record)

    def add_reward(self, record: RewardRecord) -> bool:
        """Queue a reward; ``False`` when the queue is full (counted and logged).
        With an outbox the reward is committed to it first (see the module docs)."""
        return self._put("reward", record)

    def _put(self, kind: str, item: Any) -> bool:
        # The hot path (about a microsecond): no syscall, no lock. A worker that
        # exits clears its slot, so "is there a worker" is an attribute read.
        if kind == "reward" and self._outbox is not None:
            if self.outbox_sync:
                return self._outbox_writer.put_sync(item)
            inc = self._incoming
            if len(inc) >= max(self.max_queue, WRITE_CHUNK):  # the writer fell far behind
                return self._drop(item)
            inc.append(item)
            if not self._writer_awake:
                self._wwake.set()
            if self._writer is None:
                self._ensure_threads()
            return True
        q = self._queue
        if len(q) >= self.max_queue:
            return self._drop(item)
        if not q:  # rollouts gather from the first one queued, not from the last send
            self._first_at = time.monotonic()
        q.append((kind, item, None))
        if self._thread is None:
            self._ensure_threads()
        elif len(q) == self.batch_size:  # a full batch: no need to let it gather
            self._wake.set()
        if kind == "reward" and not self._rewards_queued:
            self._rewards_arrived()
        return True

    def _ensure_threads(self) -> None:
        with self._cond:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._delivery.run, name="synth-reporter", daemon=True
                )
                self._thread.start()
            if self._outbox is not None and (self._writer is None or not self._writer.is_alive()):
                self._writer = threading.Thread(
                    target=self._outbox_writer.run, name="synth-outbox", daemon=True
                )
                self._writer.start()

    # ------------------------------------------------------------- control
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything accepted so far is settled (outbox rows waiting for a
        retry are tried now); ``True`` if all of it was delivered. Never waits past
        ``timeout``, even if the worker died (it is restarted)."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._closed:
            return self.pending == 0
        with self._cond:
            target = self._settled + self._pending_locked()
        self.wait_persisted(max(0.0, deadline - time.monotonic()))
        self._ensure_threads()
        with self._cond:
            self._flushing += 1
        try:
            self._wake.set()
            self._wwake.set()
            with self._cond:
                while self._settled < target:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, _FLUSH_POLL))
                    if self._settled >= target:
                        break  # done: leave no stale wake-up behind for the next records
                    if self._thread is None or not self._thread.is_alive():
                        self._ensure_threads()  # the worker died: start another (RLock)
                    self._wake.set()
                    if self._backlog:  # let the writer refill the queue from the outbox
                        self._wwake.set()
        finally:
            with self._cond:
                self._flushing -= 1
        # False when anything failed, was rejected or dropped since the last flush
        failures = self._stats.failed + self._stats.rejected + self._stats.dropped
        ok = failures == self._failures_acked
        self._failures_acked = failures
        return ok

    def wait_persisted(self, timeout: float = 5.0) -> bool:
        """With an outbox: wait until every reward accepted so far is committed to it
        (durable); ``True`` when it is (always ``True`` without an outbox)."""
        if self._outbox is None or self.outbox_sync:
            return True
        deadline = time.monotonic() + max(0.0, timeout)
        self._ensure_threads()
        self._wwake.set()
        with self._cond:
            while self._incoming or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.02))
                if self._writer is None or not self._writer.is_alive():
                    self._ensure_threads()
        return True

    @property
    def pending(self) -> int:
        """Items accepted but not yet settled (incl. this process's outbox backlog)."""
        return self._pending_locked()

    def stats(self) -> ReporterStats:
        """A copy of the counters (``queued`` is the current backlog)."""
        s = ReporterStats(**self._stats.as_dict())
        s.queued = self.pending
        return s

    def close(self, timeout: float = 2.0) -> bool:
        """Flush, then stop the workers (outbox rows left undelivered stay for the
        next run)."""
        ok = self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._wwake.set()
        _reporters.discard(self)
        with _by_backend_lock:
            if _by_backend.get(id(self.backend)) is self:
                del _by_backend[id(self.backend)]
        return ok


_reporters: weakref.WeakSet[RewardReporter] = weakref.WeakSet()
_by_backend: dict[int, RewardReporter] = {}
_by_backend_lock = threading.Lock()
_UPDATABLE = (
    "max_queue",
    "batch_size",
    "flush_interval",
    "max_retries",
    "backoff",
    "max_backoff",
    "on_error",
    "outbox_sync",
)


def reporter_for(backend: Backend, **options: Any) -> RewardReporter:
    """The process's reporter for ``backend`` (one worker per backend).

    Options given as ``None`` are ignored. For an existing reporter, given
    options replace the current ones and an ``outbox`` is attached if it has none.
    """
    options = {k: v for k, v in options.items() if v is not None}
    outbox = options.pop("outbox", None)
    with _by_backend_lock:
        rep = _by_backend.get(id(backend))
        if rep is None or rep.backend is not backend:
            rep = RewardReporter(backend, **options)
            _by_backend[id(backend)] = rep
        else:
            for name in _UPDATABLE:
                if name in options:
                    setattr(rep, name, options[name])
    if outbox is not None and outbox is not False:
        rep.attach_outbox(outbox)
    return rep


def all_reporters() -> list[RewardReporter]:
    """Every live reporter in this process."""
    return list(_reporters)


def flush_all(timeout: float) -> bool:
    """Flush every reporter within one overall ``timeout``."""
    deadline = time.monotonic() + timeout
    ok = True
    for rep in all_reporters():
        ok = rep.flush(max(0.0, deadline - time.monotonic())) and ok
    return ok


def _after_fork_in_child() -> None:
    # The child starts empty (each reporter resets itself, see RewardReporter): the
    # parent keeps (and sends) what it had queued, so nothing is sent twice; a lock
    # held by a parent's thread at the fork would stay held in the child.
    global _by_backend_lock
    _by_backend_lock = threading.Lock()


_fork.after_fork_in_child(_after_fork_in_child)


@atexit.register
def _flush_at_exit() -> None:
    from synth_middleware.settings import settings

    reps = [r for r in all_reporters() if r.pending]
    if not reps:
        return
    timeout = settings.exit_flush_timeout
    if not flush_all(timeout):
        left = sum(r.pending for r in reps)
        if left:
            durable = 0
            for r in reps:
                if r.outbox is not None:
                    try:
                        durable += r.outbox.count(mine=True)
                    except Exception:  # exiting anyway: the log line matters more
                        pass
            log.error(
                "synth-middleware: exiting with %d reward(s)/rollout(s) undelivered after %.1fs%s",
                left,
                timeout,
                f" ({durable} kept in the outbox for the next run)" if durable else "",
            )
