"""Where ``reward()`` finds the backend of a rollout it was given by id or token."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synth_middleware.client.session import SessionRuntime

_lock = threading.Lock()
_sessions: dict[str, SessionRuntime] = {}
_last: SessionRuntime | None = None


def register_session(session_id: str, runtime: SessionRuntime) -> None:
    """Remember the runtime that serves ``session_id`` (the latest wrap wins)."""
    global _last
    with _lock:
        _sessions[session_id] = runtime
        _last = runtime


def runtime_of_session(session_id: str | None) -> SessionRuntime | None:
    """The runtime for a session id, or the most recently wrapped one."""
    if session_id is not None:
        rt = _sessions.get(session_id)
        if rt is not None:
            return rt
    return _last
