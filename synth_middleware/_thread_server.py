"""An ASGI app served by uvicorn in a daemon thread (loopback servers in one process).

The one implementation behind :class:`~synth_middleware.offline.container.InProcessServer`
(containers, the demo's stand-in model), :class:`~synth_middleware.testing.FakeOpenAIServer`
and :class:`~synth_middleware.server.background.BackgroundServer`.

Two details matter and are easy to get wrong, hence one place for them:

* the listening socket is created with ``proto=IPPROTO_TCP``: asyncio sets
  ``TCP_NODELAY`` on accepted sockets only when the listener says TCP; without
  it every small answer waits ~40 ms for the client's delayed ACK;
* stock uvicorn polls ``should_exit`` every 0.1 s; :meth:`ThreadServer.stop`
  wakes the server loop at once, which adds up over a test suite.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn

logger = logging.getLogger("synth_middleware")


class WakeableServer(uvicorn.Server):
    """A uvicorn server for a non-main thread: it can be woken to exit at once, and
    runs ``on_shutdown`` as soon as shutdown starts (before uvicorn waits for open
    responses, so a hook can end long polls and event streams)."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    def __init__(
        self, config: uvicorn.Config, *, on_shutdown: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    def install_signal_handlers(self) -> None:
        """Not the main thread: signals belong to the application."""

    async def main_loop(self) -> None:
        """uvicorn's tick loop, but waiting on an event instead of a 0.1 s sleep."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.1)
            except TimeoutError:
                pass
            should_exit = await self.on_tick(counter)

    @property
    def wake_event(self) -> asyncio.Event | None:
        """Set (on the server loop) once an exit was requested; None before the main loop."""
        return self._wake

    def request_exit(self) -> None:
        """Ask the server to shut down (thread-safe)."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop already closed: the server is exiting anyway
                pass

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Run the shutdown hook, then shut down as usual."""
        if self._on_shutdown is not None:
            try:
                self._on_shutdown()
            except Exception:
                logger.exception("synth-middleware: a server shutdown hook failed")
        await super().shutdown(sockets)


class ThreadServer:
    """``app`` served by uvicorn on ``host`` (loopback) in a daemon thread.

    ``port=0`` picks a free port; :attr:`url` is ``http://host:port`` once
    :meth:`start` returned. ``lifespan`` is passed to uvicorn (``"auto"`` runs
    the app's startup and shutdown if it has them); ``http`` picks uvicorn's
    HTTP implementation (``"auto"``: httptools when installed). Use as a context
    manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "server",
        lifespan: Literal["auto", "on", "off"] = "auto",
        log_level: str = "warning",
        http: str = "h11",
        on_shutdown: Callable[[], None] | None = None,
        start_timeout: float = 15.0,
        join_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.host = host
        self.name = name
        self._requested_port = port
        self._lifespan = lifespan
        self._log_level = log_level
        self._http = http
        self._on_shutdown = on_shutdown
        self._start_timeout = start_timeout
        self._join_timeout = join_timeout
        self._port: int | None = None
        self._server: WakeableServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port (known once :meth:`start` has returned)."""
        if self._port is None:
            raise RuntimeError(f"{self.name} is not running; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def wake_event(self) -> asyncio.Event | None:
        """Set on the server loop once :meth:`stop` was called (for handlers that sleep)."""
        server = self._server
        return server.wake_event if server is not None else None

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # see module doc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"{self.name} could not bind {self.host}:{self._requested_port}: {exc.strerror}",
            ) from exc
        sock.setblocking(False)
        return sock

    def start(self) -> Self:
        """Bind, serve in a thread, and return once connections are accepted.

        Raises:
            OSError: The address could not be bound (for example the port is taken).
            RuntimeError: The server failed or did not come up in time.
        """
        if self.running:
            return self
        sock = self._bind()
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level=self._log_level,
            access_log=False,
            lifespan=self._lifespan,
            ws="none",
            http=self._http,
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        server = WakeableServer(config, on_shutdown=self._on_shutdown)
        self._server = server
        self._error = None

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit from a failed startup included
                self._error = exc
            finally:
                sock.close()

        thread = threading.Thread(target=run, name=f"{self.name}:{self._port}", daemon=True)
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not server.started:
            if not thread.is_alive():
                self._thread = self._server = None
                raise RuntimeError(
                    f"{self.name} failed to start on {self.host}:{self._port}: {self._error!r}"
                ) from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not start within {self._start_timeout:g}s "
                    f"on {self.host}:{self._port}"
                )
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop serving (the app's shutdown runs) and join the thread; idempotent.

        Raises:
            RuntimeError: The server thread did not exit, even when forced.
        """
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.request_exit()
        thread.join(self._join_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(self._join_timeout)
        if thread.is_alive():
            raise RuntimeError(f"{self.name} thread did not exit")
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {where}>"
