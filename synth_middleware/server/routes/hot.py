"""The routes every rollout hits, answered without FastAPI's per-request machinery.

Profiling ``serve`` under load showed FastAPI's share of a reward request
(routing through the included routers, dependency solving, request wrapping)
at about three times the work the request itself does (validation, the
engine write). These few routes stay declared, documented and served as
FastAPI routes; :class:`HotRoutes`, a pure-ASGI layer behind the auth and
body-limit middlewares, answers them first when the request is ordinary:

* no query string (GET) or a JSON body (no ``Content-Type``, or
  ``application/json``) that the route's own pydantic model accepts, parsed
  as FastAPI parses it (``json.loads``, then validation in Python mode);
* headers within the route's declared limits.

Anything else (bad JSON, a body the model refuses, another content type,
query parameters, ``HEAD``) goes to FastAPI with the body replayed, so each
error keeps the single shape FastAPI's handlers give it. Errors raised while
serving (unknown session, rejected reward, ...) are answered by the same
handlers (:func:`~synth_middleware.server._errors.error_response_for`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synth_middleware.server import operations as ops
from synth_middleware.server._aliases import ALIAS_KEY
from synth_middleware.server._errors import error_response_for
from synth_middleware.server._responses import dumps
from synth_middleware.server.context import ServerContext
from synth_middleware.server.models import (
    MiproStatusRequest,
    RewardBatchRequest,
    RewardRequest,
    RolloutBatchRequest,
)
from synth_middleware.server.routes.batches import store_rewards, store_rollouts
from synth_middleware.server.routes.candidates import candidate_item
from synth_middleware.wire import MAX_ID_CHARS

MAX_HEADER_CHARS = MAX_ID_CHARS  # as the routes' Header(max_length=MAX_ID_CHARS)
_JSON_HEADERS = [(b"content-type", b"application/json")]

# (ctx, path parameters, validated body or None, idempotency-key header) -> answer body
Handler = Callable[[ServerContext, dict[str, str], Any, str | None], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """One route served by :class:`HotRoutes`: ``path`` in FastAPI's ``{param}``
    syntax, the request ``model`` (``None``: no body) and the handler."""

    method: str
    path: str
    model: type[BaseModel] | None
    handler: Handler

    def pattern(self) -> re.Pattern[str]:
        """The path as a regex, a parameter matching one segment (as Starlette's ``str``)."""
        parts = re.split(r"\{(\w+)\}", self.path)
        regex = "".join(
            f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
        )
        return re.compile(f"^{regex}$")


# -- handlers: the same operations the FastAPI routes call ------------------------


async def _reward(ctx: ServerContext, p: dict[str, str], body: Any, key: str | None) -> Any:
    return await ops.post_reward(ctx, p["session_id"], body, key)


async def _mipro_status(ctx: ServerContext, p: dict[str, str], body: Any, key: str | None) -> Any:
    return await ops.mipro_status(ctx, p["system_id"], body, key)


async def _rewards(ctx: ServerContext, p: dict[str, str], body: Any, key: str | None) -> Any:
    return await store_rewards(ctx, body.rewards, p.get("session_id"))


async def _rollouts(ctx: ServerContext, p: dict[str, str], body: Any, key: str | None) -> Any:
    return await store_rollouts(ctx, body.rollouts, p.get("session_id"))


async def _state(ctx: ServerContext, p: dict[str, str], body: Any, key: str | None) -> Any:
    return ops.get_state(ctx, p["session_id"])


async def _candidate(ctx: ServerContext, p: dict[str, str], body: Any, key: str | None) -> Any:
    return candidate_item(ctx, p["candidate_id"])


_SESSION = "/api/v1/online/sessions/{session_id}"
_LEGACY = "/api/prompt-learning/online"
ROUTES: tuple[HotRoute, ...] = (
    HotRoute("POST", f"{_SESSION}/reward", RewardRequest, _reward),
    HotRoute("POST", f"{_LEGACY}/mipro/sessions/{{session_id}}/reward", RewardRequest, _reward),
    HotRoute("POST", f"{_LEGACY}/gepa/sessions/{{session_id}}/reward", RewardRequest, _reward),
    HotRoute("POST", "/api/v1/rewards/batch", RewardBatchRequest, _rewards),
    HotRoute("POST", f"{_SESSION}/rewards:batch", RewardBatchRequest, _rewards),
    HotRoute("POST", "/api/v1/rollouts/batch", RolloutBatchRequest, _rollouts),
    HotRoute("POST", f"{_SESSION}/rollouts:batch", RolloutBatchRequest, _rollouts),
    HotRoute(
        "POST", f"{_LEGACY}/mipro/systems/{{system_id}}/status", MiproStatusRequest, _mipro_status
    ),
    HotRoute("GET", _SESSION, None, _state),
    HotRoute("GET", f"{_SESSION}/state", None, _state),
    HotRoute("GET", "/api/v1/candidates/{candidate_id}", None, _candidate),
)


# -- the ASGI layer -------------------------------------------------------------------


def _json_content(headers: list[tuple[bytes, bytes]]) -> bool:
    """No ``Content-Type`` or ``application/json`` (parameters allowed): FastAPI parses
    those as JSON too (it also takes ``+json`` types: those go to FastAPI)."""
    for name, value in headers:
        if name == b"content-type":
            return value.partition(b";")[0].strip().lower() == b"application/json"
    return True


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    for name, value in headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; ``None`` if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``body`` once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class HotRoutes:
    """Pure-ASGI middleware that answers :data:`ROUTES` itself when the request is
    ordinary and passes everything else to the app (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx
        self._static: dict[tuple[str, str], HotRoute] = {}
        self._templated: dict[str, list[tuple[re.Pattern[str], HotRoute]]] = {}
        for route in ROUTES:
            if "{" in route.path:
                self._templated.setdefault(route.method, []).append((route.pattern(), route))
            else:
                self._static[(route.method, route.path)] = route

    def match(self, method: str, path: str) -> tuple[HotRoute, dict[str, str]] | None:
        """The route and path parameters for a request, or ``None``."""
        route = self._static.get((method, path))
        if route is not None:
            return route, {}
        for pattern, route in self._templated.get(method, ()):
            m = pattern.match(path)
            if m is not None:
                return route, m.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        # an aliased request (the hosted client's spelling) may be answered differently
        if scope["type"] == "http" and not scope.get("root_path") and ALIAS_KEY not in scope:
            found = self.match(scope["method"], scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        key = _header(headers, b"idempotency-key")
        if key is not None and len(key) > MAX_HEADER_CHARS:
            await self.app(scope, receive, send)  # FastAPI answers the 422
            return
        body: Any = None
        if route.model is None:
            if scope.get("query_string"):
                await self.app(scope, receive, send)
                return
        else:
            raw = await _read_body(receive)  # a body over the limit raises here (413)
            if raw is None:
                return  # the client went away
            body = self._parse(route.model, raw, headers)
            if body is None:
                await self.app(scope, _replay(raw, receive), send)
                return
        try:
            data = await route.handler(self.ctx, params, body, key)
        except Exception as exc:  # the app's handlers shape it, as for FastAPI's routes
            response = await error_response_for(Request(scope), exc)
            await response(scope, receive, send)
            return
        payload = dumps(data)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    def _parse(
        model: type[BaseModel], raw: bytes, headers: list[tuple[bytes, bytes]]
    ) -> BaseModel | None:
        """The validated body, or ``None`` when FastAPI should answer (and word the error)."""
        if not raw or not _json_content(headers):
            return None
        try:
            return model.model_validate(json.loads(raw))
        except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
            return None
