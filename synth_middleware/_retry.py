"""Retry and backoff policies, on tenacity.

Two shapes of retrying live in this library:

* a call retried in place (reward delivery, a container request): a
  :class:`tenacity.Retrying` built with :class:`BackoffWait` (exponential,
  jittered, ``Retry-After`` honoured, capped);
* work rescheduled later by a background loop that must not block on one
  item (a session refresh, an optimizer round): :func:`backoff_delay` gives
  the delay of the n-th consecutive failure, and the loop keeps the time.

Both use tenacity's exponential wait so the arithmetic (doubling, the cap, no
float overflow after thousands of failures) is one library's, not ours.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import tenacity
from tenacity.wait import wait_base

__all__ = ["BackoffWait", "attempt_state", "backoff_delay"]


def attempt_state(attempt: int) -> tenacity.RetryCallState:
    """A tenacity call state that has made ``attempt`` attempts (for evaluating a wait
    strategy outside a retry loop)."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, int(attempt))
    return state


def backoff_delay(initial: float, cap: float, failures: int) -> float:
    """``initial * 2 ** (failures - 1)``, at most ``cap`` (no overflow however many
    failures): the delay before retrying after the ``failures``-th failure in a row."""
    if initial <= 0 or cap <= 0:
        # no backoff asked for; and tenacity answers ``max`` when 0.0 * 2**n overflows
        return 0.0
    return float(tenacity.wait_exponential(multiplier=initial, max=cap)(attempt_state(failures)))


class BackoffWait(wait_base):
    """Exponential backoff with jitter, overridden by the server's ``Retry-After``.

    The n-th retry waits ``min(initial * 2 ** (n - 1), cap)`` times a jitter factor
    in [0.5, 1.5) (spreads a herd of clients); when ``retry_after(exc)`` of the
    failure gives seconds, it waits those plus up to 10 % instead. Never more than
    ``cap``.
    """

    def __init__(
        self,
        initial: float,
        cap: float,
        retry_after: Callable[[BaseException], float | None] | None = None,
    ) -> None:
        self.initial = float(initial)
        self.cap = float(cap)
        self._retry_after = retry_after

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """Seconds to wait before the next attempt."""
        after = None
        outcome = retry_state.outcome
        if self._retry_after is not None and outcome is not None and outcome.failed:
            exc = outcome.exception()
            if exc is not None:
                after = self._retry_after(exc)
        if after is not None:
            wait = after * (1.0 + 0.1 * random.random())
        else:
            base = backoff_delay(self.initial, self.cap, retry_state.attempt_number)
            wait = base * (0.5 + random.random())
        return min(wait, self.cap)
