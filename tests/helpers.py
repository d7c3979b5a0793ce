"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BASELINE = "You are a support assistant. Classify the user's request."
CANDIDATE = "CANDIDATE-A: You are a precise banking intent classifier."
CANDIDATE_B = "CANDIDATE-B: Answer with one intent label only."


def seed(backend: Any, session: str, *texts: str, baseline: str = BASELINE) -> list[str]:
    """Create ``session`` with ``baseline`` and add candidates; return their ids."""
    backend.ensure_session(session, baseline=baseline)
    return [backend.add_candidate(session, t) for t in texts]


def pick(candidate_id: str) -> Callable[..., Any]:
    """A selection callable that always serves ``candidate_id``."""

    def select(candidates: Any, rollout: Any) -> Any:
        return candidate_id

    return select


def messages(user: str = "I lost my card", system: str = BASELINE) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def candidate_stats(backend: Any, session: str, candidate_id: str) -> dict[str, Any]:
    state = backend.get_state(session)
    for c in state["candidates"]:
        if c["candidate_id"] == candidate_id:
            return dict(c)
    raise KeyError(candidate_id)


@dataclass
class C:
    """A candidate as the selection policy sees it (tests of the policy and routing)."""

    candidate_id: str
    reward_count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    status: str = "active"
    is_baseline: bool = False


def bern(cid: str, n: int, successes: int, **kw: Any) -> C:
    """A candidate with ``successes`` of ``n`` Bernoulli rewards."""
    mean = successes / n if n else 0.0
    return C(cid, n, mean, n * mean * (1 - mean), **kw)


def reward_record(i: int, session: str, value: float = 1.0, **extra: Any) -> dict[str, Any]:
    """A reward record as the reporter sends it, with unique idempotency key and rollout id."""
    rec: dict[str, Any] = {
        "idempotency_key": f"key-{i}-{os.urandom(6).hex()}",
        "rollout_id": f"ro-{i}-{os.urandom(6).hex()}",
        "session_id": session,
        "candidate_id": None,
        "value": value,
        "created_at": time.time(),
    }
    rec.update(extra)
    return rec
