"""Backends: one protocol, a local (in-process) and an HTTP implementation."""

from synth_middleware.backends.base import (
    Backend,
    CandidateItem,
    RewardRecord,
    RewardResult,
    RolloutRecord,
    SessionState,
)

__all__ = [
    "Backend",
    "CandidateItem",
    "RewardRecord",
    "RewardResult",
    "RolloutRecord",
    "SessionState",
]
