"""The server's single writer: every engine write goes through one queue, in order.

Request handlers never write to the engine themselves. They queue a job and
await its future; the writer merges the reward jobs (and, separately, the
rollout jobs) queued by many concurrent requests into one engine call, so one
transaction, splits the engine's per-record outcomes back per request, and
resolves each job's future only after that transaction committed. A request is therefore acknowledged only once its write is durable
in the log (a process crash loses nothing acknowledged), and under load the
commit cost is shared by every request in the batch (group commit).

Two ways to run it:

* inline (default): the batch runs on the event loop, once per loop
  iteration, right after the handlers that queued it yielded. No thread
  hand-off (which costs up to the interpreter's 5 ms switch interval under
  load), at the price of blocking the loop for one transaction (typically
  0.1-1 ms).
* ``threaded=True``: a dedicated thread runs the batches, so a slow disk or a
  lock held by another process never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from synth_middleware.engine import Engine, RolloutsResult
from synth_middleware.engine.engine import (
    ROLLOUT_ACCEPTED,
    ROLLOUT_DUPLICATE,
    ROLLOUT_SUPPLEMENTED,
)
from synth_middleware.wire import RewardRecord, RewardResult, RolloutRecord

logger = logging.getLogger("synth_middleware.server")

T = TypeVar("T")

_REWARDS = "rewards"
_ROLLOUTS = "rollouts"
_CALL = "call"
_MERGEABLE = (_REWARDS, _ROLLOUTS)
_MAX_RECORDS_PER_TXN = 5_000
_MAX_JOBS_PER_DRAIN = 1_000


@dataclass(slots=True)
class RolloutBatchResult:
    """Per-request answer for a batch of rollouts (see :class:`~synth_middleware.engine.RolloutsResult`).

    ``accepted``: new rollouts stored; ``duplicates``: already stored
    (idempotent on ``rollout_id``); ``supplemented``: details for a rollout a
    reward had created; ``errors``: ``(index, reason)`` of the skipped records,
    by their index in the request; ``statuses``: each record's outcome, in order.
    Exact even when the request shared its transaction with others: a rollout
    sent by two concurrent requests is accepted for the first and a duplicate
    for the second, as if they had committed one after the other.
    """

    accepted: int = 0
    duplicates: int = 0
    supplemented: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    kind: str
    payload: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class WriterClosedError(RuntimeError):
    """The writer was stopped; no more writes are accepted."""


def _resolve(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in outcomes:
        if fut.done():  # the request went away (cancelled)
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class EngineWriter:
    """Queue of engine writes executed by one thread with group commit.

    Use from async code::

        results = await writer.record_rewards(records)
        await writer.record_rollouts(records)
        cid = await writer.call(lambda: engine.add_candidate(sid, "text"))
    """

    def __init__(self, engine: Engine, *, threaded: bool = False) -> None:
        self._engine = engine
        self._threaded = threaded
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pending: list[_Job] = []
        self._flush_scheduled = False
        self.batches = 0  # drains of the queue
        self.jobs = 0
        self.engine_calls = 0  # one transaction each: jobs / engine_calls is the grouping

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (idempotent; submitting starts it too)."""
        with self._lock:
            if self._closed:
                raise WriterClosedError("the writer is stopped")
            if not self._threaded:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="synth-engine-writer", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if self._pending:  # inline mode: the loop is going away, finish what is queued
            self._flush()
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    # -- submitting ------------------------------------------------------------

    def _submit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        if self._closed:
            raise WriterClosedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        job = _Job(kind, payload, loop, fut)
        if not self._threaded:
            self._pending.append(job)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
            return fut
        if self._thread is None:
            self.start()
        self._queue.put(job)
        return fut

    def _flush(self) -> None:
        """Inline mode: run every job queued during this loop iteration as one batch."""
        self._flush_scheduled = False
        jobs, self._pending = self._pending, []
        for start in range(0, len(jobs), _MAX_JOBS_PER_DRAIN):
            try:
                self._process(jobs[start : start + _MAX_JOBS_PER_DRAIN])
            except Exception:
                logger.exception("synth-middleware server: the writer failed a batch")

    async def record_rewards(self, records: Sequence[RewardRecord]) -> list[RewardResult]:
        """Store rewards (see :meth:`Engine.record_rewards`); one result per record."""
        if not records:
            return []
        fut = self._submit(_REWARDS, list(records))
        return await fut  # type: ignore[no-any-return]

    async def record_rollouts(
        self,
        records: Sequence[RolloutRecord],
        *,
        exact: bool = True,
    ) -> RolloutBatchResult:
        """Store rollouts (see :meth:`Engine.record_rollouts`), sharing the transaction
        with other requests' rollouts queued meanwhile; the counts are this request's.

        ``exact`` is kept for compatibility and no longer matters: the engine's
        per-record outcomes make every merged answer exact.
        """
        del exact
        if not records:
            return RolloutBatchResult()
        fut = self._submit(_ROLLOUTS, list(records))
        return await fut  # type: ignore[no-any-return]

    async def call(self, fn: Callable[[], T]) -> T:
        """Run any other engine write ``fn()`` in queue order."""
        return await self._submit(_CALL, fn)  # type: ignore[no-any-return]

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                break
            jobs = [job]
            while len(jobs) < _MAX_JOBS_PER_DRAIN:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            try:
                self._process(jobs)
            except BaseException:  # never let the writer die silently
                logger.exception("synth-middleware server: the writer failed a batch")

    def _process(self, jobs: list[_Job]) -> None:
        outcomes: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for group in _plan(jobs):
            kind = group[0].kind
            self.engine_calls += 1
            try:
                values = self._execute(kind, group)
            except Exception as exc:  # delivered to the waiting requests
                results = [(j, False, exc) for j in group]
            else:
                results = [(j, True, v) for j, v in zip(group, values, strict=True)]
            for j, ok, value in results:
                outcomes.setdefault(j.loop, []).append((j.future, ok, value))
        self.batches += 1
        self.jobs += len(jobs)
        for loop, items in outcomes.items():
            if not self._threaded:
                _resolve(items)
                continue
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _execute(self, kind: str, group: list[_Job]) -> list[Any]:
        if kind == _CALL:
            return [group[0].payload()]
        records: list[Any] = []
        for j in group:
            records.extend(j.payload)
        if kind == _REWARDS:
            results = self._engine.record_rewards(records)
            out: list[Any] = []
            start = 0
            for j in group:
                end = start + len(j.payload)
                out.append(results[start:end])
                start = end
            return out
        return _split_rollouts(self._engine.record_rollouts(records), group)


def _plan(jobs: list[_Job]) -> list[list[_Job]]:
    """The engine calls for one drain of the queue: each a list of jobs of one kind.

    Every job of a drain is unanswered, so none of them can be causally after
    another (a client that waits for its answer never has two jobs queued):
    between two ``call`` jobs, which stay barriers, all rollout jobs form one
    group and all reward jobs another (split at :data:`_MAX_RECORDS_PER_TXN`
    records), however the requests interleaved. Rollouts go first, so a
    reward that arrived with its rollout always finds it.
    """
    plan: list[list[_Job]] = []
    segment: dict[str, list[list[_Job]]] = {_ROLLOUTS: [], _REWARDS: []}
    sizes: dict[str, int] = {_ROLLOUTS: 0, _REWARDS: 0}

    def close_segment() -> None:
        for kind in (_ROLLOUTS, _REWARDS):
            plan.extend(segment[kind])
            segment[kind] = []
            sizes[kind] = 0

    for job in jobs:
        if job.kind not in _MERGEABLE:
            close_segment()
            plan.append([job])
            continue
        groups = segment[job.kind]
        n = len(job.payload)
        if not groups or sizes[job.kind] + n > _MAX_RECORDS_PER_TXN:
            groups.append([])
            sizes[job.kind] = 0
        groups[-1].append(job)
        sizes[job.kind] += n
    close_segment()
    return plan


def _split_rollouts(result: RolloutsResult, group: list[_Job]) -> list[RolloutBatchResult]:
    """Each job's share of one engine call over the concatenation of the jobs' records."""
    out: list[RolloutBatchResult] = []
    errors = sorted(result.errors)  # by index: each job's errors are one contiguous run
    k = 0
    start = 0
    for j in group:
        end = start + len(j.payload)
        statuses = result.statuses[start:end]
        res = RolloutBatchResult(statuses=statuses)
        for status in statuses:
            if status == ROLLOUT_ACCEPTED:
                res.accepted += 1
            elif status == ROLLOUT_DUPLICATE:
                res.duplicates += 1
            elif status == ROLLOUT_SUPPLEMENTED:
                res.supplemented += 1
        while k < len(errors) and errors[k][0] < end:
            index, reason = errors[k]
            res.errors.append((index - start, reason))
            k += 1
        res.skipped = len(res.errors)
        out.append(res)
        start = end
    return out
