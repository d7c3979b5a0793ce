"""The app factory: the engine over HTTP with the wire API, the proxy and the dashboard."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI

from synth_middleware import __version__
from synth_middleware.engine import Engine
from synth_middleware.engine.replicas import ReplicaCoordinator, open_engine
from synth_middleware.server._aliases import PathAliases
from synth_middleware.server._auth import ApiKeyMiddleware
from synth_middleware.server._errors import install_error_handlers
from synth_middleware.server._guard import HostPolicy, RequestGuardMiddleware
from synth_middleware.server._limits import BodyLimitMiddleware
from synth_middleware.server.config import ServerConfig, upstream_key_from_env
from synth_middleware.server.context import ServerContext
from synth_middleware.server.feed import ChangeFeed
from synth_middleware.server.proxy import ProxyService
from synth_middleware.server.routes import (
    batches,
    candidates,
    events,
    health,
    jobs,
    legacy,
    sessions,
)
from synth_middleware.server.routes.hot import HotRoutes
from synth_middleware.server.writer import EngineWriter
from synth_middleware.settings import Settings

DESCRIPTION = (
    "The synth-middleware engine over HTTP: online sessions, candidates, rewards, "
    "a change feed and a Pattern A chat-completions proxy. Every route but /health "
    "needs the server's key (Authorization: Bearer, or X-API-Key) when it has one. "
    'Errors are JSON: {"error": {"code", "message"}}.'
)


def create_app(
    engine: Engine | None = None,
    *,
    db_path: str | os.PathLike[str] | None = None,
    config: ServerConfig | None = None,
    optimizer: bool = False,
    **settings: Any,
) -> FastAPI:
    """Build the ASGI app.

    ``engine``: the engine to serve (the app does not close it); else one is
    opened on ``db_path`` (default ``SYNTH_DB`` or ``.synth/synth.db``), with
    the online optimizers running when ``optimizer`` is true, and closed at
    shutdown. Settings come from ``config`` and/or keyword
    arguments of :class:`~synth_middleware.server.config.ServerConfig`
    (``api_key``, ``upstream_url``, ``upstream_api_key``, ``upstream_timeout``,
    ``max_body_bytes``, ``public_url``, ...). The upstream key defaults to
    ``SYNTH_UPSTREAM_API_KEY`` or ``OPENAI_API_KEY``; the API key is *not* read
    from the environment here (the ``serve`` command does that).
    """
    cfg = replace(config or ServerConfig(), **settings)
    if cfg.upstream_api_key is None:
        cfg = replace(cfg, upstream_api_key=upstream_key_from_env())
    owns = engine is None
    replicas: ReplicaCoordinator | None = None
    if engine is None:  # a SQLite path, or a postgresql:// URL (then with replica leases)
        path = db_path or Settings().db_path  # SYNTH_DB as it is now, not at import
        engine, replicas = open_engine(path, optimizer=optimizer)
    feed = ChangeFeed()
    engine.add_commit_listener(lambda sessions: feed.notify(sessions))
    # On PostgreSQL a write waits on the network and the WAL flush: never on the event loop.
    remote = getattr(engine.store, "dialect", None) == "postgresql"
    writer = EngineWriter(engine, threaded=cfg.writer_thread or remote)
    ctx = ServerContext(engine=engine, config=cfg, feed=feed, writer=writer, owns_engine=owns)
    if replicas is not None:
        ctx.extra["replicas"] = replicas
    ctx.proxy = ProxyService(ctx)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        # PostgreSQL replicas (ours, or set by `serve`): started here, and stopped here,
        # because uvicorn re-raises SIGTERM after the shutdown and nothing runs after it.
        coordinator: ReplicaCoordinator | None = ctx.extra.get("replicas")
        if coordinator is not None:
            coordinator.add_change_listener(feed.notify)
            coordinator.start()
        try:
            yield
        finally:
            if coordinator is not None:
                coordinator.stop()  # hands the sessions this replica owns to the others
            await jobs.shutdown_jobs(ctx)
            feed.close()
            if ctx.proxy is not None:
                await ctx.proxy.close()
            writer.stop()
            if ctx.owns_engine:
                engine.close()

    app = FastAPI(
        title="synth-middleware",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        strict_content_type=False,
    )
    app.state.synth = ctx
    install_error_handlers(app)
    # Routes are matched in order: the hot ones (proxy, rewards, state, batches) first.
    from synth_middleware.server import proxy as proxy_routes

    for module in (proxy_routes, sessions, batches, candidates, health, events, legacy):
        app.include_router(module.router)
    app.include_router(jobs.router)
    if cfg.dashboard:
        from synth_middleware.server import dashboard

        app.include_router(dashboard.router)
    # Added last = outermost: auth first, then the request guard (content type; Host and
    # Origin without a key), then the body limit, then the hot routes
    # (answered before FastAPI's routing: see routes/hot.py).
    app.add_middleware(HotRoutes, ctx=ctx)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    policy = None
    if not cfg.api_key:
        policy = HostPolicy(cfg.allowed_hosts, bind_host=cfg.bind_host, public_url=cfg.public_url)
    app.add_middleware(RequestGuardMiddleware, policy=policy)
    if cfg.api_key:
        # a container's proxy call for a rollout a job has in flight carries its own
        # capability (the rollout URL): it may hold only its model provider's key
        app.add_middleware(
            ApiKeyMiddleware,
            api_key=cfg.api_key,
            allow=lambda scope: jobs.job_rollout_call(ctx, scope),
        )
    # Outermost: the hosted client's path spellings (/api/v2/..., /api/systems/...).
    app.add_middleware(PathAliases)
    return app
