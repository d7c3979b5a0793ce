"""HTTP plumbing shared by the sync and async SDK clients.

Resolves the backend URL (``SYNTH_URL``, ``SYNTH_BACKEND_URL``,
``RUST_BACKEND_URL``, else a local ``synth-middleware serve``) and key
(``SYNTH_API_KEY``), sends it as ``Authorization: Bearer`` and ``X-API-Key``,
and turns error answers into :class:`~synth_middleware.errors.BackendError`
subclasses carrying the server's ``{error: {code, message}}``. The key never
appears in a message, a ``repr`` or a log line.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from synth_middleware.errors import BackendError, error_for_status
from synth_middleware.wire.dialect import (
    api_key_from_env,
    parse_retry_after,
    request_headers,
    url_from_env,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def resolve_base_url(base_url: str | None = None) -> str:
    """The explicit URL, else the first of ``SYNTH_URL``/``SYNTH_BACKEND_URL``/
    ``RUST_BACKEND_URL``, else a local server; without a trailing ``/`` or ``/api``."""
    url = base_url or url_from_env()
    url = (url or DEFAULT_BASE_URL).rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    return url


def resolve_api_key(api_key: str | None = None) -> str | None:
    """The explicit key, else ``SYNTH_API_KEY`` (``None``: send none, for a local server)."""
    return api_key or api_key_from_env()


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call: method, path (under the base URL) and its JSON body and params."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


def _error(response: httpx.Response) -> BackendError:
    status = response.status_code
    code: str | None = None
    message = response.text[:500] or response.reason_phrase
    try:
        err = response.json().get("error")
        if isinstance(err, dict):
            code = str(err.get("code")) if err.get("code") else None
            message = str(err.get("message") or message)
    except (ValueError, AttributeError):
        pass
    text = f"{response.request.method} {response.request.url.path}: {status} {message}"
    # the HTTP backend's mapping: 408 and 429 are retryable, not "invalid request"
    return error_for_status(
        status, text, code=code, retry_after=parse_retry_after(response.headers.get("retry-after"))
    )


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error(response)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise BackendError(
            f"{response.request.url.path}: the backend answered non-JSON", status=None
        ) from None


def _params(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    return {k: v for k, v in params.items() if v is not None}


@dataclass
class Transport:
    """A sync ``httpx.Client`` and a lazily created, per-event-loop ``httpx.AsyncClient``.

    URLs are absolute and auth headers are added per request, so a caller's own
    ``httpx.Client`` (proxies, TLS settings, mounts) works as is.
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    client: httpx.Client | None = None
    _async: httpx.AsyncClient | None = field(default=None, repr=False)
    _async_loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _owns_client: bool = True

    def headers(self) -> dict[str, str]:
        """Auth and identification headers."""
        return request_headers(self.api_key)

    def _sync(self) -> httpx.Client:
        if self.client is None:
            self.client = httpx.Client(timeout=self.timeout)
            self._owns_client = True
        return self.client

    def _aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop or self._async.is_closed:
            # an AsyncClient's connections belong to the loop that opened them
            self._async = httpx.AsyncClient(timeout=self.timeout)
            self._async_loop = loop
        return self._async

    def request(self, call: Call) -> Any:
        """Send ``call`` and return its JSON answer (raises ``BackendError``)."""
        try:
            response = self._sync().request(
                call.method,
                self.base_url + call.path,
                json=call.json,
                params=_params(call.params),
                headers={**self.headers(), **(call.headers or {})},
            )
        except httpx.HTTPError as exc:
            raise BackendError(
                f"cannot reach the backend at {self.base_url}: {type(exc).__name__}: {exc}"
            ) from exc
        return _answer(response)

    async def arequest(self, call: Call) -> Any:
        """Async twin of :meth:`request`."""
        try:
            response = await self._aclient().request(
                call.method,
                self.base_url + call.path,
                json=call.json,
                params=_params(call.params),
                headers={**self.headers(), **(call.headers or {})},
            )
        except httpx.HTTPError as exc:
            raise BackendError(
                f"cannot reach the backend at {self.base_url}: {type(exc).__name__}: {exc}"
            ) from exc
        return _answer(response)

    def close(self) -> None:
        """Close the sync client (the async one closes with :meth:`aclose`)."""
        if self.client is not None and self._owns_client:
            self.client.close()
            self.client = None

    async def aclose(self) -> None:
        """Close the async client of the running loop and the sync client."""
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self.close()
