"""Validation of the records of the reward and rollout batches (``RewardRecord``,
``RolloutRecord``): the engine's ingest, defined next to the types it checks.

A bad reward gets a ``rejected`` result and a bad rollout a ``ValueError``
naming the reason; neither ever affects the other records of its batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from synth_middleware.wire.limits import (
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_ROLLOUT_DETAIL_BYTES,
)
from synth_middleware.wire.types import RewardResult
from synth_middleware.wire.validate import (
    TIMESTAMP_ERROR,
    as_reward,
    as_timestamp,
    encode_json,
    feedback_error,
    is_id,
    is_session_id,
    json_size,
    reward_error,
)


@dataclass(slots=True)
class ValidReward:
    """A reward record that passed :func:`parse_reward` (``index``: its input position)."""

    index: int
    key: str
    rollout_id: str
    value: float
    created_at: float
    session_id: str | None
    candidate_id: str | None
    feedback: str | None
    metadata: dict[str, Any] | None
    stop: bool


@dataclass(slots=True)
class ValidRollout:
    """A rollout record that passed :func:`parse_rollout` (``index``: its input position).

    ``detail`` is what the engine stores of it; ``encoded`` that as
    :func:`~synth_middleware.wire.validate.encode_json` text.
    """

    index: int
    session_id: str
    rollout_id: str
    candidate_id: str | None
    created_at: float
    detail: dict[str, Any]
    encoded: str  # the event payload is spliced from it, never encoded twice


def rejected(key: str, error: str) -> RewardResult:
    """The ``rejected`` result of the reward with ``key``, saying why."""
    return {"idempotency_key": key, "status": "rejected", "error": error}


def parse_reward(index: int, record: object, now: float) -> ValidReward | RewardResult:
    """Validate one reward record: a :class:`ValidReward`, or the ``rejected`` result.

    A missing ``created_at`` becomes ``now``.
    """
    if not isinstance(record, Mapping):
        return rejected("", "a reward record must be a mapping")
    key = record.get("idempotency_key")
    shown_key = key if isinstance(key, str) else ""
    if not is_id(key):
        return rejected(
            shown_key, f"idempotency_key must be a non-empty string (max {MAX_ID_CHARS} chars)"
        )
    rollout_id = record.get("rollout_id")
    if not is_id(rollout_id):
        return rejected(key, f"rollout_id must be a non-empty string (max {MAX_ID_CHARS} chars)")
    raw = record.get("value")
    value = as_reward(raw)
    if value is None:
        return rejected(key, f"value: {reward_error(raw)}")
    created_at = record.get("created_at")
    if created_at is None:
        created_at = now
    else:
        created_at = as_timestamp(created_at)
        if created_at is None:
            return rejected(key, TIMESTAMP_ERROR)
    session_id = record.get("session_id")
    if session_id is not None and not is_session_id(session_id):
        return rejected(key, f"invalid session_id {session_id!r:.80}")
    candidate_id = record.get("candidate_id")
    if candidate_id is not None and not is_id(candidate_id):
        return rejected(key, "candidate_id must be a non-empty string or None")
    feedback = record.get("feedback")
    problem = feedback_error(feedback)
    if problem is not None:
        return rejected(key, problem)
    metadata = record.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            return rejected(key, "metadata must be a mapping or None")
        metadata = dict(metadata)
        if metadata:
            try:
                json_size(metadata, "metadata", MAX_METADATA_BYTES)
            except ValueError as exc:
                return rejected(key, str(exc))
        else:
            metadata = None
    stop = record.get("stop", False)
    if stop is None:
        stop = False
    if not isinstance(stop, bool):
        return rejected(key, "stop must be a boolean")
    return ValidReward(
        index,
        key,
        rollout_id,
        value,
        created_at,
        session_id,
        candidate_id,
        feedback,
        metadata,
        stop,
    )


DETAIL_FIELDS = ("key", "bucket", "model", "metadata", "input", "output")
"""The optional fields of a rollout record the engine keeps as its details."""


def parse_rollout(index: int, record: object, now: float) -> ValidRollout:
    """Validate one rollout record; raise ``ValueError`` with the reason to skip it.

    Details that are not JSON are dropped (listed under ``dropped``); past
    :data:`~synth_middleware.wire.limits.MAX_ROLLOUT_DETAIL_BYTES` its ``input`` and
    ``output`` are dropped too (``truncated``): the rollout counts more than its details.
    """
    if not isinstance(record, Mapping):
        raise ValueError("a rollout record must be a mapping")
    session_id = record.get("session_id")
    if not is_session_id(session_id):
        raise ValueError(f"invalid session_id {session_id!r:.80}")
    rollout_id = record.get("rollout_id")
    if not is_id(rollout_id):
        raise ValueError(f"rollout_id must be a non-empty string (max {MAX_ID_CHARS} chars)")
    candidate_id = record.get("candidate_id")
    if candidate_id is not None and not is_id(candidate_id):
        raise ValueError("candidate_id must be a non-empty string or None")
    created_at = record.get("created_at")
    created = now if created_at is None else as_timestamp(created_at)
    if created is None:
        raise ValueError(TIMESTAMP_ERROR)
    detail: dict[str, Any] = {
        "rollout_id": rollout_id,
        "served_candidate_id": candidate_id,
        "created_at": created,
    }
    dropped: list[str] = []
    for name in DETAIL_FIELDS:
        value = record.get(name)
        if value is not None:
            detail[name] = value
    try:
        # The only encode of the common case (hot: every rollout): it checks that the
        # details are JSON and their size, and its text becomes the stored payload.
        encoded = encode_json(detail)
    except (TypeError, ValueError):
        for name in DETAIL_FIELDS:
            if name not in detail:
                continue
            try:
                encode_json(detail[name])
            except (TypeError, ValueError):
                del detail[name]
                dropped.append(name)  # keep the rollout: its counts matter more than this field
        encoded = encode_json(detail)
    if len(encoded) > MAX_ROLLOUT_DETAIL_BYTES:
        for name in ("input", "output"):
            if detail.pop(name, None) is not None:
                dropped.append(name)
        detail["truncated"] = True
    if dropped:
        detail["dropped"] = dropped
    if dropped or "truncated" in detail:  # rare: the details changed after the encode
        encoded = encode_json(detail)
    return ValidRollout(index, session_id, rollout_id, candidate_id, created, detail, encoded)
