"""Run the server in a background thread on loopback (tests, examples, benchmarks).

::

    from synth_middleware.server.background import BackgroundServer

    with BackgroundServer(db_path=tmp / "synth.db", api_key="k") as server:
        httpx.get(f"{server.url}/health")
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from synth_middleware._thread_server import ThreadServer
from synth_middleware.server.app import create_app


class BackgroundServer(ThreadServer):
    """``create_app(**kwargs)`` (or ``app``) served by uvicorn in a daemon thread.

    ``port=0`` picks a free port; :attr:`url` is known once :meth:`start` returned.
    Stopping runs the app's shutdown (the writer drains, the engine closes); open
    change-feed streams and long polls are ended first so they do not hold it up.
    """

    def __init__(
        self, app: FastAPI | None = None, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
    ) -> None:
        app = app if app is not None else create_app(**kwargs)
        super().__init__(
            app,
            host=host,
            port=port,
            name="synth-server",
            lifespan="on",
            http="auto",
            on_shutdown=app.state.synth.feed.close,
            join_timeout=15.0,
        )
