"""The state a reward reporter's parts share: queues, accounting, counters, options.

:class:`~synth_middleware.client.reporter.RewardReporter` (the facade: queue,
flush, stats) is a :class:`DeliveryState`; its worker
(:mod:`~synth_middleware.client._delivery`) and its outbox writer
(:mod:`~synth_middleware.client._outbox_writer`) each hold one. Everything a
``flush()`` counts moves between the counters below under ``_cond``, in one
step, so an item is never counted twice or not at all:

``_incoming`` (waiting for the writer) -> ``_writing`` -> ``_queue`` ->
``_inflight`` -> ``_settled``; rows in the outbox but not in memory are
``_backlog``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from synth_middleware._logonce import LogOnce

if TYPE_CHECKING:
    from synth_middleware.backends.base import Backend
    from synth_middleware.client._outbox import Outbox

log = logging.getLogger("synth_middleware")

ErrorCallback = Callable[[str, Any], None]
"""``on_error(what, item)`` with ``what`` one of ``dropped``, ``rejected``, ``failed``."""

RolloutHook = Callable[[Iterable[str]], None]
"""Called with the session ids of a rollout batch before it is sent."""

Item = tuple[str, Any, "int | None"]  # (kind, record, outbox row id)
WRITE_CHUNK = 5000  # most rewards per outbox transaction


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


class DeliveryState:
    """Options, counters and the queues of one reporter (see the module docs)."""

    backend: Backend
    max_queue: int
    batch_size: int
    interval: float
    max_retries: int
    backoff: float
    max_backoff: float
    on_error: ErrorCallback | None
    outbox_sync: bool
    outbox_lease: float
    before_rollouts: RolloutHook | None

    def _init_state(self) -> None:
        self._outbox: Outbox | None = None
        self._stats = ReporterStats()
        self._failures_acked = 0  # failures already reported by a flush()
        self._logged = LogOnce(log, prefix="synth-middleware: ", every=60.0)
        self._init_runtime()

    def _init_runtime(self) -> None:
        # Everything a fork must not share with the parent.
        self._queue: deque[Item] = deque()  # ready to deliver
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
        self._closed = False

    @property
    def rollout_interval(self) -> float:
        """Seconds rollout records gather while no reward is queued (the facade
        lengthens it; see ``RewardReporter.rollout_interval``)."""
        return self.interval

    def _ensure_threads(self) -> None:
        """Start the worker (and the outbox writer) if not running (the facade's)."""
        raise NotImplementedError

    # ------------------------------------------------------------ accounting
    def _pending_locked(self) -> int:
        return (
            len(self._incoming) + self._writing + len(self._queue) + self._inflight + self._backlog
        )

    def _rewards_arrived(self) -> None:
        # The worker may be gathering rollouts for up to a second: rewards go sooner.
        # Once per batch, not per reward (the flag stays set until the worker sends).
        self._rewards_queued = True
        self._wake.set()

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

    def _thread_exited(self, slot: str) -> None:
        with self._cond:
            if getattr(self, slot) is threading.current_thread():
                setattr(self, slot, None)

    # ------------------------------------------------------------ reporting
    def _report(self, what: str, item: Any) -> None:
        if self.on_error is not None:
            try:
                self.on_error(what, item)
            except Exception:
                log.exception("synth-middleware: on_error callback raised")

    def _note_error(self, text: str) -> None:
        self._stats.last_error = text[:1000]

    def _log_limited(self, what: str, msg: str, *args: object) -> None:
        # a problem that lasts (an outage, a broken outbox) shows once a minute
        self._logged.warning(what, msg, *args)
