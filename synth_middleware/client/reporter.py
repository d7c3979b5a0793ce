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
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from synth_middleware.errors import BackendError

if TYPE_CHECKING:
    from synth_middleware.backends.base import Backend, RewardRecord, RolloutRecord
    from synth_middleware.client._outbox import Outbox

log = logging.getLogger("synth_middleware")

ErrorCallback = Callable[[str, Any], None]
"""``on_error(what, item)`` with ``what`` one of ``dropped``, ``rejected``, ``failed``."""

_CHECK_PID = not hasattr(os, "register_at_fork")  # else the at-fork hook resets children
_SPLIT_STATUSES = (400, 413, 422)
_STATUSES = ("accepted", "duplicate", "rejected")  # a batch refused as malformed: find the bad item
_WRITE_CHUNK = 5000
ROLLOUT_GATHER = 1.0
# flush() re-checks a worker that may have died this often; delivery itself
# notifies it, so a flush returns as soon as its items are settled
_FLUSH_POLL = 0.05
"""Seconds rollout records may gather while no reward is queued (see the module docs)."""
_Item = tuple[str, Any, "int | None"]  # (kind, record, outbox row id)


@dataclass
class ReporterStats:
    """Counters of one reporter (summed across reporters by ``stats()``).

    ``queued``: accepted and not yet settled (memory queues, in flight, and
    this process's rows waiting in the outbox). ``sent``/``duplicates``:
    rewards the backend accepted / had already. ``rejected``: refused by the
    backend for good (bad value, unknown rollout, ...). ``failed``: given up
    after retries or on a permanent error (without an outbox: lost, but
    counted). ``dropped``: the queue was full. ``deferred``: deliveries that
    gave up but stay in the outbox to be tried again. ``persisted``: rewards
    committed to the outbox. ``outbox_errors``: rewards that could not be
    written to the outbox (delivered from memory only).
    """

    queued: int = 0
    sent: int = 0
    rollouts_sent: int = 0
    retried: int = 0
    dropped: int = 0
    failed: int = 0
    rejected: int = 0
    duplicates: int = 0
    deferred: int = 0
    persisted: int = 0
    outbox_errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict copy."""
        return asdict(self)


class RewardReporter:
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
        self._outbox: Outbox | None = None
        self._stats = ReporterStats()
        self._failures_acked = 0  # failures already reported by a flush()
        self._log_at: dict[str, float] = {}
        self._init_runtime()
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

    def _init_runtime(self) -> None:
        # Everything a fork must not share with the parent.
        self._queue: deque[_Item] = deque()  # ready to deliver
        self._incoming: deque[Any] = deque()  # rewards waiting for the outbox writer
        self._wake = threading.Event()
        self._wwake = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._ob_lock = threading.Lock()  # outbox backlog changes + their DB writes
        self._inflight = 0  # popped by the worker and not yet settled
        self._writing = 0  # popped by the writer and not yet committed
        self._backlog = 0  # this process's outbox rows not in memory
        self._settled = 0  # delivered, rejected, failed or dropped-after-accept
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._writer_awake = False
        self._last_send = 0.0
        self._first_at = 0.0  # when the queue last went from empty to not empty
        self._rewards_queued = False  # a reward waits in _queue: send within ``interval``
        self._flushing = 0  # flush() calls waiting: deferred outbox rows are wanted now
        self._pid = os.getpid()
        self._closed = False

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
            outbox = Outbox(outbox, dest=_dest_of(self.backend), lease=self.outbox_lease)
        self._outbox = outbox
        try:
            adopted = self._adopt_and_claim(ignore_not_before=True)
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

    def _adopt_and_claim(self, *, ignore_not_before: bool = False) -> int:
        ob = self._outbox
        assert ob is not None
        with self._ob_lock:
            adopted = ob.adopt()
            waiting = ob.waiting()
            with self._cond:
                self._backlog = waiting
        self._claim(ignore_not_before=ignore_not_before)
        return adopted

    def _claim(self, *, ignore_not_before: bool = False) -> int:
        ob = self._outbox
        if ob is None or self._backlog <= 0:
            return 0
        room = self.max_queue // 2 - len(self._queue)
        if room <= 0:
            return 0
        with self._ob_lock:
            rows = ob.claim(min(room, _WRITE_CHUNK), ignore_not_before=ignore_not_before)
            waiting = ob.waiting()
            with self._cond:
                self._queue.extend(("reward", rec, rid) for rid, rec in rows)
                self._backlog = waiting
                self._cond.notify_all()
        if rows:
            self._rewards_arrived()
        return len(rows)

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
        if _CHECK_PID and self._pid != os.getpid():  # no at-fork hook on this platform
            self._init_runtime()
        if kind == "reward" and self._outbox is not None:
            if self.outbox_sync:
                return self._put_durable(item)
            inc = self._incoming
            if len(inc) >= max(self.max_queue, _WRITE_CHUNK):  # the writer fell far behind
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

    def _rewards_arrived(self) -> None:
        # The worker may be gathering rollouts for up to a second: rewards go sooner.
        # Once per batch, not per reward (the flag stays set until the worker sends).
        self._rewards_queued = True
        self._wake.set()

    def _put_durable(self, item: Any) -> bool:
        ob = self._outbox
        assert ob is not None
        full = len(self._queue) >= self.max_queue
        rid: int | None = None
        try:
            with self._ob_lock:
                (rid,) = ob.add([item], queued=not full)
                if rid is not None:
                    self._stats.persisted += 1
                    if full:  # spilled: claimed from the outbox once there is room
                        with self._cond:
                            self._backlog += 1
        except Exception as exc:
            self._outbox_failed(1, exc)
        if full:
            return True if rid is not None else self._drop(item)
        q = self._queue
        q.append(("reward", item, rid))
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._ensure_threads()
        if len(q) >= self.batch_size:
            self._wake.set()
        if not self._rewards_queued:
            self._rewards_arrived()
        return True

    def _drop(self, item: Any) -> bool:
        self._stats.dropped += 1
        if self._stats.dropped == 1 or self._stats.dropped % 10_000 == 0:
            log.error(
                "synth-middleware: reward queue full (%d); %d item(s) dropped so far",
                self.max_queue,
                self._stats.dropped,
            )
        self._report("dropped", item)
        return False

    def _ensure_threads(self) -> None:
        with self._cond:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="synth-reporter", daemon=True
                )
                self._thread.start()
            if self._outbox is not None and (self._writer is None or not self._writer.is_alive()):
                self._writer = threading.Thread(
                    target=self._write_loop, name="synth-outbox", daemon=True
                )
                self._writer.start()

    # --------------------------------------------------------------- writer
    def _write_loop(self) -> None:
        """Group-commit incoming rewards to the outbox; renew the lease; adopt and
        claim waiting rows."""
        try:
            self._write_loop_body()
        finally:
            self._thread_exited("_writer")

    def _write_loop_body(self) -> None:
        every = self.outbox_lease / 3
        next_maint = time.monotonic() + every
        while not self._closed:
            self._writer_awake = False
            self._wwake.clear()
            if self._incoming:
                self._writer_awake = True
                self._commit_incoming()
                continue
            now = time.monotonic()
            if now >= next_maint:
                next_maint = now + every
                try:
                    ob = self._outbox
                    if ob is not None:
                        ob.renew()
                        self._adopt_and_claim()
                except Exception as exc:
                    self._note_error(f"outbox: {type(exc).__name__}: {exc}")
                    self._log_limited("outbox-maint", "outbox upkeep failed: %s", exc)
            elif self._backlog > 0:
                # While a flush() waits, rows deferred by an outage are due now, and
                # stay due until that flush ends (not just for the first claim).
                urgent = self._flushing > 0
                if urgent or len(self._queue) < self.max_queue // 4:
                    try:
                        self._claim(ignore_not_before=urgent)
                    except Exception as exc:
                        self._note_error(f"outbox: {type(exc).__name__}: {exc}")
            if self._incoming:
                continue
            wait = min(every, 0.5) if self._backlog > 0 else every
            self._wwake.wait(max(0.01, min(wait, next_maint - time.monotonic())))

    def _commit_incoming(self) -> None:
        ob = self._outbox
        assert ob is not None
        inc = self._incoming
        with self._cond:
            batch = [inc.popleft() for _ in range(min(len(inc), _WRITE_CHUNK))]
            self._writing = len(batch)
        full = len(self._queue) >= self.max_queue
        error: Exception | None = None
        # the move from "writing" to "queued" (or "backlog") is one step under the
        # condition, so flush() never counts an item twice or not at all
        with self._ob_lock:
            try:
                ids = ob.add(batch, queued=not full)
            except Exception as exc:
                ids, error = [None] * len(batch), exc
            stored = sum(1 for i in ids if i is not None)
            self._stats.persisted += stored
            with self._cond:
                if full:  # spilled: claimed from the outbox once there is room
                    self._backlog += stored
                    unstored = [rec for rec, rid in zip(batch, ids, strict=True) if rid is None]
                    self._settled += len(unstored)  # dropped just below
                else:
                    self._queue.extend(
                        ("reward", rec, rid) for rec, rid in zip(batch, ids, strict=True)
                    )
                    unstored = []
                self._writing = 0
                self._cond.notify_all()
        if error is not None:
            self._outbox_failed(len(batch), error)
        for rec in unstored:  # full queue and not storable: a counted drop
            self._drop(rec)
        if not full and batch and not self._rewards_queued:
            self._rewards_arrived()
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def _outbox_failed(self, n: int, exc: Exception) -> None:
        self._stats.outbox_errors += n
        self._note_error(f"outbox: {type(exc).__name__}: {exc}")
        self._log_limited(
            "outbox-write",
            "could not write %d reward(s) to the outbox (%s); delivering from memory only",
            n,
            exc,
        )

    # --------------------------------------------------------------- worker
    def _run(self) -> None:
        try:
            self._deliver_loop()
        finally:
            self._thread_exited("_thread")

    def _thread_exited(self, slot: str) -> None:
        with self._cond:
            if getattr(self, slot) is threading.current_thread():
                setattr(self, slot, None)

    def _deliver_loop(self) -> None:
        q = self._queue
        while not self._closed:
            if not q:
                self._wake.wait(self.rollout_interval)
                if not q:
                    # nothing to send: forget the wake. A wake that found records
                    # queued (flush(), a reward) must cut their gathering short.
                    self._wake.clear()
                continue
            if len(q) < self.batch_size and not self._wake.is_set():
                # at most one partial batch per interval: let it gather (a reward,
                # a full batch or flush() cuts it short by setting _wake)
                if self._rewards_queued:
                    left = self._last_send + self.interval - time.monotonic()
                else:
                    since = max(self._last_send, self._first_at)
                    left = since + self.rollout_interval - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
            self._wake.clear()
            self._last_send = time.monotonic()
            with self._cond:  # pop and mark in flight atomically for flush()
                if len(q) <= self.batch_size:
                    # everything queued goes now; a reward put after this line sets it again
                    self._rewards_queued = False
                batch = [q.popleft() for _ in range(min(len(q), self.batch_size))]
                self._inflight = len(batch)
            try:
                settled = self._deliver(batch)[0]
            except Exception as exc:  # contained: the worker must survive anything
                self._note_error(f"{type(exc).__name__}: {exc}")
                log.exception("synth-middleware: reward delivery failed")
                settled = self._give_up(batch, permanent=False)[0]
            except BaseException:
                # the thread is dying (SystemExit from a callback, ...): keep the
                # batch for the next worker, which flush() or the next item starts
                with self._cond:
                    q.extendleft(reversed(batch))
                    self._inflight = 0
                    self._cond.notify_all()
                raise
            with self._cond:
                self._settled += settled  # the deferred ones already moved to the backlog
                self._inflight = 0
                self._cond.notify_all()

    def _deliver(self, batch: list[_Item]) -> tuple[int, int]:
        """Send one batch; return (settled, deferred-to-outbox) counts."""
        rollouts = [item for kind, item, _ in batch if kind == "rollout"]
        rewards = [(item, rid) for kind, item, rid in batch if kind == "reward"]
        settled = len(rollouts)
        deferred = 0
        if rollouts:
            # the session of a call made here may not be registered yet (its first
            # refresh is still under way): register it first, so no "unknown session"
            from synth_middleware.client.session import ensure_registered

            ensure_registered(
                self.backend,
                {r.get("session_id") for r in rollouts if isinstance(r, Mapping)} - {None},
            )
            ok, _ = self._call_with_retries(lambda: self.backend.record_rollouts(rollouts))
            if ok:
                self._stats.rollouts_sent += len(rollouts)
            else:
                self._stats.failed += len(rollouts)
                for rec in rollouts:
                    self._report("failed", rec)
        if not rewards:
            return settled, deferred
        results, permanent = self._send_rewards([rec for rec, _ in rewards])
        done_ids: list[int] = []
        retry: list[tuple[Any, int | None]] = []
        for (rec, rid), res in zip(rewards, results, strict=True):
            if res is None:
                retry.append((rec, rid))
                continue
            settled += 1
            if rid is not None:
                done_ids.append(rid)
            status = res.get("status")
            if status == "accepted":
                self._stats.sent += 1
            elif status == "duplicate":
                self._stats.duplicates += 1
            else:
                self._stats.rejected += 1
                err = str(res.get("error") or "rejected")
                self._note_error(err)
                log.warning(
                    "synth-middleware: backend rejected reward for rollout %s: %s",
                    rec.get("rollout_id") if isinstance(rec, Mapping) else None,
                    err,
                )
                self._report("rejected", rec)
        if done_ids and self._outbox is not None:
            try:
                with self._ob_lock:
                    self._outbox.delete(done_ids)
            except Exception as exc:  # they would be resent later: harmless duplicates
                self._note_error(f"outbox: {type(exc).__name__}: {exc}")
                self._log_limited("outbox-delete", "could not delete delivered rows: %s", exc)
        if retry:
            s, d = self._give_up(retry, permanent=permanent)
            settled += s
            deferred += d
        return settled, deferred

    def _give_up(self, items: list[Any], *, permanent: bool) -> tuple[int, int]:
        """Items delivery gave up on: back to the outbox when they are in it, else failed.
        ``items`` holds ``(record, row_id)`` pairs or queue tuples."""
        pairs = [(it[1], it[2]) if len(it) == 3 else (it[0], it[1]) for it in items]
        ids = [rid for _, rid in pairs if rid is not None]
        kept = 0
        if ids and self._outbox is not None:
            try:
                with self._ob_lock:
                    self._outbox.defer(ids, self.max_backoff)
                    kept = len(ids)
                    with self._cond:  # from "in flight" to "backlog" in one step
                        self._inflight -= kept
                        self._backlog += kept
                self._stats.deferred += kept
                self._log_limited(
                    "deferred",
                    "delivery gave up on %d reward(s) (%s); they stay in the outbox and are "
                    "tried again in %.1fs",
                    kept,
                    self._stats.last_error,
                    self.max_backoff,
                )
            except Exception as exc:
                self._note_error(f"outbox: {type(exc).__name__}: {exc}")
                kept = 0
        lost = [(rec, rid) for rec, rid in pairs if rid is None or kept == 0]
        # ``kept`` items are already out of ``_inflight``; the caller settles ``lost``
        if lost:
            self._stats.failed += len(lost)
            log.error(
                "synth-middleware: giving up on %d item(s)%s: %s",
                len(lost),
                "" if permanent else " after retries",
                self._stats.last_error,
            )
            for rec, _ in lost:
                self._report("failed", rec)
        return len(lost), kept

    def _send_rewards(self, recs: list[Any]) -> tuple[list[dict[str, Any] | None], bool]:
        """Deliver rewards with retries; one result per input, ``None`` where delivery
        gave up. The flag says the giving up was permanent (not a timeout of retries)."""
        results: list[dict[str, Any] | None] = [None] * len(recs)
        pending = list(range(len(recs)))
        delay = self.backoff
        attempt = 0
        while pending:
            sub = [recs[i] for i in pending]
            try:
                got = self.backend.record_rewards(sub)
                if not isinstance(got, list) or len(got) != len(sub):
                    # a garbled answer says nothing about which rewards landed: send
                    # again (idempotency keys make that harmless)
                    raise BackendError("backend answered record_rewards with a malformed result")
                for i, res in zip(pending, got, strict=True):
                    if isinstance(res, dict) and res.get("status") in _STATUSES:
                        results[i] = res
                pending = [i for i in pending if results[i] is None]
                if pending:  # garbled items: unknown whether they landed; resend them
                    raise BackendError(
                        f"backend answered record_rewards with {len(pending)} malformed result(s)"
                    )
                return results, False
            except Exception as exc:
                partial = getattr(exc, "partial_results", None)
                if isinstance(partial, list) and len(partial) == len(pending):
                    for i, res in zip(pending, partial, strict=True):
                        if isinstance(res, dict) and res.get("status") in _STATUSES:
                            results[i] = res
                    pending = [i for i in pending if results[i] is None]
                retryable, retry_after = _classify(exc)
                self._note_error(f"{type(exc).__name__}: {exc}")
                if not retryable:
                    status = getattr(exc, "status", None)
                    if status in _SPLIT_STATUSES:
                        if len(pending) == 1:
                            results[pending[0]] = {"status": "rejected", "error": str(exc)}
                            return results, False
                        mid = len(pending) // 2
                        permanent = False
                        for part in (pending[:mid], pending[mid:]):
                            got_part, perm = self._send_rewards([recs[i] for i in part])
                            permanent = permanent or perm
                            for i, res in zip(part, got_part, strict=True):
                                results[i] = res
                        return results, permanent
                    return results, True
                if not pending:
                    return results, False
                if attempt >= self.max_retries or self._closed:
                    return results, False
                attempt += 1
                self._stats.retried += 1
                self._sleep(retry_after, delay)
                delay = min(delay * 2, self.max_backoff)
        return results, False

    def _call_with_retries(self, call: Callable[[], Any]) -> tuple[bool, Any]:
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                return True, call()
            except Exception as exc:
                retryable, retry_after = _classify(exc)
                self._note_error(f"{type(exc).__name__}: {exc}")
                if not retryable or attempt == self.max_retries or self._closed:
                    return False, None
                self._stats.retried += 1
                self._sleep(retry_after, delay)
                delay = min(delay * 2, self.max_backoff)
        return False, None

    def _sleep(self, retry_after: float | None, delay: float) -> None:
        if retry_after is not None:
            wait = float(retry_after) * (1.0 + 0.1 * random.random())
        else:
            wait = delay * (0.5 + random.random())  # jitter: spread the herd
        self._stop.wait(min(wait, self.max_backoff))

    def _report(self, what: str, item: Any) -> None:
        if self.on_error is not None:
            try:
                self.on_error(what, item)
            except Exception:
                log.exception("synth-middleware: on_error callback raised")

    def _note_error(self, text: str) -> None:
        self._stats.last_error = text[:1000]

    def _log_limited(self, what: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._log_at.get(what, -1e9) >= 60.0:
            self._log_at[what] = now
            log.warning("synth-middleware: " + msg, *args)

    # ------------------------------------------------------------- control
    def _pending_locked(self) -> int:
        return (
            len(self._incoming) + self._writing + len(self._queue) + self._inflight + self._backlog
        )

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything accepted so far is settled (outbox rows waiting for a
        retry are tried now); ``True`` if all of it was delivered. Never waits past
        ``timeout``, even if the worker died (it is restarted)."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._pid != os.getpid():
            self._init_runtime()
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


def _classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retryable, retry_after seconds) of a delivery error."""
    if isinstance(exc, BackendError):
        retry_after = getattr(exc, "retry_after", None)
        try:
            retry_after = None if retry_after is None else max(0.0, float(retry_after))
        except (TypeError, ValueError):
            retry_after = None
        return exc.retryable, retry_after
    return True, None  # network errors and the like are transient


def _dest_of(backend: Backend) -> str:
    """Names a backend in a shared outbox file."""
    key = getattr(backend, "outbox_key", None)
    if isinstance(key, str) and key:
        return key
    path = getattr(backend, "path", None)
    if isinstance(path, str) and path:
        return f"local:{path if path == ':memory:' else os.path.abspath(path)}"
    return f"{type(backend).__module__}.{type(backend).__qualname__}"


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
    # The child starts empty: the parent keeps (and sends) what it had queued,
    # so nothing is sent twice; the child's own rewards get a worker of its own.
    global _by_backend_lock
    _by_backend_lock = threading.Lock()
    for rep in all_reporters():
        rep._init_runtime()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
