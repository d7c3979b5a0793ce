"""The ASGI middleware: one rollout per HTTP request.

A pure ASGI middleware (not ``BaseHTTPMiddleware``): the rollout is made
current around the whole downstream call, in the request's own task, so the
handler, its dependencies, sync handlers run in the thread pool, background
tasks, ``asyncio`` tasks spawned by the handler and streaming bodies all see
it, until the last byte of the response is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synth_middleware.client.web import (
    DEFAULT_TOKEN_MAX_AGE,
    FEEDBACK_PATH,
    ROLLOUT_HEADER,
    RequestRollout,
    WebConfig,
    cookie_value,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

SCOPE_CONFIG = "synth_middleware.config"
"""Scope key under which the middleware leaves its :class:`WebConfig` (for the feedback router)."""
STATE_ROLLOUT = "synth_rollout"
"""``request.state`` attribute holding the request's rollout."""


class SynthMiddleware:
    """Open one rollout per HTTP request; return its signed token in ``x-synth-rollout``.

    ::

        app = FastAPI()
        app.add_middleware(SynthMiddleware, key_header="x-user-id")

    Every wrapped client call made while the request is handled joins the
    request's rollout. Options:

    * ``key`` (callable ``(request) -> key``), ``key_header``, ``key_cookie``:
      where the sticky key comes from (tried in that order).
    * ``session``: preset the session of request rollouts, so tokens issued
      before the first wrapped call (streaming responses) name it.
    * ``secret``: signs the tokens (default ``SYNTH_TOKEN_SECRET``, else a
      random per-process secret, with one warning).
    * ``header``: the response header (default ``x-synth-rollout``).
    * ``baggage``: put the ids in W3C baggage for downstream services and join
      a rollout arriving in incoming baggage (only between trusted services).
    * ``exclude_paths``: path prefixes that get no rollout (default: the
      feedback endpoint).
    * ``token_max_age``: seconds a token is accepted by the feedback router.
    * ``tracer_provider``: for the reward span when a reward arrives outside
      the request's trace (default: the wrapped client's, else the global one).
    * ``feedback_per_token``: ``"once"`` (default: one reward per token, a
      replay answers the first result) or ``"all"`` (every feedback post counts).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        key: Callable[[Request], Any] | None = None,
        key_header: str | None = None,
        key_cookie: str | None = None,
        session: str | None = None,
        secret: str | bytes | None = None,
        header: str = ROLLOUT_HEADER,
        baggage: bool = False,
        exclude_paths: tuple[str, ...] | list[str] | str = (FEEDBACK_PATH,),
        token_max_age: float | None = DEFAULT_TOKEN_MAX_AGE,
        tracer_provider: TracerProvider | None = None,
        feedback_per_token: str = "once",
    ) -> None:
        self.app = app
        self.config = WebConfig(
            header=header,
            key_header=key_header,
            key_cookie=key_cookie,
            key=key,
            session=session,
            secret=secret,
            baggage=baggage,
            exclude_paths=tuple(
                [exclude_paths] if isinstance(exclude_paths, str) else exclude_paths
            ),
            token_max_age=token_max_age,
            tracer_provider=tracer_provider,
            feedback_per_token=feedback_per_token,
        )
        self._header = self.config.header.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call (only ``http`` scopes get a rollout)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cfg = self.config
        if cfg.excluded(scope.get("path", "")):
            await self.app({**scope, SCOPE_CONFIG: cfg}, receive, send)
            return
        key = None
        if cfg.wants_key:
            request = Request(scope) if cfg.key is not None else None
            key = cfg.sticky_key(request, _HeaderReader(scope), _CookieReader(scope))
        bag = _header(scope, b"baggage") if cfg.baggage else None
        rr = RequestRollout(cfg, key, baggage_header=bag)
        state = scope.get("state")
        state = {**state, STATE_ROLLOUT: rr.rollout} if state else {STATE_ROLLOUT: rr.rollout}
        scope = {**scope, "state": state, SCOPE_CONFIG: cfg}
        name = self._header

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                headers.append((name, rr.token().encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        rr.activate()
        try:
            await self.app(scope, receive, send_with_token)
        finally:
            rr.deactivate()
            rr.finish()


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")  # type: ignore[no-any-return]
    return None


class _HeaderReader:
    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self, name: str) -> str | None:
        return _header(self.scope, name.encode("latin-1"))


class _CookieReader:
    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self, name: str) -> str | None:
        return cookie_value(_header(self.scope, b"cookie"), name)
