"""Which origins a server-held credential may be sent to.

An origin is ``(scheme, host, port)``, the port made explicit (443 for
https, 80 for http). A credential the operator configured (the proposer key,
``ENVIRONMENT_API_KEY``) goes only to an origin the operator allowed, never
to one a request named: the same host on another port is another origin.

Allow-list entries are origins (``https://llm.internal:8443``) or, for a
host the operator trusts whole, a bare host name (``llm.internal``: any
scheme and port on it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

_log = logging.getLogger("synth_middleware.server")

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str | None) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL, or ``None`` if it is not one."""
    if not url or not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def origin_allowed(url: str | None, allowed: Iterable[str | None]) -> bool:
    """Whether ``url``'s origin is one of ``allowed`` (origins, URLs or bare hosts)."""
    origin = origin_of(url)
    if origin is None:
        return False
    for entry in allowed:
        if not entry or not entry.strip():
            continue
        entry = entry.strip()
        if "://" in entry:
            if origin_of(entry) == origin:
                return True
        elif entry.lower() == origin[1]:
            return True
    return False


def split_list(value: str | None) -> list[str]:
    """A comma-separated environment value as a list of non-empty entries."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


ENV_CONTAINER_KEY = "ENVIRONMENT_API_KEY"
ENV_CONTAINER_ORIGINS = "SYNTH_CONTAINER_ALLOWED_ORIGINS"


def container_key_for(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The server's ``ENVIRONMENT_API_KEY`` for a job's ``container_url``, or ``None``
    when that URL's origin is not listed in ``SYNTH_CONTAINER_ALLOWED_ORIGINS``
    (comma separated origins, or bare hosts trusted on every port).

    A job names its container in the request; without this check any caller of
    the jobs API could have the server send its key to a URL of their choosing.
    A job that brings its own ``container_api_key`` does not need this.
    """
    env = os.environ if env is None else env
    key = env.get(ENV_CONTAINER_KEY) or None
    if key is None:
        return None
    if origin_allowed(url, split_list(env.get(ENV_CONTAINER_ORIGINS))):
        return key
    _log.warning(
        "offline job: not sending the server's %s to %s (origin not in %s)",
        ENV_CONTAINER_KEY,
        _show_origin(url),
        ENV_CONTAINER_ORIGINS,
    )
    return None


def _show_origin(url: str) -> str:
    origin = origin_of(url)
    return f"{origin[0]}://{origin[1]}:{origin[2]}" if origin else "a non-http(s) URL"
