"""What the web integrations share, framework-neutral (public: integrations for
other frameworks build on it too).

``synth_middleware_fastapi`` (any ASGI app) and ``synth_middleware_django``
are thin glue over this module: the options (:class:`WebConfig`), the
per-request rollout (:class:`RequestRollout`: opened at the request's start,
current for everything the request runs, its ids on the request span), the
signed rollout token the response carries, and the feedback endpoint's
validation (:func:`parse_feedback`, :func:`submit_feedback`).

Tokens from a web integration are signed with, in order: the integration's
``secret`` option, ``SYNTH_TOKEN_SECRET`` (``synth_middleware.configure(
token_secret=...)``), or a random per-process secret generated on first use
(with one warning: such tokens do not verify in another process or after a
restart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace

from synth_middleware._logonce import LogOnce
from synth_middleware._tokens import TokenData, decode_token, encode_token
from synth_middleware.client._evaluation import anchor
from synth_middleware.client._otel import (
    BAGGAGE_CANDIDATE,
    BAGGAGE_ROLLOUT,
    BAGGAGE_SESSION,
    id_attributes,
)
from synth_middleware.errors import SynthError, TokenError
from synth_middleware.rollout import (
    OTEL_ROLLOUT_KEY,
    OTEL_SESSION_KEY,
    Rollout,
    _reset_current,
    _safe_detach,
    _set_current,
    new_rollout_id,
)
from synth_middleware.settings import settings
from synth_middleware.wire import feedback_error, reward_error

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.trace import Span, TracerProvider

__all__ = [
    "DEFAULT_TOKEN_MAX_AGE",
    "FEEDBACK_MODES",
    "FEEDBACK_PATH",
    "MAX_FEEDBACK_BODY",
    "MAX_KEY_CHARS",
    "ROLLOUT_HEADER",
    "Feedback",
    "FeedbackError",
    "KeyFunc",
    "RequestRollout",
    "WebConfig",
    "check_body_size",
    "cookie_value",
    "forbidden",
    "issue_token",
    "normalize_key",
    "parse_feedback",
    "resolve_secret",
    "submit_feedback",
    "too_large",
    "verify_token",
]

log = logging.getLogger("synth_middleware")

ROLLOUT_HEADER = "x-synth-rollout"
"""Response header carrying the request's rollout token."""
FEEDBACK_PATH = "/synth/feedback"
"""Where the ready feedback endpoints are mounted by default."""
DEFAULT_TOKEN_MAX_AGE = 7 * 24 * 3600.0
"""Seconds a web token stays valid for feedback (a week)."""
MAX_FEEDBACK_BODY = 256 * 1024
"""Largest feedback request body accepted, in bytes."""
MAX_KEY_CHARS = 256
"""Longest sticky key kept as is; longer ones are replaced by their SHA-256."""
_MAX_ID_CHARS = 200
FEEDBACK_MODES = ("once", "all")
"""``feedback_per_token`` values: one reward per token, or one per feedback post."""
_REPLAY_MEMORY = 100_000
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]+$")

_secret_lock = threading.Lock()
_process_secret: bytes | None = None

KeyFunc = Callable[[Any], Any]
"""``request -> sticky key or None`` (the framework's request object)."""


# ---------------------------------------------------------------- secrets


def resolve_secret(explicit: str | bytes | None = None) -> str | bytes:
    """The secret web tokens are signed with (see the module docstring)."""
    if explicit:
        return explicit
    if settings.token_secret:
        return settings.token_secret
    return _generated_secret()


def _generated_secret() -> bytes:
    global _process_secret
    if _process_secret is None:
        with _secret_lock:
            if _process_secret is None:
                _process_secret = os.urandom(32)
                log.warning(
                    "synth-middleware: no token secret configured (secret= or "
                    "SYNTH_TOKEN_SECRET); signing rollout tokens with a random per-process "
                    "secret, so they will not verify in another process or after a restart"
                )
    return _process_secret


def issue_token(r: Rollout, secret: str | bytes | None = None) -> str:
    """A signed token for ``r`` with the ids known now (the rollout id always)."""
    return encode_token(
        r.session_id,
        r.rollout_id,
        r.candidate_id,
        secret=resolve_secret(secret),
        issued_at=r.created_at,
    )


def verify_token(
    token: object, secret: str | bytes | None = None, max_age: float | None = None
) -> TokenData:
    """Decode and verify a web token; :class:`FeedbackError` (403) if forged or expired."""
    if not isinstance(token, str) or not token:
        raise FeedbackError(422, "invalid_request", "'token' must be a non-empty string")
    if not token.isascii():
        raise FeedbackError(403, "invalid_token", "rollout token is malformed (not ASCII)")
    try:
        data = decode_token(token, secret=resolve_secret(secret))
    except TokenError as exc:
        raise FeedbackError(403, "invalid_token", str(exc)) from None
    if max_age is not None and time.time() - data.issued_at > max_age:
        raise FeedbackError(403, "token_expired", "rollout token has expired")
    return data


# ---------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class WebConfig:
    """Options of a web integration (the same for FastAPI and Django).

    ``key`` (a callable taking the framework's request), ``key_header`` and
    ``key_cookie`` name where the sticky key comes from, tried in that order.
    ``session`` presets the session of request rollouts (so a token issued
    before the first wrapped call, e.g. on a streaming response, names it).
    ``baggage`` puts the ids in W3C baggage for downstream services and joins
    a rollout arriving in incoming baggage (trusted services only: baggage is
    not signed). ``exclude_paths`` are path prefixes that get no rollout.
    ``feedback_per_token``: ``"once"`` (default) counts one reward per token,
    a replay of the token answers the first result (409 if it carries another
    reward); ``"all"`` counts every feedback post (several ratings of one
    response, each a reward of its rollout).
    """

    header: str = ROLLOUT_HEADER
    key_header: str | None = None
    key_cookie: str | None = None
    key: KeyFunc | None = None
    session: str | None = None
    secret: str | bytes | None = None
    baggage: bool = False
    exclude_paths: tuple[str, ...] = (FEEDBACK_PATH,)
    token_max_age: float | None = DEFAULT_TOKEN_MAX_AGE
    tracer_provider: TracerProvider | None = None
    feedback_per_token: str = "once"

    def __post_init__(self) -> None:
        if self.feedback_per_token not in FEEDBACK_MODES:
            raise ValueError(
                f"feedback_per_token must be one of {', '.join(FEEDBACK_MODES)}, "
                f"got {self.feedback_per_token!r}"
            )
        header = self.header.lower() if isinstance(self.header, str) else self.header
        if not isinstance(header, str) or not _HEADER_NAME.match(header):
            raise ValueError(f"header must be a valid HTTP header name, got {self.header!r}")
        object.__setattr__(self, "header", header)
        if self.key_header is not None:
            kh = self.key_header.lower() if isinstance(self.key_header, str) else None
            if kh is None or not _HEADER_NAME.match(kh):
                raise ValueError(f"key_header must be a header name, got {self.key_header!r}")
            object.__setattr__(self, "key_header", kh)
        if self.key_cookie is not None and not (
            isinstance(self.key_cookie, str) and self.key_cookie
        ):
            raise ValueError("key_cookie must be a non-empty cookie name")
        if self.key is not None and not callable(self.key):
            raise ValueError("key must be a callable (request) -> key")
        if self.session is not None and not (isinstance(self.session, str) and self.session):
            raise ValueError("session must be a non-empty string")
        if self.secret is not None and not isinstance(self.secret, str | bytes):
            raise ValueError("secret must be a string or bytes")
        if isinstance(self.exclude_paths, str):
            object.__setattr__(self, "exclude_paths", (self.exclude_paths,))
        else:
            object.__setattr__(self, "exclude_paths", tuple(self.exclude_paths))
        if self.token_max_age is not None:
            age = self.token_max_age
            if isinstance(age, bool) or not isinstance(age, numbers.Real) or not age > 0:
                raise ValueError("token_max_age must be a positive number of seconds or None")

    @property
    def wants_key(self) -> bool:
        """Whether any sticky-key source is configured."""
        return self.key is not None or self.key_header is not None or self.key_cookie is not None

    def excluded(self, path: str) -> bool:
        """Whether requests to ``path`` get no rollout."""
        return bool(self.exclude_paths) and path.startswith(self.exclude_paths)

    def sticky_key(
        self,
        request: Any,
        header: Callable[[str], str | None],
        cookie: Callable[[str], str | None],
    ) -> str | None:
        """The request's sticky key: the ``key`` callable, else the header, else the cookie."""
        value: Any = None
        if self.key is not None:
            try:
                value = self.key(request)
            except Exception:
                _logged.warning("key", "the sticky key callable raised; no key", exc_info=True)
                value = None
        if value is None and self.key_header is not None:
            value = header(self.key_header)
        if value is None and self.key_cookie is not None:
            value = cookie(self.key_cookie)
        return normalize_key(value)


def normalize_key(value: Any) -> str | None:
    """A sticky key as a bounded string (long keys are hashed), or ``None``."""
    if value is None:
        return None
    key = value if isinstance(value, str) else str(value)
    if not key:
        return None
    if len(key) > MAX_KEY_CHARS:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """One cookie's value from a ``Cookie`` header (lenient, like browsers send it)."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        k, sep, v = part.partition("=")
        if sep and k.strip() == name:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            return v
    return None


_logged = LogOnce(log, prefix="synth-middleware: ")  # per process: a user callable's bugs


# ---------------------------------------------------------------- the request's rollout


def _incoming_baggage(cfg: WebConfig, baggage_header: str | None) -> tuple[Any, Any, Any]:
    get = otel_baggage.get_baggage
    ctx = otel_context.get_current()
    rid = get(BAGGAGE_ROLLOUT, ctx)
    if rid is None and baggage_header:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        ctx = W3CBaggagePropagator().extract({"baggage": baggage_header})
        rid = get(BAGGAGE_ROLLOUT, ctx)
    if not isinstance(rid, str) or not rid or len(rid) > _MAX_ID_CHARS:
        return None, None, None
    return get(BAGGAGE_SESSION, ctx), rid, get(BAGGAGE_CANDIDATE, ctx)


class RequestRollout:
    """One request's rollout.

    Created at the request's start (its ids go on the current span when it
    records, e.g. the server span of OpenTelemetry's instrumentation);
    :meth:`activate` makes it current (context variable and OTel context) and
    :meth:`deactivate` restores the caller's context; :meth:`finish` puts the
    final ids (session and candidate, known after the first wrapped call) on
    the request span.
    """

    __slots__ = ("_ctx_token", "_otel_token", "_span", "cfg", "rollout")

    def __init__(
        self, cfg: WebConfig, key: str | None = None, *, baggage_header: str | None = None
    ) -> None:
        self.cfg = cfg
        r: Rollout | None = None
        if cfg.baggage:
            session, rid, candidate = _incoming_baggage(cfg, baggage_header)
            if (
                rid is not None
                and isinstance(session, str)
                and (cfg.session is None or session == cfg.session)
            ):
                # an upstream service's rollout: join it (it records the rollout)
                r = Rollout(
                    session_id=session,
                    rollout_id=rid,
                    candidate_id=candidate if isinstance(candidate, str) else None,
                    key=key,
                    _recorded=True,
                )
        if r is None:
            r = Rollout(session_id=cfg.session, rollout_id=new_rollout_id(), key=key)
        self.rollout = r
        self._ctx_token: Token[Rollout | None] | None = None
        self._otel_token: object | None = None
        span = trace.get_current_span()
        self._span: Span | None = None
        if span.is_recording():
            self._span = span
            span.set_attributes(id_attributes(r))
            anchor(r, span.get_span_context(), cfg.tracer_provider)

    def activate(self) -> None:
        """Make the rollout current for this context (and what it spawns)."""
        r = self.rollout
        self._ctx_token = _set_current(r)
        ctx = otel_context.set_value(OTEL_ROLLOUT_KEY, r.rollout_id)
        if r.session_id is not None:
            ctx = otel_context.set_value(OTEL_SESSION_KEY, r.session_id, ctx)
        if self.cfg.baggage:
            ctx = otel_baggage.set_baggage(BAGGAGE_ROLLOUT, r.rollout_id, ctx)
            if r.session_id:
                ctx = otel_baggage.set_baggage(BAGGAGE_SESSION, r.session_id, ctx)
            if r.candidate_id:
                ctx = otel_baggage.set_baggage(BAGGAGE_CANDIDATE, r.candidate_id, ctx)
        self._otel_token = otel_context.attach(ctx)

    def deactivate(self) -> None:
        """Restore the context :meth:`activate` replaced."""
        if self._otel_token is not None:
            _safe_detach(self._otel_token)
            self._otel_token = None
        if self._ctx_token is not None:
            _reset_current(self._ctx_token)
            self._ctx_token = None

    def finish(self) -> None:
        """The request is done: the final ids on the request span (if still open)."""
        span = self._span
        if span is not None and span.is_recording():
            span.set_attributes(id_attributes(self.rollout))

    def token(self) -> str:
        """The signed token for the response header (ids known at this moment)."""
        return issue_token(self.rollout, self.cfg.secret)


# ---------------------------------------------------------------- feedback


class FeedbackError(Exception):
    """A refused feedback request: HTTP ``status`` and a JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"code": ..., "message": ...}}``."""
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True, slots=True)
class Feedback:
    """A validated feedback request: the verified token and the reward."""

    token: TokenData
    value: float
    feedback: str | None = None
    metadata: dict[str, Any] | None = None
    key: str | None = None  # the reward's idempotency key ("once"), or None: a fresh one


def check_body_size(content_length: str | None) -> None:
    """Refuse (413) a declared body larger than :data:`MAX_FEEDBACK_BODY`."""
    if content_length:
        try:
            n = int(content_length)
        except ValueError:
            raise FeedbackError(400, "invalid_request", "bad Content-Length") from None
        if n > MAX_FEEDBACK_BODY:
            raise too_large()


def too_large() -> FeedbackError:
    """The error for a feedback body over :data:`MAX_FEEDBACK_BODY`."""
    return FeedbackError(
        413, "body_too_large", f"feedback body is larger than {MAX_FEEDBACK_BODY} bytes"
    )


def parse_feedback(
    body: bytes,
    *,
    secret: str | bytes | None = None,
    max_age: float | None = None,
    per_token: str = "once",
) -> Feedback:
    """Validate a feedback body ``{"token", "reward", "feedback"?, "metadata"?}``.

    Raises :class:`FeedbackError`: 413 (too large), 400 (not a JSON object),
    422 (missing token, a reward that is not a finite number within +-1e6,
    feedback not a string or too long, metadata not an object), 403 (forged,
    malformed or expired token). With ``per_token="once"`` the reward's
    idempotency key is derived from the token, so the token rewards its
    rollout once, in any process.
    """
    if len(body) > MAX_FEEDBACK_BODY:
        raise too_large()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FeedbackError(400, "invalid_json", "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise FeedbackError(400, "invalid_json", "body must be a JSON object")
    if "reward" not in data:
        raise FeedbackError(422, "invalid_reward", "'reward' is required")
    value = data["reward"]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FeedbackError(422, "invalid_reward", "'reward' must be a number")
    problem = reward_error(value)
    if problem is not None:
        raise FeedbackError(422, "invalid_reward", f"'reward': {problem}")
    value = float(value)
    feedback = data.get("feedback")
    problem = feedback_error(feedback)
    if problem is not None:
        raise FeedbackError(422, "invalid_feedback", f"'feedback': {problem}")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise FeedbackError(422, "invalid_metadata", "'metadata' must be an object")
    raw_token = data.get("token")
    token = verify_token(raw_token, secret, max_age)
    if per_token not in FEEDBACK_MODES:
        raise ValueError(f"per_token must be one of {', '.join(FEEDBACK_MODES)}")
    key = None
    if per_token == "once":
        # verify_token accepted it: a str
        digest = hashlib.blake2b(str(raw_token).encode("ascii"), digest_size=16).hexdigest()
        key = f"fb_{digest}"
    return Feedback(token, value, feedback, dict(metadata) if metadata else None, key)


_replay_lock = threading.Lock()
_replays: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()


def submit_feedback(fb: Feedback) -> dict[str, Any]:
    """Queue the reward (non-blocking); the JSON body of the 202 answer.

    A token already used in this process (``fb.key`` set) answers the first
    result without queueing again, or 409 ``token_already_used`` if it now
    carries another reward; across processes the derived idempotency key
    makes the backend count it once.
    """
    from synth_middleware.client.rewards import reward

    t = fb.token
    if fb.key is not None:
        with _replay_lock:
            seen = _replays.get(fb.key)
        if seen is not None:
            if seen[0] != fb.value:
                raise FeedbackError(
                    409,
                    "token_already_used",
                    "this token already reported another reward; one reward per token",
                )
            return dict(seen[1])
    r = Rollout(t.session_id, t.rollout_id, t.candidate_id)
    try:
        key = reward(
            r, fb.value, feedback=fb.feedback, metadata=fb.metadata, idempotency_key=fb.key
        )
    except SynthError as exc:
        raise FeedbackError(503, "unavailable", str(exc)) from None
    except ValueError as exc:
        raise FeedbackError(422, "invalid_reward", str(exc)) from None
    out = {"status": "accepted", "rollout_id": t.rollout_id, "idempotency_key": key}
    if fb.key is not None:
        with _replay_lock:
            _replays[fb.key] = (fb.value, dict(out))
            while len(_replays) > _REPLAY_MEMORY:
                _replays.popitem(last=False)
    return out


def forbidden() -> FeedbackError:
    """The error for a feedback request the app's auth check refused."""
    return FeedbackError(403, "forbidden", "feedback refused by the auth check")
