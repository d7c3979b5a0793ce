"""Requests a web page could forge: refused before any route runs.

* **Content type.** Every route that takes a body takes JSON. A body sent with
  another declared ``Content-Type`` (``text/plain``, a form, ...) is refused
  with 415: those are the types a cross-site page can post without a CORS
  preflight, so a JSON route accepting them could be driven from any web
  page. A body without ``Content-Type`` is still read as JSON (HTTP clients
  in scripts often send none).
* **Host and Origin, when the server has no API key.** Without a key the only
  thing standing between a web page and the API is the browser's same-origin
  policy, which DNS rebinding defeats (``evil.example`` made to resolve to
  127.0.0.1 sends ``Host: evil.example``). So a request whose ``Host`` is not
  an allowed host (loopback names, the bound address, the ``public_url``'s
  host and ``allowed_hosts``) gets 421, and one carrying an ``Origin`` (or
  ``Sec-Fetch-Site: cross-site``) from elsewhere gets 403. With a key, a page
  cannot send it without a CORS preflight (which this server never grants),
  so these checks are left to the key. ``allowed_hosts=("*",)`` turns them off.
  ``GET /health`` (no data) answers any ``Host``, for orchestrators' probes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from synth_middleware.server._responses import dumps

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain"})


def host_of(value: str) -> str:
    """The host part of a ``Host`` header or an authority (no port, no brackets), lower-case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_json(content_type: bytes) -> bool:
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class HostPolicy:
    """Which ``Host`` values and page origins may use a key-less server."""

    def __init__(
        self,
        allowed: Iterable[str] = (),
        *,
        bind_host: str | None = None,
        public_url: str | None = None,
    ) -> None:
        if isinstance(allowed, str):  # "a.example,b.example"
            allowed = allowed.split(",")
        hosts = {host_of(h) for h in allowed if h and h.strip()}
        self.any = "*" in hosts
        if bind_host and host_of(bind_host) not in ("0.0.0.0", "::", ""):
            hosts.add(host_of(bind_host))
        if public_url:
            netloc = urlsplit(public_url).netloc
            if netloc:
                hosts.add(host_of(netloc.rpartition("@")[2]))
        self.hosts = frozenset(hosts)

    def allows(self, host: str) -> bool:
        """Whether ``host`` (no port) is allowed."""
        return self.any or host in self.hosts or _is_loopback(host)


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, dumps({"error": {"code": code, "message": message}})


class RequestGuardMiddleware:
    """Refuse non-JSON bodies (415) always; with ``check_hosts``, a foreign ``Host``
    (421) or a foreign page ``Origin`` (403)."""

    def __init__(self, app: ASGIApp, *, policy: HostPolicy | None) -> None:
        self.app = app
        self.policy = policy  # None: the server has a key

    def _refusal(self, scope: Scope) -> tuple[int, bytes] | None:
        headers = scope.get("headers") or ()
        policy = self.policy
        probe = scope.get("method") in ("GET", "HEAD") and scope.get("path") == "/health"
        if policy is not None and not policy.any and not probe:  # /health: no data, any Host
            client = scope.get("client")
            in_process = bool(client and client[0] == "testclient")  # Starlette's TestClient
            for name, value in headers:
                if name == b"host":
                    host = host_of(value.decode("latin-1"))
                    if not policy.allows(host) and not (in_process and host == "testserver"):
                        return _error(
                            421,
                            "host_not_allowed",
                            f"Host {host[:100]!r} is not allowed on this server (no API key): "
                            "add it with --allowed-host, or set an API key",
                        )
                elif name == b"origin":
                    origin = value.decode("latin-1")
                    if origin != "null":
                        host = host_of(urlsplit(origin).netloc)
                    if origin == "null" or not policy.allows(host):
                        return _error(
                            403,
                            "origin_not_allowed",
                            "requests from other web pages are refused (no API key)",
                        )
                elif name == b"sec-fetch-site" and value.strip().lower() == b"cross-site":
                    return _error(
                        403,
                        "origin_not_allowed",
                        "requests from other web pages are refused (no API key)",
                    )
        if scope.get("method") in _BODY_METHODS:
            for name, value in headers:
                if name == b"content-type" and not _is_json(value):
                    return _error(
                        415,
                        "unsupported_media_type",
                        "send the body as JSON with Content-Type: application/json",
                    )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, body = refusal
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
