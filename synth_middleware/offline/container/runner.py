"""Serve an ASGI app on loopback in a background thread (containers, the stand-in
model, the backend), for tests, demos and in-process use::

    from synth_middleware.offline.container import InProcessServer

    with InProcessServer(app) as srv:          # binds 127.0.0.1 on a free port
        httpx.get(f"{srv.url}/health")

The threading and socket details live in :mod:`synth_middleware._thread_server`.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from synth_middleware._thread_server import ThreadServer

__all__ = ["InProcessContainer", "InProcessServer", "wait_healthy"]


class InProcessServer(ThreadServer):
    """An ASGI app served by uvicorn on ``host`` (loopback) in a daemon thread.

    ``port=0`` picks a free port; ``.url`` is ``http://host:port`` once started.
    ``lifespan`` is passed to uvicorn (``"auto"`` runs the app's startup and
    shutdown if it has them). Use as a context manager, or ``start()``/``stop()``.
    """


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
