"""API-key authentication as a pure ASGI middleware.

When the server has a key, every request but ``GET /health`` (and the
dashboard's static shell at ``GET /``, which holds no data: the page asks for
the key and sends it with each API call) must carry it as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Keys are compared in
constant time (:func:`hmac.compare_digest`) and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from synth_middleware.server._responses import dumps

PUBLIC_PATHS = frozenset({"/health", "/"})
_UNAUTHORIZED = dumps(
    {
        "error": {
            "code": "unauthorized",
            "message": "missing or invalid API key: send 'Authorization: Bearer <key>' "
            "or 'X-API-Key: <key>'",
        }
    }
)


class ApiKeyMiddleware:
    """Refuse requests without the server's API key with 401 JSON."""

    def __init__(
        self, app: ASGIApp, *, api_key: str, allow: Callable[[Scope], bool] | None = None
    ) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._key = api_key.encode("utf-8")
        self._allow = allow  # requests that carry their own capability (a job's rollout URL)

    def _allowed(self, scope: Scope) -> bool:
        if scope.get("method") in ("GET", "HEAD") and scope.get("path") in PUBLIC_PATHS:
            return True
        if self._allow is not None and self._allow(scope):
            return True
        key = self._key
        ok = False
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key):
                    ok = True
            elif name == b"x-api-key" and hmac.compare_digest(value.strip(), key):
                ok = True
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                    (b"www-authenticate", b'Bearer realm="synth-middleware"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
