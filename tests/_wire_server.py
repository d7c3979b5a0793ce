"""A recording wire-API server on loopback over a real engine, with faults on demand.

It answers the routes :class:`~synth_middleware.backends.http.HttpBackend`
calls (see ``docs/wire.md``) over an in-process
:class:`~synth_middleware.engine.Engine`, and can misbehave on purpose:

* ``refuse()`` / ``resume()``: stop listening (connections are refused) and
  listen again on the same port;
* ``fail_next(status, count, retry_after=...)``: answer the next API requests
  with an error before doing anything;
* ``delay``: seconds to wait *after* storing, before answering (a client with a
  shorter timeout gives up on a request whose rewards were stored);
* ``drop_next(count)``: store, then cut the connection in the middle of the answer;
* ``batch``: serve the batch routes or answer them with a route-missing 404;
* ``modern``: serve the ``/api/v1/online/sessions`` routes or only the older ones;
* ``api_key``: require ``Authorization: Bearer`` or ``X-API-Key``.

Every API request is recorded (method, path, status, headers), and so is every
reward the server was asked to store with the engine's answer for it, so a
test can tell "stored once" (the engine) from "received twice" (the log).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from synth_middleware.backends.http import HttpBackend
from synth_middleware.engine import Engine, SqliteStore
from synth_middleware.errors import BackendError

_START_TIMEOUT = 10.0


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _no_route(request: Request) -> Response:
    return _error(404, "not_found", f"no route {request.method} {request.url.path}")


def _status_of(exc: BackendError) -> tuple[int, str]:
    return (exc.status or 503), (exc.code or "error")


class ClosingHttpBackend(HttpBackend):
    """``HttpBackend`` that tests close after each test (:func:`close_backends`), so
    no pooled socket is left for the garbage collector to warn about later."""

    made: ClassVar[list[HttpBackend]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ClosingHttpBackend.made.append(self)


def close_backends() -> None:
    """Close every :class:`ClosingHttpBackend` made so far."""
    while ClosingHttpBackend.made:
        ClosingHttpBackend.made.pop().close()


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread, not the main one
        pass


class WireServer:
    """The wire API over an engine on ``127.0.0.1``, in a background thread."""

    def __init__(self, db_path: str | Path = ":memory:", *, api_key: str | None = None) -> None:
        self.engine = Engine(SqliteStore(str(db_path)))
        self.api_key = api_key
        self.batch = True
        self.modern = True
        self.legacy = True
        self.delay = 0.0
        self.max_batch = 10_000
        self.requests: list[dict[str, Any]] = []
        self.received: list[tuple[str, str]] = []  # (idempotency_key, engine status)
        self._lock = threading.Lock()
        self._failures: list[list[Any]] = []  # [status, remaining, retry_after, message]
        self._drops = 0
        self._port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=self._routes())

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (stable across ``refuse()``/``resume()``)."""
        assert self._port is not None, "not started"
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> WireServer:
        """Listen (on the same port as before after a ``refuse()``)."""
        if self._thread is not None:
            return self
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
        # and without it every answer waits ~40 ms for a delayed ACK
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port or 0))
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            log_config=None,
            log_level="critical",
            access_log=False,
            lifespan="off",
            interface="asgi3",
            ws="none",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        server = _Server(config)

        def run() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()

        thread = threading.Thread(target=run, name=f"WireServer:{self._port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("WireServer did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        return self

    def refuse(self) -> None:
        """Stop listening: new connections are refused, open ones closed."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(10)
        self._server = self._thread = None

    def resume(self) -> None:
        """Listen again on the same port."""
        self.start()

    def stop(self) -> None:
        """Stop listening and close the engine."""
        self.refuse()
        self.engine.close()

    def __enter__(self) -> WireServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def fail_next(
        self,
        status: int = 500,
        count: int = 1,
        *,
        retry_after: float | str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` API requests with ``status`` (nothing is stored)."""
        with self._lock:
            self._failures.append([status, count, retry_after, message])

    def drop_next(self, count: int = 1) -> None:
        """Store the next ``count`` requests' data, then cut the connection mid-answer."""
        with self._lock:
            self._drops += count

    def heal(self) -> None:
        """No more planned failures, drops or delay."""
        with self._lock:
            self._failures.clear()
            self._drops = 0
        self.delay = 0.0

    # ------------------------------------------------------------------ records
    def reward_keys(self, session_id: str) -> list[str]:
        """Idempotency keys of the rewards the engine stored for a session (with repeats,
        if any were stored twice)."""
        return [
            e.payload["idempotency_key"]
            for e in self.engine.iter_events(session_id)
            if e.type == "reward"
        ]

    def received_counts(self) -> Counter[str]:
        """How many times each idempotency key reached the server."""
        with self._lock:
            return Counter(k for k, _ in self.received)

    def paths(self) -> list[str]:
        """``"METHOD /path -> status"`` of every API request so far."""
        with self._lock:
            return [f"{r['method']} {r['path']} -> {r['status']}" for r in self.requests]

    # ------------------------------------------------------------------ ASGI
    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        record: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "headers": headers,
            "status": None,
            "at": time.monotonic(),
            "client": tuple(scope.get("client") or ()),
        }
        with self._lock:
            self.requests.append(record)
            failure = None
            if self._failures:
                failure = self._failures[0]
                failure[1] -= 1
                if failure[1] <= 0:
                    self._failures.pop(0)
            drop = self._drops > 0
            if drop and failure is None:
                self._drops -= 1
        if failure is not None:
            status, _, retry_after, message = failure
            extra = {} if retry_after is None else {"retry-after": str(retry_after)}
            record["status"] = status
            resp = _error(status, "injected", message or f"injected failure {status}", extra)
            await resp(scope, receive, send)
            return
        if self.api_key is not None:
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.api_key}" and headers.get("x-api-key") != self.api_key:
                record["status"] = 401
                await _error(401, "unauthorized", "missing or wrong API key")(scope, receive, send)
                return
        start: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        record["status"] = start.get("status")
        if self.delay:
            await asyncio.sleep(self.delay)
        if drop:
            await send(start)
            await send(
                {
                    "type": "http.response.body",
                    "body": bytes(body[: len(body) // 2]),
                    "more_body": True,
                }
            )
            raise ConnectionAbortedError("WireServer: dropping the connection on purpose")
        await send(start)
        await send({"type": "http.response.body", "body": bytes(body)})

    # ------------------------------------------------------------------ routes
    def _routes(self) -> list[Route]:
        return [
            Route("/api/v1/online/sessions", self._create, methods=["POST"]),
            Route("/api/v1/online/sessions/{sid}", self._state, methods=["GET"]),
            Route("/api/v1/online/sessions/{sid}/reward", self._reward, methods=["POST"]),
            Route("/api/v1/systems/{sid}/candidates", self._candidates, methods=["GET"]),
            Route("/api/v1/candidates/{cid}", self._candidate, methods=["GET"]),
            Route("/api/v1/rewards/batch", self._rewards_batch, methods=["POST"]),
            Route("/api/v1/rollouts/batch", self._rollouts_batch, methods=["POST"]),
            Route(
                "/api/prompt-learning/online/mipro/systems/{sid}/status",
                self._legacy_status,
                methods=["POST"],
            ),
            Route(
                "/api/prompt-learning/online/mipro/systems/{sid}/state",
                self._legacy_state,
                methods=["GET"],
            ),
        ]

    def _engine_call(self, fn: Any) -> Any:
        try:
            return fn()
        except BackendError as exc:
            status, code = _status_of(exc)
            return _error(status, code, str(exc))

    async def _json(self, request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    async def _create(self, request: Request) -> Response:
        if not self.modern:
            return _no_route(request)
        body = await self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("session_id"), str):
            return _error(422, "validation_error", "session_id: a string is required")
        sid = body["session_id"]
        baseline = body.get("baseline")
        if baseline is None and isinstance(body.get("metadata"), dict):
            baseline = body["metadata"].get("baseline_prompt")
        got = self._engine_call(
            lambda: self.engine.ensure_session(
                sid, baseline=baseline, kind=body.get("kind") or "mipro_online"
            )
        )
        if isinstance(got, Response):
            return got
        return JSONResponse(
            {
                "session_id": sid,
                "correlation_id": None,
                "created": True,
                "proxy_url": f"{self.url}/proxy",
                **got,
            }
        )

    async def _state(self, request: Request) -> Response:
        if not self.modern:
            return _no_route(request)
        got = self._engine_call(lambda: self.engine.get_state(request.path_params["sid"]))
        return got if isinstance(got, Response) else JSONResponse(got)

    async def _candidates(self, request: Request) -> Response:
        q = request.query_params
        got = self._engine_call(
            lambda: self.engine.list_candidates(
                request.path_params["sid"],
                status=q.get("status"),
                limit=int(q.get("limit", "100")),
                cursor=q.get("cursor"),
                sort=q.get("sort"),
                include=q.get("include", ""),
            )
        )
        return got if isinstance(got, Response) else JSONResponse(got)

    async def _candidate(self, request: Request) -> Response:
        got = self._engine_call(lambda: self.engine.get_candidate(request.path_params["cid"]))
        return got if isinstance(got, Response) else JSONResponse(got)

    def _store(self, records: list[Any]) -> list[dict[str, Any]]:
        results = self.engine.record_rewards(records)
        with self._lock:
            for rec, res in zip(records, results, strict=True):
                key = rec.get("idempotency_key") if isinstance(rec, dict) else None
                self.received.append((str(key), res["status"]))
        return results  # type: ignore[return-value]

    async def _reward(self, request: Request) -> Response:
        if not self.modern:
            return _no_route(request)
        body = await self._json(request)
        if not isinstance(body, dict):
            return _error(400, "invalid_json", "the request body is not valid JSON")
        info = body.get("reward_info") if isinstance(body.get("reward_info"), dict) else {}
        record = {
            "idempotency_key": body.get("idempotency_key")
            or request.headers.get("idempotency-key"),
            "rollout_id": body.get("rollout_id"),
            "session_id": request.path_params["sid"],
            "candidate_id": body.get("candidate_id"),
            "value": info.get("score"),
            "created_at": body.get("created_at"),
            "feedback": info.get("feedback"),
            "metadata": body.get("metadata"),
            "stop": bool(body.get("stop")),
        }
        (res,) = self._store([record])
        if res["status"] == "rejected":
            return _error(400, "reward_rejected", res.get("error") or "rejected")
        return JSONResponse(
            {"ok": True, "status": res["status"], "idempotency_key": record["idempotency_key"]}
        )

    async def _rewards_batch(self, request: Request) -> Response:
        if not self.batch:
            return _no_route(request)
        body = await self._json(request)
        rewards = body.get("rewards") if isinstance(body, dict) else None
        if not isinstance(rewards, list):
            return _error(422, "validation_error", "rewards: a list is required")
        if len(rewards) > self.max_batch:
            return _error(413, "payload_too_large", f"at most {self.max_batch} rewards per batch")
        return JSONResponse({"results": self._store(rewards)})

    async def _rollouts_batch(self, request: Request) -> Response:
        if not self.batch:
            return _no_route(request)
        body = await self._json(request)
        rollouts = body.get("rollouts") if isinstance(body, dict) else None
        if not isinstance(rollouts, list):
            return _error(422, "validation_error", "rollouts: a list is required")
        res = self.engine.record_rollouts(rollouts)
        return JSONResponse(
            {
                "accepted": res.accepted,
                "duplicates": res.duplicates,
                "supplemented": res.supplemented,
                "skipped": res.skipped,
                "errors": [{"index": i, "error": e} for i, e in res.errors],
            }
        )

    async def _legacy_status(self, request: Request) -> Response:
        if not self.legacy:
            return _no_route(request)
        body = await self._json(request)
        if not isinstance(body, dict):
            return _error(400, "invalid_json", "the request body is not valid JSON")
        if body.get("status") == "done":
            return JSONResponse({"ok": True})
        key = request.headers.get("idempotency-key") or f"legacy-{time.time_ns()}"
        record = {
            "idempotency_key": key,
            "rollout_id": body.get("rollout_id"),
            "session_id": request.path_params["sid"],
            "candidate_id": body.get("candidate_id"),
            "value": body.get("reward"),
        }
        (res,) = self._store([record])
        if res["status"] == "rejected":
            return _error(400, "reward_rejected", res.get("error") or "rejected")
        return JSONResponse({"ok": True, "candidate_id": body.get("candidate_id")})

    async def _legacy_state(self, request: Request) -> Response:
        if not self.legacy:
            return _no_route(request)
        got = self._engine_call(lambda: self.engine.get_state(request.path_params["sid"]))
        if isinstance(got, Response):
            return got
        cands = {
            c["candidate_id"]: {k: v for k, v in c.items() if k != "candidate_id"}
            for c in got["candidates"]
        }
        return JSONResponse(
            {
                "best_candidate_id": got["best_candidate_id"],
                "version": got["version"],
                "rollout_count": got["rollout_count"],
                "reward_count": got["reward_count"],
                "proposal_seq": 0,
                "candidates": cands,
            }
        )
