"""Every error the server answers is JSON: ``{"error": {"code": ..., "message": ...}}``.

FastAPI's own handlers (validation, 404, 405) answer in other shapes, so the
app factory installs :func:`install_error_handlers`, which maps:

* :class:`ApiError` (raised by our routes) to its status and code;
* :class:`~synth_middleware.errors.BackendError` from the engine (``NotFoundError``
  404, ``InvalidRequestError`` 400, ``StorageError`` 503);
* request validation errors to 422 ``validation_error`` (400 ``invalid_json`` when
  the body is not JSON at all), naming the offending field;
* Starlette's ``HTTPException`` (unknown route, wrong method) to its status;
* anything else to 500 ``internal_error`` (logged with its traceback, never echoed).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from synth_middleware.errors import BackendError
from synth_middleware.server._responses import json_response

logger = logging.getLogger("synth_middleware.server")

_STATUS_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "upstream_timeout",
}


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", ...extra}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON error envelope."""
    return {"error": {"code": code, "message": message, **extra}}


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """A JSON error response."""
    return json_response(error_body(code, message, **extra), status=status, headers=headers)


def code_for_status(status: int) -> str:
    """The default error code for an HTTP status."""
    return _STATUS_CODES.get(status, "error" if status < 500 else "server_error")


def _field_path(loc: Any) -> str:
    parts = [str(p) for p in loc if p != "body"] if isinstance(loc, list | tuple) else [str(loc)]
    return ".".join(parts) or "body"


def _validation_message(errors: list[dict[str, Any]]) -> str:
    shown = [f"{_field_path(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(shown) + more


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors[:20]:
        out.append(
            {
                "field": _field_path(e.get("loc", ())),
                "message": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
        )
    return out


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)


async def _backend_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BackendError)
    status = exc.status if exc.status is not None else 503
    code = exc.code or code_for_status(status)
    if status >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(status, code, str(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "invalid_json", "the request body is not valid JSON")
    return error_response(
        422, "validation_error", _validation_message(errors), details=_jsonable_errors(errors)
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no route {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(status, code_for_status(status), message, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


_HANDLERS: tuple[
    tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]], ...
] = (
    (ApiError, _api_error),
    (BackendError, _backend_error),
    (RequestValidationError, _validation_error),
    (StarletteHTTPException, _http_error),
)


async def error_response_for(request: Request, exc: Exception) -> Response:
    """The response the installed handlers give ``exc`` (for routes answered outside
    FastAPI's exception middleware, so both paths answer errors alike)."""
    for cls, handler in _HANDLERS:  # disjoint classes: the first match is the handler
        if isinstance(exc, cls):
            return await handler(request, exc)
    return await _unexpected(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app answers a JSON ``{"error": {"code", "message"}}``."""
    for cls, handler in _HANDLERS:
        app.add_exception_handler(cls, handler)
    app.add_exception_handler(Exception, _unexpected)
