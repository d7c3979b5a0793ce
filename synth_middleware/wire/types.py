"""The JSON shapes of the wire API (``docs/wire.md``), as typed dictionaries.

One definition for every side of the wire: the client middleware and the
reward reporter build them, both backends pass them through, the engine
stores them and the server answers them. Dictionaries keep the shape of
``../shared/reference/synth-wire-api.md`` (plus our extensions) so that the
local engine, our server and the hosted API are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, get_args

__all__ = [
    "SESSION_KINDS",
    "SESSION_STATUS_NAMES",
    "CandidateItem",
    "CandidateStats",
    "RewardRecord",
    "RewardResult",
    "RolloutRecord",
    "SessionKind",
    "SessionState",
    "SessionStatusName",
]

SessionKind = Literal["mipro_online", "gepa_online"]
SESSION_KINDS: tuple[str, ...] = get_args(SessionKind)
"""The session kinds a backend accepts (``SessionKind`` as a tuple, for checks)."""
SessionStatusName = Literal["running", "paused", "cancelled", "completed"]
SESSION_STATUS_NAMES: tuple[str, ...] = get_args(SessionStatusName)
"""The statuses a session can have (``SessionStatusName`` as a tuple, for checks)."""


class CandidateStats(TypedDict):
    """Per-candidate statistics as they appear in a session state."""

    candidate_id: str
    avg_reward: float | None
    rollout_count: int
    reward_count: int
    reward_m2: float  # sum of squared deviations (Welford); variance = m2 / (n - 1)
    is_baseline: bool
    status: str  # "active" | "archived"
    parent_id: str | None


class CandidateItem(TypedDict, total=False):
    """A candidate as listed or fetched (wire shape plus our extensions)."""

    candidate_id: str
    candidate_content: str | None
    artifact_payload: Any
    status: str
    avg_reward: float | None
    rollout_count: int
    reward_count: int
    parent_id: str | None
    is_baseline: bool
    created_at: float
    generation: int


class SessionState(TypedDict, total=False):
    """The session state in the wire reference's shape (plus extensions)."""

    session_id: str
    kind: str
    status: str
    version: int
    rollout_count: int
    reward_count: int
    best_candidate_id: str | None
    best_reward: float | None
    best_objective_value: float | None
    baseline_candidate_id: str | None
    generation: int  # bumped when the app's own prompt changes
    candidates: list[CandidateStats]
    policy: dict[str, Any]  # selection policy: P(best) per candidate, leader, evidence
    optimizer: dict[str, Any]  # optimizer status: status, last_error, proposals, malformed
    reward_range: list[float] | None  # [min, max] of the rewards seen


class RolloutRecord(TypedDict):
    """One rollout as the client reports it (batched, never on the request path)."""

    session_id: str
    rollout_id: str
    candidate_id: str | None
    created_at: float
    key: NotRequired[str | None]
    metadata: NotRequired[Mapping[str, Any] | None]
    bucket: NotRequired[str | None]
    input: NotRequired[Any]
    output: NotRequired[Any]
    model: NotRequired[str | None]


class RewardRecord(TypedDict):
    """One reward. ``idempotency_key`` makes redelivery harmless."""

    idempotency_key: str
    rollout_id: str
    value: float
    created_at: float
    session_id: NotRequired[str | None]
    candidate_id: NotRequired[str | None]
    feedback: NotRequired[str | None]
    metadata: NotRequired[Mapping[str, Any] | None]
    stop: NotRequired[bool]


class RewardResult(TypedDict):
    """Per-reward answer of ``record_rewards``: ``accepted``, ``duplicate`` or ``rejected``."""

    idempotency_key: str
    status: Literal["accepted", "duplicate", "rejected"]
    error: NotRequired[str | None]
