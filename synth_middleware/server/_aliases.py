"""Path aliases the hosted API's published client (synth-ai 0.9.11) uses.

That client builds some paths without a version and others under ``/v2``:

* ``GET /api/systems/{id}/candidates`` and ``GET /api/candidates/{cid}``
  (``PromptLearningClient`` strips the version from "global" paths);
* every ``GepaOnlineSession`` call under ``/api/v2/online/sessions...``;
* ``/api/v2/offline/jobs...``, ``/api/v2/systems/...``, ``/api/v2/candidates/...``
  when it is told ``api_version="v2"``.

:class:`PathAliases`, the outermost ASGI layer, rewrites them to the ``/api/v1``
routes before anything else sees the request (so auth, the body limit and
the hot routes treat both spellings alike) and records the path the client
sent in ``scope["synth.alias_of"]``.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

ALIAS_KEY = "synth.alias_of"

_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^/api/v2/(online/sessions|offline/jobs|systems|candidates)(?=/|$)"), r"/api/v1/\1"),
    (re.compile(r"^/api/(systems|candidates)(?=/)"), r"/api/v1/\1"),
)


def canonical_path(path: str) -> str:
    """``path`` with the hosted client's aliases rewritten to our ``/api/v1`` routes."""
    for pattern, repl in _REWRITES:
        new, n = pattern.subn(repl, path, count=1)
        if n:
            return new
    return path


class PathAliases:
    """Rewrite the hosted client's path spellings to the canonical routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request under its canonical path."""
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(("/api/v2/", "/api/systems/", "/api/candidates/")):
                new = canonical_path(path)
                if new != path:
                    scope = dict(scope)
                    scope[ALIAS_KEY] = path
                    scope["path"] = new
                    raw = scope.get("raw_path")
                    if isinstance(raw, bytes):
                        scope["raw_path"] = canonical_path(raw.decode("latin-1")).encode("latin-1")
        await self.app(scope, receive, send)
