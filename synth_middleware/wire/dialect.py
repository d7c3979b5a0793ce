"""The sans-IO part of speaking the wire API, shared by :class:`HttpBackend` and the SDK.

Where to find the backend (environment variables), what every request carries
(identification and auth headers), the routes and how ids go into them, and
how to read a ``Retry-After`` header. No I/O and no ``httpx`` here: each
client sends with its own connection pool. The routes and bodies are
described in ``docs/wire.md``.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Mapping
from urllib.parse import quote

from synth_middleware._version import __version__

URL_VARS = ("SYNTH_URL", "SYNTH_BACKEND_URL", "RUST_BACKEND_URL")
"""Environment variables naming the HTTP backend's URL; the first one set wins."""
API_KEY_VAR = "SYNTH_API_KEY"
"""Environment variable holding the HTTP backend's key."""
USER_AGENT = f"synth-middleware/{__version__}"
"""The ``User-Agent`` of every request we send."""

SESSIONS = "/api/v1/online/sessions"
"""Create (``POST``) and list online sessions; ``/{id}`` is one session."""
REWARDS_BATCH = "/api/v1/rewards/batch"
"""Rewards of any sessions in one request (our server)."""
ROLLOUTS_BATCH = "/api/v1/rollouts/batch"
"""Rollouts of any sessions in one request (our server)."""
LEGACY_SYSTEMS = "/api/prompt-learning/online/mipro/systems"
"""The older hosted routes: ``/{id}/state`` and ``/{id}/status``."""


def url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The first of :data:`URL_VARS` that is set and not empty, else ``None``."""
    env = os.environ if environ is None else environ
    return next((env[v] for v in URL_VARS if env.get(v)), None)


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``SYNTH_API_KEY`` if set and not empty, else ``None``."""
    env = os.environ if environ is None else environ
    return env.get(API_KEY_VAR) or None


def request_headers(api_key: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers of every request: ``Accept``, ``User-Agent``, then ``extra`` (which
    replaces a default of the same name, in any case), then the key as both
    ``Authorization: Bearer`` and ``X-API-Key`` (hosted API and our server accept either)."""
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    for name, value in (extra or {}).items():
        # header names are case-insensitive: never send a default and its override both
        for old in [k for k in headers if k.lower() == name.lower()]:
            del headers[old]
        headers[name] = value
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
        headers["X-API-Key"] = api_key
    return headers


def segment(value: str) -> str:
    """``value`` percent-encoded as one path segment (a ``/`` in an id stays inside it)."""
    return quote(value, safe="")


def session_path(session_id: str) -> str:
    """``/api/v1/online/sessions/{id}``: one session's state (``GET``) and status (``PATCH``)."""
    return f"{SESSIONS}/{segment(session_id)}"


def reward_path(session_id: str) -> str:
    """``/api/v1/online/sessions/{id}/reward``: one reward (the hosted API's route)."""
    return f"{session_path(session_id)}/reward"


def candidates_path(session_id: str) -> str:
    """``/api/v1/systems/{id}/candidates``: a page of a session's candidates."""
    return f"/api/v1/systems/{segment(session_id)}/candidates"


def candidate_path(candidate_id: str) -> str:
    """``/api/v1/candidates/{id}``: one candidate with its payload."""
    return f"/api/v1/candidates/{segment(candidate_id)}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)
