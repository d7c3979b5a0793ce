"""Deprecated location: the container's request and response models now live in
:mod:`synth_middleware.offline.container.models`.

Kept so that imports of ``synth_middleware.container.models`` keep working (no warning at
import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.container.models``.
"""

from __future__ import annotations

from synth_middleware.offline.container.models import (
    InvalidRolloutResponse,
    PolicyConfig,
    RolloutEnv,
    RolloutMetrics,
    RolloutPolicy,
    RolloutRequest,
    RolloutResponse,
    RolloutResult,
    RolloutStep,
    Trajectory,
    parse_rollout_response,
)

__all__ = [
    "InvalidRolloutResponse",
    "PolicyConfig",
    "RolloutEnv",
    "RolloutMetrics",
    "RolloutPolicy",
    "RolloutRequest",
    "RolloutResponse",
    "RolloutResult",
    "RolloutStep",
    "Trajectory",
    "parse_rollout_response",
]
