"""Deprecated location: the SDK's job calls now live in
:mod:`synth_middleware.offline.sdk.jobs`.

Kept so that imports of ``synth_middleware.sdk.jobs`` keep working (no warning at import:
tests may run with ``-W error``); new code imports ``synth_middleware.offline.sdk.jobs``.
"""

from __future__ import annotations

from synth_middleware.offline.sdk.jobs import (
    TERMINAL_STATUSES,
    AsyncJobsMixin,
    JobsMixin,
)

__all__ = [
    "TERMINAL_STATUSES",
    "AsyncJobsMixin",
    "JobsMixin",
]
