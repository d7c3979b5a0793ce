"""The one interface every backend implements.

Backends are called from background threads (cache refresh, reward delivery)
and from explicit user calls, never on the request path. The dictionaries they
take and return are the wire types of :mod:`synth_middleware.wire.types`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

# The wire types live in the bottom layer (the engine and the server use them without
# importing a backend); re-exported here so that the old import paths keep working.
from synth_middleware.wire.types import (
    CandidateItem,
    CandidateStats,
    RewardRecord,
    RewardResult,
    RolloutRecord,
    SessionKind,
    SessionState,
)

__all__ = [
    "Backend",
    "CandidateItem",
    "CandidateStats",
    "RewardRecord",
    "RewardResult",
    "RolloutRecord",
    "SessionKind",
    "SessionState",
]


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
