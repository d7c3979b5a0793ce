"""Deprecated location: the container clients now live in
:mod:`synth_middleware.offline.container.client`.

Kept so that imports of ``synth_middleware.container.client`` keep working (no warning at
import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.container.client``.
"""

from __future__ import annotations

from synth_middleware.offline.container.client import (
    AsyncContainerClient,
    ContainerClient,
    ContainerError,
    ContainerUnreachable,
    InvalidRolloutResponse,
    RolloutFailed,
    RolloutTimeout,
    container_dialect,
    rollout_body,
)

__all__ = [
    "AsyncContainerClient",
    "ContainerClient",
    "ContainerError",
    "ContainerUnreachable",
    "InvalidRolloutResponse",
    "RolloutFailed",
    "RolloutTimeout",
    "container_dialect",
    "rollout_body",
]
