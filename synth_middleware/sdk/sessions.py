"""Deprecated location: the SDK's online sessions now live in
:mod:`synth_middleware.offline.sdk.sessions`.

Kept so that imports of ``synth_middleware.sdk.sessions`` keep working (no warning at
import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.sdk.sessions``.
"""

from __future__ import annotations

from synth_middleware.offline.sdk.sessions import (
    GepaOnlineSession,
    MiproOnlineSession,
    OnlineSession,
    session_class,
)

__all__ = [
    "GepaOnlineSession",
    "MiproOnlineSession",
    "OnlineSession",
    "session_class",
]
