"""The one interface every backend implements.

Backends are called from background threads (cache refresh, reward delivery)
and from explicit user calls, never on the request path. Dictionaries keep the
wire API's shape (``../shared/reference/synth-wire-api.md``) so that the local
engine, our server and the hosted API are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, Protocol, TypedDict, runtime_checkable

SessionKind = Literal["mipro_online", "gepa_online"]


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


@runtime_checkable
class Backend(Protocol):
    """What the client middleware needs from a backend.

    Implementations: :class:`~synth_middleware.backends.local.LocalBackend`
    (the engine in-process) and ``HttpBackend`` (the wire API, hosted or ours).
    Every method may raise :class:`~synth_middleware.errors.BackendError`.
    """

    def ensure_session(
        self, session_id: str, *, baseline: str | None = None, kind: SessionKind = "mipro_online"
    ) -> SessionState:
        """Create the session if it is new (registering ``baseline`` as its
        baseline candidate) and return its state. An existing session whose
        baseline differs from ``baseline`` records a prompt change."""
        ...

    def get_state(self, session_id: str) -> SessionState:
        """The session's state with per-candidate statistics."""
        ...

    def list_candidates(
        self,
        session_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        sort: str | None = None,
        include: Sequence[str] = ("prompt_text",),
    ) -> dict[str, Any]:
        """A page ``{items, next_cursor, system_id, ...}`` of candidates."""
        ...

    def get_candidate(self, candidate_id: str) -> CandidateItem:
        """One candidate with its full payload."""
        ...

    def record_rollouts(self, rollouts: Sequence[RolloutRecord]) -> None:
        """Store rollouts (idempotent on ``rollout_id``)."""
        ...

    def record_rewards(self, rewards: Sequence[RewardRecord]) -> list[RewardResult]:
        """Store rewards; one result per input, in order. A rejected item never
        affects the others in the batch."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
