"""Serve an ASGI app on loopback in a background thread (containers, the stand-in
model, the backend), for tests, demos and in-process use::

    from synth_middleware.container import InProcessServer

    with InProcessServer(app) as srv:          # binds 127.0.0.1 on a free port
        httpx.get(f"{srv.url}/health")

The socket is bound with ``proto=IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY``
on accepted connections (otherwise every small answer waits ~40 ms for a
delayed ACK). Startup waits until uvicorn accepts connections; ``stop()``
wakes the server loop at once instead of waiting for its 0.1 s poll.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

__all__ = ["InProcessContainer", "InProcessServer", "wait_healthy"]

_START_TIMEOUT = 15.0
_JOIN_TIMEOUT = 10.0


class _Server(uvicorn.Server):
    """A uvicorn server that runs in a non-main thread and can be woken to exit."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    def install_signal_handlers(self) -> None:  # not the main thread
        pass

    async def main_loop(self) -> None:
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

    def request_exit(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass


class InProcessServer:
    """An ASGI app served by uvicorn on ``host`` (loopback) in a daemon thread.

    ``port=0`` picks a free port; ``.url`` is ``http://host:port`` once started.
    ``lifespan`` is passed to uvicorn (``"auto"`` runs the app's startup and
    shutdown if it has them). Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: str = "auto",
        log_level: str = "warning",
        name: str = "server",
    ) -> None:
        self.app = app
        self.host = host
        self.name = name
        self._requested_port = port
        self._lifespan = lifespan
        self._log_level = log_level
        self._port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        if self._port is None:
            raise RuntimeError(f"{self.name} is not running")
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

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def start(self) -> InProcessServer:
        """Bind, serve in a thread, and return once connections are accepted."""
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
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        server = _Server(config)
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
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                self._thread = self._server = None
                raise RuntimeError(f"{self.name} failed to start: {self._error!r}") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start within {_START_TIMEOUT:g}s")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.request_exit()
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_JOIN_TIMEOUT)
        self._server = self._thread = None

    def __enter__(self) -> InProcessServer:
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
        return f"<InProcessServer {self.name} {where}>"


class InProcessContainer(InProcessServer):
    """A container app served in-process (``.url``, ``.api_key``)::

    with InProcessContainer(create_container_app(task)) as c:
        ContainerClient(c.url, c.api_key).rollout(...)
    """

    def __init__(self, app: Any, *, api_key: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", "container")
        super().__init__(app, **kwargs)
        if api_key is None:
            state = getattr(app, "state", None)
            api_key = getattr(state, "api_key", None) if state is not None else None
        self.api_key: str | None = api_key


def wait_healthy(url: str, *, path: str = "/health", timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``GET url+path`` until it answers 2xx; return its JSON (``{}`` if not JSON).

    Raises ``TimeoutError`` naming the URL and the last problem seen.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    delay = 0.02
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            try:
                resp = client.get(url.rstrip("/") + path)
                if resp.status_code < 300:
                    try:
                        data = resp.json()
                    except ValueError:
                        return {}
                    return data if isinstance(data, dict) else {"value": data}
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"{url}{path} is not healthy after {timeout:g}s ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
