"""Deprecated location: the online rollout runner now live in
:mod:`synth_middleware.offline.container.online`.

Kept so that imports of ``synth_middleware.container.online`` keep working (no warning at
import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.container.online``.
"""

from __future__ import annotations

from synth_middleware.offline.container.online import (
    OnlineRolloutResult,
    OnlineRunner,
)

__all__ = [
    "OnlineRolloutResult",
    "OnlineRunner",
]
