"""Asynchronous delivery of rollouts and rewards to a backend.

``reward()`` only appends to a bounded in-memory queue; one daemon worker per
backend drains it in batches, retrying transient failures with exponential
backoff and jitter. Nothing is dropped silently: a full queue, a rejected
reward and a permanent failure are each counted and logged. ``flush`` waits
with a timeout and never hangs, even when the worker died.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from synth_middleware.errors import BackendError

if TYPE_CHECKING:
    from synth_middleware.backends.base import Backend, RewardRecord, RolloutRecord

log = logging.getLogger("synth_middleware")

ErrorCallback = Callable[[str, Any], None]


@dataclass
class ReporterStats:
    """Counters of one reporter (summed across reporters by ``stats()``)."""

    queued: int = 0
    sent: int = 0
    rollouts_sent: int = 0
    retried: int = 0
    dropped: int = 0
    failed: int = 0
    rejected: int = 0
    duplicates: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict copy."""
        return asdict(self)


class RewardReporter:
    """Queue + background worker delivering to one backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_queue: int = 100_000,
        batch_size: int = 500,
        interval: float = 0.05,
        max_retries: int = 8,
        backoff: float = 0.2,
        max_backoff: float = 30.0,
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.backend = backend
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval = interval
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_error = on_error
        self._stats = ReporterStats()
        self._failures_acked = 0  # failures already reported by a flush()
        self._init_runtime()
        _reporters.add(self)

    def _init_runtime(self) -> None:
        # Everything a fork must not share with the parent.
        self._queue: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._inflight = 0  # items popped by the worker and not yet settled
        self._settled = 0  # items delivered or given up on
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    # ------------------------------------------------------------ producers
    def add_rollout(self, record: RolloutRecord) -> bool:
        """Queue a rollout record; ``False`` when the queue is full (counted)."""
        return self._put("rollout", record)

    def add_reward(self, record: RewardRecord) -> bool:
        """Queue a reward; ``False`` when the queue is full (counted and logged)."""
        return self._put("reward", record)

    def _put(self, kind: str, item: Any) -> bool:
        if self._pid != os.getpid():  # forked without the at-fork hook (rare)
            self._init_runtime()
        q = self._queue
        if len(q) >= self.max_queue:
            self._stats.dropped += 1
            if self._stats.dropped == 1 or self._stats.dropped % 10_000 == 0:
                log.error(
                    "synth-middleware: reward queue full (%d); %d item(s) dropped so far",
                    self.max_queue,
                    self._stats.dropped,
                )
            self._report("dropped", item)
            return False
        q.append((kind, item))
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        if len(q) >= self.batch_size:
            self._wake.set()
        return True

    def _start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="synth-reporter", daemon=True
            )
            self._thread.start()

    # --------------------------------------------------------------- worker
    def _run(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.wait(self.interval)
                self._wake.clear()
                continue
            batch: list[tuple[str, Any]] = []
            q = self._queue
            with self._cond:  # pop and mark in flight atomically for flush()
                while q and len(batch) < self.batch_size:
                    batch.append(q.popleft())
                self._inflight = len(batch)
            try:
                self._deliver(batch)
            except Exception as exc:  # contained: the worker must survive anything
                self._stats.failed += len(batch)
                self._stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("synth-middleware: reward delivery failed")
            finally:
                with self._cond:
                    self._settled += len(batch)
                    self._inflight = 0
                    self._cond.notify_all()

    def _deliver(self, batch: list[tuple[str, Any]]) -> None:
        rollouts = [item for kind, item in batch if kind == "rollout"]
        rewards = [item for kind, item in batch if kind == "reward"]
        if rollouts:
            self._with_retries(lambda: self.backend.record_rollouts(rollouts), rollouts)
            self._stats.rollouts_sent += len(rollouts)
        if rewards:
            results = self._with_retries(lambda: self._send_rewards(rewards), rewards)
            if results is None:
                return
            for rec, res in zip(rewards, results, strict=False):
                status = res.get("status") if isinstance(res, dict) else None
                if status == "accepted":
                    self._stats.sent += 1
                elif status == "duplicate":
                    self._stats.duplicates += 1
                else:
                    self._stats.rejected += 1
                    err = (res.get("error") if isinstance(res, dict) else None) or "rejected"
                    self._stats.last_error = str(err)
                    log.warning(
                        "synth-middleware: backend rejected reward for rollout %s: %s",
                        rec.get("rollout_id"),
                        err,
                    )
                    self._report("rejected", rec)

    def _send_rewards(self, rewards: list[Any]) -> list[Any]:
        results = self.backend.record_rewards(rewards)
        if not isinstance(results, list) or len(results) != len(rewards):
            # a garbled answer says nothing about which rewards landed: send
            # again (idempotency keys make that harmless)
            raise BackendError("backend answered record_rewards with a malformed result")
        return results

    def _with_retries(self, call: Callable[[], Any], items: list[Any]) -> Any:
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except BackendError as exc:
                err: Exception = exc
                retryable = exc.retryable
                retry_after = getattr(exc, "retry_after", None)
            except Exception as exc:  # network errors and the like are transient
                err, retryable, retry_after = exc, True, None
            self._stats.last_error = f"{type(err).__name__}: {err}"
            if not retryable or attempt == self.max_retries or self._closed:
                self._stats.failed += len(items)
                log.error(
                    "synth-middleware: giving up on %d item(s) after %d attempt(s): %s",
                    len(items),
                    attempt + 1,
                    self._stats.last_error,
                )
                for item in items:
                    self._report("failed", item)
                return None
            self._stats.retried += 1
            wait = retry_after if retry_after is not None else delay * (0.5 + random.random())
            time.sleep(min(float(wait), self.max_backoff))
            delay = min(delay * 2, self.max_backoff)
        return None

    def _report(self, what: str, item: Any) -> None:
        if self.on_error is not None:
            try:
                self.on_error(what, item)
            except Exception:
                log.exception("synth-middleware: on_error callback raised")

    # ------------------------------------------------------------- control
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is settled; ``True`` if all was delivered."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            target = self._settled + self._inflight + len(self._queue)
        if self._queue and (self._thread is None or not self._thread.is_alive()):
            self._start()
        self._wake.set()
        with self._cond:
            while self._settled < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
                self._wake.set()
        # False when anything failed, was rejected or dropped since the last flush
        failures = self._stats.failed + self._stats.rejected + self._stats.dropped
        ok = failures == self._failures_acked
        self._failures_acked = failures
        return ok

    @property
    def pending(self) -> int:
        """Items accepted but not yet settled."""
        return self._inflight + len(self._queue)

    def stats(self) -> ReporterStats:
        """A copy of the counters (``queued`` is the current backlog)."""
        s = ReporterStats(**self._stats.as_dict())
        s.queued = self.pending
        return s

    def close(self, timeout: float = 2.0) -> bool:
        """Flush, then stop the worker."""
        ok = self.flush(timeout)
        self._closed = True
        self._wake.set()
        return ok


_reporters: weakref.WeakSet[RewardReporter] = weakref.WeakSet()
_by_backend: dict[int, RewardReporter] = {}
_by_backend_lock = threading.Lock()


def reporter_for(backend: Backend, **options: Any) -> RewardReporter:
    """The process's reporter for ``backend`` (one worker per backend)."""
    with _by_backend_lock:
        rep = _by_backend.get(id(backend))
        if rep is None or rep.backend is not backend:
            rep = RewardReporter(backend, **options)
            _by_backend[id(backend)] = rep
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
        log.error(
            "synth-middleware: exiting with %d reward(s)/rollout(s) undelivered after %.1fs",
            left,
            timeout,
        )
