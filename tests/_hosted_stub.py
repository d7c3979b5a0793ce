"""A stub of the *hosted* API on loopback: only its documented routes, with faults.

It serves what ``../shared/reference/synth-wire-api.md`` documents for the hosted
service and nothing of ours: ``POST /api/v1/online/sessions`` (answering only
the session's URLs, as the hosted API does), ``GET .../sessions/{id}``,
``GET /api/v1/systems/{id}/candidates``, ``POST .../sessions/{id}/reward`` and
the legacy ``.../mipro/systems/{id}/status`` route. Every other request gets
the hosted service's own 404 (a body none of our generic texts matches).

``fail_posts(mode, count)`` makes the next ``count`` POSTs to the documented
routes fail: ``"500"``, ``"429"`` (with ``Retry-After: 1``) or ``"drop"``
(the connection is cut before an answer).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from synth_middleware._thread_server import ThreadServer

BASELINE_ID = "baseline"
BEST_ID = "cand-best"


class HostedStub:
    """The hosted dialect on ``127.0.0.1``, pre-seeded with one session."""

    def __init__(self, session_id: str, baseline: str, best: str) -> None:
        self.session_id = session_id
        self.baseline = baseline
        self.best = best
        self.requests: list[tuple[str, str, int | None]] = []  # (method, path, status)
        self.rewards: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self.batch_status = 404  # what the (missing) reward batch route answers

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await self._asgi(scope, receive, send)

        self._server = ThreadServer(app, name="hosted-stub", lifespan="off")

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self._server.url

    def __enter__(self) -> HostedStub:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def fail_posts(self, mode: str, count: int = 1) -> None:
        """Fail the next ``count`` POSTs to documented routes with ``mode``."""
        with self._lock:
            self._failures.extend([mode] * count)

    def count(self, method: str, path: str, status: int | None = None) -> int:
        """How many ``method path`` requests arrived (answered ``status`` if given)."""
        with self._lock:
            return sum(
                1
                for m, p, s in self.requests
                if m == method and p == path and (status is None or s == status)
            )

    # ------------------------------------------------------------------ ASGI
    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        status, payload, headers = self._answer(method, path, body)
        with self._lock:
            self.requests.append((method, path, status))
        if status is None:  # cut the connection in the middle of an answer
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"100")]})
            await send({"type": "http.response.body", "body": b'{"sess', "more_body": True})
            raise ConnectionAbortedError("hosted stub: dropping the connection on purpose")
        raw = json.dumps(payload).encode()
        hdrs = [(b"content-type", b"application/json")]
        hdrs += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": raw})

    def _answer(
        self, method: str, path: str, body: bytes
    ) -> tuple[int | None, Any, dict[str, str]]:
        sid = self.session_id
        sessions = "/api/v1/online/sessions"
        documented_posts = {
            sessions,
            f"{sessions}/{sid}/reward",
            f"/api/prompt-learning/online/mipro/systems/{sid}/status",
        }
        if method == "POST" and path in documented_posts:
            with self._lock:
                mode = self._failures.pop(0) if self._failures else None
            if mode == "500":
                return 500, {"detail": "internal error"}, {}
            if mode == "429":
                return 429, {"detail": "slow down"}, {"Retry-After": "1"}
            if mode == "drop":
                return None, None, {}
            data = json.loads(body or b"{}")
            if path == sessions:
                return 200, {"session_id": sid, "proxy_url": f"/proxy/{sid}"}, {}
            with self._lock:
                self.rewards.append(data)
            return 200, {"ok": True}, {}
        if method == "GET" and path == f"{sessions}/{sid}":
            return 200, self._state(), {}
        if method == "GET" and path == f"/api/v1/systems/{sid}/candidates":
            items = [
                {"candidate_id": BASELINE_ID, "candidate_content": self.baseline,
                 "status": "active", "is_baseline": True},
                {"candidate_id": BEST_ID, "candidate_content": self.best, "status": "active"},
            ]
            return 200, {"items": items, "next_cursor": None, "system_id": sid}, {}
        if path == "/api/v1/rewards/batch" and self.batch_status != 404:
            return self.batch_status, {"detail": "unsupported request"}, {}
        # the hosted service's own 404: not one of the generic texts
        return 404, {"detail": f"Route {method}:{path} not found in this deployment"}, {}

    def _state(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": "running",
            "best_candidate_id": BEST_ID,
            "candidates": [
                {"candidate_id": BASELINE_ID, "avg_reward": 0.4, "rollout_count": 50,
                 "is_baseline": True},
                {"candidate_id": BEST_ID, "avg_reward": 0.9, "rollout_count": 50},
            ],
        }
