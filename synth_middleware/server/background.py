"""Run the server in a background thread on loopback (tests, examples, benchmarks).

::

    from synth_middleware.server.background import BackgroundServer

    with BackgroundServer(db_path=tmp / "synth.db", api_key="k") as server:
        httpx.get(f"{server.url}/health")
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from synth_middleware.server.app import create_app
from synth_middleware.server.run import server_for

_START_TIMEOUT = 15.0


class BackgroundServer:
    """``create_app(**kwargs)`` (or ``app``) served by uvicorn in a daemon thread.

    ``port=0`` picks a free port; :attr:`url` is known once :meth:`start` returned.
    """

    def __init__(
        self, app: FastAPI | None = None, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
    ) -> None:
        self.app = app if app is not None else create_app(**kwargs)
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        """Bind, serve in a thread, and return once it accepts connections."""
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says TCP; without it answers wait ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        server = server_for(self.app, config)
        self._server = server

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit from a failed startup included
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"synth-server:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start in time")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Shut down (runs the app's shutdown: the writer drains, the engine closes)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(15.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5.0)
        self._server = self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
