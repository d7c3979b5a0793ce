"""The reporter's worker: batches from the queue to the backend, with retries.

One daemon thread per reporter runs :meth:`Delivery.run`. It lets a partial
batch gather for ``flush_interval`` (rollouts alone for longer, see the
reporter's docs), then sends it: rollouts first (their sessions registered
before), then rewards. Transient failures (network errors, timeouts, 408,
429, 5xx) are retried by tenacity with exponential backoff and jitter,
honouring ``Retry-After`` (:class:`synth_middleware._retry.BackoffWait`); a
``close()`` cuts the wait short. A batch the server refused as malformed
(400/413/422) is split in halves until the offending reward is alone and
rejected, so nothing else in it is lost; other 4xx are permanent. What
delivery gives up on goes back to the outbox when it is there, else it is
counted as failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import tenacity

from synth_middleware._retry import BackoffWait
from synth_middleware.client._delivery_state import DeliveryState, Item
from synth_middleware.errors import BackendError

log = logging.getLogger("synth_middleware")

SPLIT_STATUSES = (400, 413, 422)
"""Statuses that refuse a batch as malformed: split it to find the bad item."""
_STATUSES = ("accepted", "duplicate", "rejected")


def classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retryable, retry_after seconds) of a delivery error."""
    if isinstance(exc, BackendError):
        retry_after = getattr(exc, "retry_after", None)
        try:
            retry_after = None if retry_after is None else max(0.0, float(retry_after))
        except (TypeError, ValueError):
            retry_after = None
        return exc.retryable, retry_after
    return True, None  # network errors and the like are transient


def _retryable(exc: BaseException) -> bool:
    # only an Exception: SystemExit and the like end the worker, as they should
    return isinstance(exc, Exception) and classify(exc)[0]


def _retry_after(exc: BaseException) -> float | None:
    return classify(exc)[1]



class _Closed(tenacity.stop.stop_base):
    """Stops retrying once the reporter is closed (close() also cuts the sleep short)."""

    def __init__(self, state: DeliveryState) -> None:
        self._s = state

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return bool(self._s._closed)

class Delivery:
    """Sends one reporter's queued items (see the module docs)."""

    def __init__(self, state: DeliveryState) -> None:
        self._s = state

    # --------------------------------------------------------------- worker
    def run(self) -> None:
        """The worker thread's body."""
        try:
            self._loop()
        finally:
            self._s._thread_exited("_thread")

    def _loop(self) -> None:
        s = self._s
        q = s._queue
        while not s._closed:
            if not q:
                s._wake.wait(s.rollout_interval)
                if not q:
                    # nothing to send: forget the wake. A wake that found records
                    # queued (flush(), a reward) must cut their gathering short.
                    s._wake.clear()
                continue
            if len(q) < s.batch_size and not s._wake.is_set():
                # at most one partial batch per interval: let it gather (a reward,
                # a full batch or flush() cuts it short by setting _wake)
                if s._rewards_queued:
                    left = s._last_send + s.interval - time.monotonic()
                else:
                    since = max(s._last_send, s._first_at)
                    left = since + s.rollout_interval - time.monotonic()
                if left > 0:
                    s._wake.wait(left)
            s._wake.clear()
            s._last_send = time.monotonic()
            with s._cond:  # pop and mark in flight atomically for flush()
                if len(q) <= s.batch_size:
                    # everything queued goes now; a reward put after this line sets it again
                    s._rewards_queued = False
                batch = [q.popleft() for _ in range(min(len(q), s.batch_size))]
                s._inflight = len(batch)
            try:
                settled = self.deliver(batch)[0]
            except Exception as exc:  # contained: the worker must survive anything
                s._note_error(f"{type(exc).__name__}: {exc}")
                log.exception("synth-middleware: reward delivery failed")
                settled = self.give_up(batch, permanent=False)[0]
            except BaseException:
                # the thread is dying (SystemExit from a callback, ...): keep the
                # batch for the next worker, which flush() or the next item starts
                with s._cond:
                    q.extendleft(reversed(batch))
                    s._inflight = 0
                    s._cond.notify_all()
                raise
            with s._cond:
                s._settled += settled  # the deferred ones already moved to the backlog
                s._inflight = 0
                s._cond.notify_all()

    # ------------------------------------------------------------- one batch
    def deliver(self, batch: list[Item]) -> tuple[int, int]:
        """Send one batch; return (settled, deferred-to-outbox) counts."""
        s = self._s
        rollouts = [item for kind, item, _ in batch if kind == "rollout"]
        rewards = [(item, rid) for kind, item, rid in batch if kind == "reward"]
        settled = len(rollouts)
        deferred = 0
        if rollouts:
            hook = s.before_rollouts
            if hook is not None:
                # the session of a call made here may not be registered yet (its first
                # refresh is still under way): register it first, so no "unknown session"
                hook(
                    {
                        sid
                        for r in rollouts
                        if isinstance(r, Mapping) and isinstance(sid := r.get("session_id"), str)
                    }
                )
            ok, _ = self.call_with_retries(lambda: s.backend.record_rollouts(rollouts))
            if ok:
                s._stats.rollouts_sent += len(rollouts)
            else:
                s._stats.failed += len(rollouts)
                for rec in rollouts:
                    s._report("failed", rec)
        if not rewards:
            return settled, deferred
        results, permanent = self.send_rewards([rec for rec, _ in rewards])
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
                s._stats.sent += 1
            elif status == "duplicate":
                s._stats.duplicates += 1
            else:
                s._stats.rejected += 1
                err = str(res.get("error") or "rejected")
                s._note_error(err)
                log.warning(
                    "synth-middleware: backend rejected reward for rollout %s: %s",
                    rec.get("rollout_id") if isinstance(rec, Mapping) else None,
                    err,
                )
                s._report("rejected", rec)
        if done_ids and s._outbox is not None:
            try:
                with s._ob_lock:
                    s._outbox.delete(done_ids)
            except Exception as exc:  # they would be resent later: harmless duplicates
                s._note_error(f"outbox: {type(exc).__name__}: {exc}")
                s._log_limited("outbox-delete", "could not delete delivered rows: %s", exc)
        if retry:
            gave_up, kept = self.give_up(retry, permanent=permanent)
            settled += gave_up
            deferred += kept
        return settled, deferred

    def give_up(self, items: list[Any], *, permanent: bool) -> tuple[int, int]:
        """Items delivery gave up on: back to the outbox when they are in it, else failed.
        ``items`` holds ``(record, row_id)`` pairs or queue tuples."""
        s = self._s
        pairs = [(it[1], it[2]) if len(it) == 3 else (it[0], it[1]) for it in items]
        ids = [rid for _, rid in pairs if rid is not None]
        kept = 0
        if ids and s._outbox is not None:
            try:
                with s._ob_lock:
                    s._outbox.defer(ids, s.max_backoff)
                    kept = len(ids)
                    with s._cond:  # from "in flight" to "backlog" in one step
                        s._inflight -= kept
                        s._backlog += kept
                s._stats.deferred += kept
                s._log_limited(
                    "deferred",
                    "delivery gave up on %d reward(s) (%s); they stay in the outbox and are "
                    "tried again in %.1fs",
                    kept,
                    s._stats.last_error,
                    s.max_backoff,
                )
            except Exception as exc:
                s._note_error(f"outbox: {type(exc).__name__}: {exc}")
                kept = 0
        lost = [(rec, rid) for rec, rid in pairs if rid is None or kept == 0]
        # ``kept`` items are already out of ``_inflight``; the caller settles ``lost``
        if lost:
            s._stats.failed += len(lost)
            log.error(
                "synth-middleware: giving up on %d item(s)%s: %s",
                len(lost),
                "" if permanent else " after retries",
                s._stats.last_error,
            )
            for rec, _ in lost:
                s._report("failed", rec)
        return len(lost), kept

    # -------------------------------------------------------------- retries
    def _retrying(self, retry: Callable[[BaseException], bool]) -> tenacity.Retrying:
        """A retry loop with the reporter's current options (``reporter_for`` may
        change them at any time, so built per call: a batch, not a reward)."""
        s = self._s

        def count_retry(_: tenacity.RetryCallState) -> None:
            s._stats.retried += 1

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry),
            # close() ends retrying at once (and cuts the sleep short through _stop)
            stop=tenacity.stop_any(
                tenacity.stop_after_attempt(max(1, s.max_retries + 1)), _Closed(s)
            ),
            wait=BackoffWait(s.backoff, s.max_backoff, _retry_after),
            sleep=s._stop.wait,  # type: ignore[arg-type]  # Event.wait returns a bool
            before_sleep=count_retry,
            reraise=True,
        )

    def call_with_retries(self, call: Callable[[], Any]) -> tuple[bool, Any]:
        """``(True, call())``, retried while the error is transient; ``(False, None)``
        when it gave up."""
        s = self._s

        def attempt() -> Any:
            try:
                return call()
            except Exception as exc:
                s._note_error(f"{type(exc).__name__}: {exc}")
                raise

        try:
            return True, self._retrying(_retryable)(attempt)
        except Exception:
            return False, None

    def send_rewards(self, recs: list[Any]) -> tuple[list[dict[str, Any] | None], bool]:
        """Deliver rewards with retries; one result per input, ``None`` where delivery
        gave up. The flag says the giving up was permanent (not a timeout of retries)."""
        s = self._s
        results: list[dict[str, Any] | None] = [None] * len(recs)
        pending = list(range(len(recs)))

        def take(answers: list[Any]) -> None:
            # keep the well-formed answers; the rest stay pending (resent: idempotency
            # keys make a resend of something that landed harmless)
            nonlocal pending
            for i, res in zip(pending, answers, strict=True):
                if isinstance(res, dict) and res.get("status") in _STATUSES:
                    results[i] = res
            pending = [i for i in pending if results[i] is None]

        def attempt() -> None:
            sub = [recs[i] for i in pending]
            try:
                got = s.backend.record_rewards(sub)
                if not isinstance(got, list) or len(got) != len(sub):
                    # a garbled answer says nothing about which rewards landed
                    raise BackendError("backend answered record_rewards with a malformed result")
                take(got)
                if pending:  # garbled items: unknown whether they landed
                    raise BackendError(
                        f"backend answered record_rewards with {len(pending)} malformed result(s)"
                    )
            except Exception as exc:
                partial = getattr(exc, "partial_results", None)
                if isinstance(partial, list) and len(partial) == len(pending):
                    take(partial)
                s._note_error(f"{type(exc).__name__}: {exc}")
                raise

        try:
            # retry only while something is left: a partial answer may have settled all
            self._retrying(lambda exc: bool(pending) and _retryable(exc))(attempt)
        except Exception as exc:
            if _retryable(exc) or not pending:
                return results, False  # retries ran out (or close()), or nothing is left
            if getattr(exc, "status", None) not in SPLIT_STATUSES:
                return results, True  # 401, 403, ...: retrying cannot fix it
            if len(pending) == 1:
                results[pending[0]] = {"status": "rejected", "error": str(exc)}
                return results, False
            mid = len(pending) // 2
            permanent = False
            for part in (pending[:mid], pending[mid:]):
                got_part, perm = self.send_rewards([recs[i] for i in part])
                permanent = permanent or perm
                for i, res in zip(part, got_part, strict=True):
                    results[i] = res
            return results, permanent
        return results, False
