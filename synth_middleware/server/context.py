"""What every route needs: the engine, its single writer, the change feed, settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import cachetools
from starlette.requests import Request

from synth_middleware.engine import Engine
from synth_middleware.server.config import ServerConfig
from synth_middleware.server.feed import ChangeFeed
from synth_middleware.server.proxy_selection import CandidateChooser
from synth_middleware.server.writer import EngineWriter

ROLLOUT_MEMORY = 100_000


class ProxyHandle(Protocol):
    """What the context knows of the app's proxy service
    (:class:`~synth_middleware.server.proxy.ProxyService`, which imports this module)."""

    chooser: CandidateChooser
    """Picks the proxied sessions' candidates (invalidate a session after adding some)."""

    async def close(self) -> None:
        """Close the upstream connections (at app shutdown)."""
        ...


@dataclass
class ServerContext:
    """Shared by the routes of one app (``app.state.synth``).

    ``rollouts`` remembers ``rollout_id -> (session_id, candidate_id)`` for
    rollouts this process served (proxy) or saw, so a later reward that names
    only the rollout (the older MIPRO ``status`` route) is attributed to the
    right candidate even before the rollout record is committed.
    """

    engine: Engine
    config: ServerConfig
    feed: ChangeFeed
    writer: EngineWriter
    owns_engine: bool = False
    proxy: ProxyHandle | None = None
    rollouts: cachetools.LRUCache[str, tuple[str, str | None]] = field(
        default_factory=lambda: cachetools.LRUCache(maxsize=ROLLOUT_MEMORY)
    )
    known_sessions: set[str] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)

    def require_session(self, session_id: str) -> None:
        """Raise ``NotFoundError`` (404 ``session_not_found``) unless the session exists.

        Sessions are never deleted, so a session seen once is remembered and the
        check costs a set lookup instead of a state read.
        """
        if session_id not in self.known_sessions:
            self.engine.get_state(session_id)
            self.known_sessions.add(session_id)

    def candidate_session(self, candidate_id: str) -> str | None:
        """The session of a candidate, ``None`` if unknown (remembered by the engine,
        so the reward and candidate routes skip a database read)."""
        return self.engine.candidate_session(candidate_id)

    def base_url(self, request: Request) -> str:
        """The server's public base URL, without a trailing slash."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")


async def get_context(request: Request) -> ServerContext:
    """FastAPI dependency: the app's :class:`ServerContext` (``async``: FastAPI runs a
    plain ``def`` dependency in a worker thread, which would cost a thread hop per
    request)."""
    return request.app.state.synth  # type: ignore[no-any-return]
