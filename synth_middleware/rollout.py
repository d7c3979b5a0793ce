"""Rollouts: one unit of work whose reward the optimizer learns from.

Every wrapped call opens a rollout, or joins the one made current with
:func:`rollout`. Its ids live in a context variable (so threads and asyncio
tasks never mix them), in OpenTelemetry context under our own keys, and on the
response (``response.synth`` / :func:`rollout_of`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache
from opentelemetry import context as otel_context

from synth_middleware._ids import random_hex
from synth_middleware._tokens import encode_token
from synth_middleware.settings import settings

# Our own OTel context keys: the ids travel with the OTel context without
# leaving the process (baggage, which does leave it, is opt-in).
OTEL_SESSION_KEY = otel_context.create_key("synth.session_id")
OTEL_ROLLOUT_KEY = otel_context.create_key("synth.rollout_id")
OTEL_CANDIDATE_KEY = otel_context.create_key("synth.candidate_id")

_current: ContextVar[Rollout | None] = ContextVar("synth_current_rollout", default=None)


def new_rollout_id() -> str:
    """A fresh rollout id."""
    return "ro_" + random_hex(96)


_OWN_ID_RE = re.compile(r"ro_[0-9a-f]{24}")
_MAX_APP_IDS = 65536
_app_ids: LRUCache[str, None] = LRUCache(maxsize=_MAX_APP_IDS)  # ids the app chose
_app_ids_lock = threading.Lock()  # an LRUCache update is several steps, not atomic


def _remember_app_id(rollout_id: str) -> None:
    with _app_ids_lock:
        _app_ids[rollout_id] = None


def may_name_rollout(rollout_id: str) -> bool:
    """Whether a bare string can name a rollout: one of our ids (``ro_`` and 24 hex
    digits, from any process) or an id the app chose with :func:`rollout` in this
    process (the last 65,536)."""
    return bool(_OWN_ID_RE.fullmatch(rollout_id)) or rollout_id in _app_ids


@dataclass(slots=True, eq=False)
class Rollout:
    """One rollout: the ids a reward needs, and a token to send it from elsewhere.

    ``candidate_id`` is ``None`` while no candidate has been chosen (the app's
    own prompt served on a cold start, or a call that matched no session).
    """

    session_id: str | None
    rollout_id: str
    candidate_id: str | None = None
    key: str | None = None
    metadata: Mapping[str, Any] | None = None
    bucket: str | None = None
    created_at: float = field(default_factory=time.time)
    # The client-side session runtime that routes this rollout's reward.
    _runtime: Any = field(default=None, repr=False)
    _token: str | None = field(default=None, repr=False)
    _recorded: bool = field(default=False, repr=False)
    # (span context, tracer provider) of the rollout's span, for reward events
    _otel: Any = field(default=None, repr=False)

    @property
    def token(self) -> str:
        """Opaque URL-safe token; pass it to :func:`synth_middleware.reward` from anywhere."""
        if self._token is None:
            self._token = encode_token(
                self.session_id,
                self.rollout_id,
                self.candidate_id,
                secret=settings.token_secret,
                issued_at=self.created_at,
            )
        return self._token

    def as_dict(self) -> dict[str, Any]:
        """The ids as a plain dict (for logs and JSON)."""
        return {
            "session_id": self.session_id,
            "rollout_id": self.rollout_id,
            "candidate_id": self.candidate_id,
            "key": self.key,
        }


class rollout:
    """Group wrapped calls into one rollout, sync or async.

    ``key`` makes assignment sticky: the same key gets the same candidate
    while that candidate is live. ``bucket`` names the instance the optimizer
    compares candidates on (see the GEPA optimizer)::

        with synth_middleware.rollout(key=user_id) as r:
            client.chat.completions.create(...)
        synth_middleware.reward(r, 1.0)
    """

    __slots__ = ("_ctx_token", "_otel_token", "rollout")

    def __init__(
        self,
        *,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        bucket: str | None = None,
        rollout_id: str | None = None,
    ) -> None:
        if key is not None and not isinstance(key, str):
            key = str(key)
        if rollout_id:
            _remember_app_id(rollout_id)
        self.rollout = Rollout(
            session_id=None,
            rollout_id=rollout_id or new_rollout_id(),
            key=key,
            metadata=dict(metadata) if metadata else None,
            bucket=bucket,
        )
        self._ctx_token: Token[Rollout | None] | None = None
        self._otel_token: object | None = None

    def __enter__(self) -> Rollout:
        self._ctx_token = _current.set(self.rollout)
        ctx = otel_context.set_value(OTEL_ROLLOUT_KEY, self.rollout.rollout_id)
        self._otel_token = otel_context.attach(ctx)
        return self.rollout

    def __exit__(self, *exc: object) -> None:
        if self._otel_token is not None:
            _safe_detach(self._otel_token)
            self._otel_token = None
        if self._ctx_token is not None:
            try:
                _current.reset(self._ctx_token)
            except ValueError:  # exited in another context (task hop): restore by value
                _current.set(None)
            self._ctx_token = None

    async def __aenter__(self) -> Rollout:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)


# The API's own runtime context: detaching through it skips the error log (None in a
# future API without it).
_OTEL_RUNTIME: Any = getattr(otel_context, "_RUNTIME_CONTEXT", None)


def _safe_detach(token: object) -> None:
    """Detach an OTel context token; on a task hop (token from another context)
    there is nothing to restore, and the API would log an error for it."""
    if _OTEL_RUNTIME is None:
        otel_context.detach(token)  # type: ignore[arg-type]
        return
    try:
        _OTEL_RUNTIME.detach(token)
    except Exception:
        pass


def current_rollout() -> Rollout | None:
    """The rollout current in this thread or task, if any."""
    return _current.get()


def _set_current(r: Rollout | None) -> Token[Rollout | None]:
    return _current.set(r)


def _reset_current(token: Token[Rollout | None]) -> None:
    try:
        _current.reset(token)
    except ValueError:
        _current.set(None)


def attach_rollout(obj: Any, r: Rollout) -> None:
    """Put the rollout on a response object as ``obj.synth`` (best effort)."""
    try:
        object.__setattr__(obj, "synth", r)
    except (AttributeError, TypeError):
        pass


def rollout_of(response: Any) -> Rollout:
    """The rollout of a response (or stream, or raw response) a wrapped client returned."""
    r = getattr(response, "synth", None)
    if isinstance(r, Rollout):
        return r
    raise ValueError(
        "this object was not returned by a wrapped client (no rollout attached); "
        "wrap the client with synth_middleware.wrap(...)"
    )
