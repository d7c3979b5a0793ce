"""Running the app under uvicorn (what ``synth-middleware serve`` does)."""

from __future__ import annotations

import gc
import importlib.util
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import replace

import uvicorn
from fastapi import FastAPI

from synth_middleware.engine.factory import display_target
from synth_middleware.engine.replicas import ReplicaOptions, open_engine
from synth_middleware.server.app import create_app
from synth_middleware.server.config import ServerConfig

logger = logging.getLogger("synth_middleware.server")


class StreamClosingServer(uvicorn.Server):
    """A uvicorn server that ends the app's open event streams and long polls as
    soon as shutdown starts (uvicorn waits for open responses before it runs the
    app's shutdown, so they would otherwise hold it up to the graceful timeout)."""

    def __init__(self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the change feed, then shut down as usual."""
        try:
            self._on_shutdown()
        except Exception:
            logger.exception("synth-middleware server: closing the change feed failed")
        await super().shutdown(sockets)


def server_for(app: FastAPI, config: uvicorn.Config) -> uvicorn.Server:
    """A :class:`StreamClosingServer` for ``app`` (built by ``create_app``)."""
    return StreamClosingServer(config, on_shutdown=app.state.synth.feed.close)


class InsecureBindError(RuntimeError):
    """A non-loopback address without an API key (and without ``insecure``)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname may resolve anywhere: treat it as public


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to expose the server beyond loopback without a key, unless told to."""
    if not api_key and not insecure and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to listen on {host!r} without an API key: anyone who can reach it could "
            "read and change your sessions. Set SYNTH_API_KEY (or --api-key), bind to "
            "127.0.0.1, or pass --insecure if you really mean it."
        )


def _fastest(module: str, fast: str, fallback: str) -> str:
    return fast if importlib.util.find_spec(module) is not None else fallback


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    db_path: str | os.PathLike[str] = ".synth/synth.db",
    config: ServerConfig | None = None,
    insecure: bool = False,
    log_level: str = "info",
    access_log: bool = False,
    optimizer: bool = True,
    max_staleness: float = 0.0,
    replica_options: ReplicaOptions | None = None,
) -> None:
    """Open the database and serve the app until interrupted (SIGINT/SIGTERM).

    ``optimizer``: run the sessions' online optimizers (proposals, pruning) in
    this process; their proposer model is configured by the session config and
    ``SYNTH_PROPOSER_URL``/``SYNTH_PROPOSER_MODEL``/``SYNTH_PROPOSER_API_KEY``.
    ``db_path`` may be a ``postgresql://`` URL: then several replicas can serve
    the same sessions (see :mod:`synth_middleware.engine.replicas`;
    ``max_staleness`` seconds bounds how old reads may be, ``replica_options``
    the lease timing).
    """
    config = replace(config or ServerConfig(), bind_host=host)
    check_bind(host, config.api_key, insecure)
    engine, replicas = open_engine(
        db_path,
        optimizer=optimizer,
        max_staleness=max_staleness,
        replica_options=replica_options,
    )
    # after the database opened: a mistake there is the one line the user sees
    if not config.api_key and not is_loopback(host):
        logger.warning(
            "synth-middleware: listening on %s WITHOUT an API key (--insecure): anyone who "
            "can reach it can read and change every session",
            host,
        )
    elif not config.api_key:
        logger.warning(
            "synth-middleware: auth off (no API key): any process on this machine can read "
            "and change every session%s; only loopback Host names and pages are accepted. "
            "Set SYNTH_API_KEY to require a key",
            " and spend the upstream key through the proxy" if config.upstream_url else "",
        )
    try:
        app = create_app(engine, config=config)
        if replicas is not None:  # the app's lifespan starts and stops it
            app.state.synth.extra["replicas"] = replicas
        uv_config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop=_fastest("uvloop", "uvloop", "asyncio"),
            http=_fastest("httptools", "httptools", "h11"),
            log_level=log_level,
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        server = server_for(app, uv_config)
        auth = "on" if config.api_key else "OFF"
        upstream = config.upstream_url or "none (proxy disabled)"
        print(
            f"synth-middleware: serving {display_target(db_path)} on http://{host}:{port} "
            f"(auth {auth}; optimizer {'on' if optimizer else 'off'}; proxy upstream: "
            f"{upstream}; dashboard: http://{host}:{port}/)",
            flush=True,
        )
        # The modules, schemas and routes loaded so far live as long as the process:
        # take them out of the cyclic collector's full passes, which otherwise walk
        # them all and stall the event loop (measured: 50 ms of CPU each, 1 ms after).
        gc.collect()
        gc.freeze()
        server.run()
    finally:
        if replicas is not None:
            replicas.stop()  # (idempotent) when the server ended without its lifespan
        engine.close()
