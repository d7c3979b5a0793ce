"""Deprecated location: the in-process container runners now live in
:mod:`synth_middleware.offline.container.runner`.

Kept so that imports of ``synth_middleware.container.runner`` keep working (no warning at
import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.container.runner``.
"""

from __future__ import annotations

from synth_middleware.offline.container.runner import (
    InProcessContainer,
    InProcessServer,
    wait_healthy,
)

__all__ = [
    "InProcessContainer",
    "InProcessServer",
    "wait_healthy",
]
