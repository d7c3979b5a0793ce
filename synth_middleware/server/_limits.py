"""Request-body size limit as a pure ASGI middleware.

A declared ``Content-Length`` over the limit is refused at once with 413; a
body without one (chunked, or over HTTP/2) is counted as it streams and
refused with 413 as soon as it passes the limit. Nothing of a refused request
reaches the engine.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synth_middleware.server._responses import dumps

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (an HTTP 413, so
    the app's error handler answers it even when a framework wraps body errors)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit} byte limit")


def _too_large_body(limit: int) -> bytes:
    return dumps(
        {
            "error": {
                "code": "payload_too_large",
                "message": f"the request body is over the {limit} byte limit",
            }
        }
    )


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 JSON."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        body = _too_large_body(self.max_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared: int | None = None
        chunked = False
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._refuse(send)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        framed = declared is None or declared >= 0
        if framed and not chunked and scope.get("http_version") in ("1.0", "1.1"):
            # HTTP/1 frames the body by Content-Length (none: no body), so it cannot
            # pass the limit: skip counting it (two closures per request).
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)
