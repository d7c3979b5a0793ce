"""``reward()``, ``flush()`` and ``stats()``: cheap, non-blocking, never network I/O."""

from __future__ import annotations

import numbers
import time
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from synth_middleware._ids import random_hex
from synth_middleware._tokens import decode_token, looks_like_token
from synth_middleware.client import registry
from synth_middleware.client._evaluation import record_reward_event
from synth_middleware.client.reporter import ReporterStats, all_reporters, flush_all
from synth_middleware.client.session import all_runtimes
from synth_middleware.errors import SynthError
from synth_middleware.rollout import Rollout, may_name_rollout
from synth_middleware.settings import settings
from synth_middleware.wire import MAX_ID_CHARS, feedback_error, reward_error


def reward(
    target: Any,
    value: float,
    *,
    feedback: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    stop: bool = False,
    idempotency_key: str | None = None,
) -> str:
    """Report a reward for a rollout; returns the reward's idempotency key.

    ``target`` is a response or stream a wrapped client returned, a
    :class:`Rollout`, a rollout id, or a rollout token (from another request or
    process). Non-blocking: the reward is queued and delivered in the
    background.

    ``value`` must be a finite real number with ``abs(value) <= 1e6``
    (:data:`synth_middleware.wire.limits.MAX_ABS_REWARD`; ``bool`` is not a
    number here): scale larger scores down. Raises ``ValueError`` at once for
    a value outside that domain, oversized feedback, or a target that names no
    rollout.

    ``idempotency_key`` (default: a fresh random key) names the reward: the
    backend stores one reward per key, so re-sending the same report (e.g.
    the same feedback token posted twice) is counted once.
    """
    if idempotency_key is not None and not (
        isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= MAX_ID_CHARS
    ):
        raise ValueError(
            f"idempotency_key must be a non-empty string of at most {MAX_ID_CHARS} characters"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"reward value must be a real number, got {type(value).__name__}")
    problem = reward_error(value)
    if problem is not None:
        raise ValueError(problem)
    value = float(value)
    problem = feedback_error(feedback)
    if problem is not None:
        raise ValueError(problem)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValueError("metadata must be a mapping")
    r = _resolve(target)
    rt = r._runtime or registry.runtime_of_session(r.session_id)
    if rt is None:
        raise SynthError(
            "no wrapped client in this process to deliver the reward through; "
            "call synth_middleware.wrap(...) first"
        )
    key = idempotency_key or random_hex(128)
    rt.reporter.add_reward(
        {
            "idempotency_key": key,
            "rollout_id": r.rollout_id,
            "session_id": r.session_id,
            "candidate_id": r.candidate_id,
            "value": value,
            "created_at": time.time(),
            "feedback": feedback,
            "metadata": dict(metadata) if metadata else None,
            "stop": stop,
        }
    )
    record_reward_event(r, value)  # a gen_ai.evaluation.result event in the trace
    return key


def _resolve(target: Any) -> Rollout:
    if isinstance(target, Rollout):
        return target
    if isinstance(target, str):
        if looks_like_token(target):
            data = decode_token(target, secret=settings.token_secret)
            return Rollout(data.session_id, data.rollout_id, data.candidate_id)
        if not target:
            raise ValueError("rollout id must not be empty")
        if not may_name_rollout(target):
            shown = target if len(target) <= 60 else target[:60] + "..."
            raise ValueError(
                f"reward target {shown!r} names no rollout: it is neither a rollout token "
                "nor a rollout id (ours look like 'ro_' and 24 hex digits; an id given to "
                "synth.rollout(rollout_id=...) counts in the process that opened it). Pass "
                "the response, its Rollout, or resp.synth.token"
            )
        return Rollout(None, target)
    r = getattr(target, "synth", None)
    if isinstance(r, Rollout):
        return r
    raise ValueError(
        "reward target must be a wrapped client's response, a Rollout, a rollout id or a token; "
        f"got {type(target).__name__}"
    )


def flush(timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` seconds for queued rewards and rollouts to be delivered.

    Returns ``True`` when everything queued before the call was delivered.
    Never blocks past ``timeout``.
    """
    return flush_all(timeout)


def stats() -> dict[str, Any]:
    """Delivery counters (queued, sent, retried, dropped, failed, rejected, last_error)
    summed over backends, plus per-session serving counters."""
    total = ReporterStats()
    last_error = None
    for rep in all_reporters():
        s = rep.stats()
        for f in fields(s):
            value = getattr(s, f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(total, f.name, getattr(total, f.name) + value)
        last_error = s.last_error or last_error
    total.last_error = last_error
    out = total.as_dict()
    out["sessions"] = {rt.session_id: _counters(rt) for rt in all_runtimes()}
    return out


def _counters(rt: Any) -> dict[str, Any]:
    return asdict(rt.counters)
