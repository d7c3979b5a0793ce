"""Hostile input, probed as an attacker would (issue #23), each case end to end on
loopback: a real ``serve`` (uvicorn), real SQLite files, real FastAPI/Django apps,
the real OpenAI client against the local OpenAI-compatible test server.

* The reward domain (finite, ``|value| <= 1e6``) is enforced at every edge, the
  statistics stay finite even for an old event log holding a huge value, and a
  session whose state cannot be built never takes down the session list.
* A rollout token rewards its rollout once (a replay answers the first result).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import CANDIDATE, candidate_stats, messages, pick, seed
from synth_middleware_fastapi import SynthMiddleware, feedback_router

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend
from synth_middleware.server.background import BackgroundServer

JSON = {"content-type": "application/json"}


def _raw_reward(c: httpx.Client, session: str, score: str, rollout: str = "a") -> httpx.Response:
    """POST the reward with ``score`` spliced in as raw JSON text (``1e155``, ``10**400``)."""
    body = '{"rollout_id":"' + rollout + '","reward_info":{"score":' + score + "}}"
    return c.post(f"/api/v1/online/sessions/{session}/reward", content=body, headers=JSON)


# ------------------------------------------------------------------ 1. reward domain


def test_huge_rewards_are_refused_and_never_poison_a_session(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    with BackgroundServer(db_path=db) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        for sid in ("s", "t"):
            assert c.post("/api/v1/online/sessions", json={"session_id": sid}).status_code == 200
        for score in ("1e155", "1" + "0" * 400, "-1e7", "1000000.5"):
            r = _raw_reward(c, "s", score)
            assert r.status_code == 422, (score, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_reward"
            assert "range" in r.text or "finite" in r.text
        assert _raw_reward(c, "s", "1e6").status_code == 200  # the bound itself is a reward
        assert _raw_reward(c, "s", "0").status_code == 200
        # the batch route and the MIPRO status route refuse it too, per record
        batch = {
            "rewards": [
                {"idempotency_key": "k-big", "rollout_id": "a", "session_id": "s", "value": 1e155},
                {"idempotency_key": "k-ok", "rollout_id": "a", "session_id": "s", "value": 0.5},
            ]
        }
        res = c.post("/api/v1/rewards/batch", json=batch).json()["results"]
        assert [r["status"] for r in res] == ["rejected", "accepted"]
        assert "range" in res[0]["error"]
        st = c.post(
            "/api/prompt-learning/online/mipro/systems/s/status",
            json={"status": "reward", "rollout_id": "a", "reward": 1e155},
        )
        assert 400 <= st.status_code < 500, st.text
        # timestamps out of range: refused, not stored (the timeline used to 500 for good)
        rollouts = [
            {"rollout_id": f"r{i}", "session_id": "s", "created_at": t}
            for i, t in enumerate((1e308, -1e308, 1e12))
        ]
        out = c.post("/api/v1/rollouts/batch", json={"rollouts": rollouts}).json()
        assert out["accepted"] == 0 and len(out["errors"]) == 3, out
        late = {**batch["rewards"][1], "idempotency_key": "k-late", "created_at": 1e308}
        res = c.post("/api/v1/rewards/batch", json={"rewards": [late]}).json()["results"]
        assert res[0]["status"] == "rejected"
        for path in ("/s/state", "/t/state", "", "/s/timeline", "/s/rollouts"):
            r = c.get(f"/api/v1/online/sessions{path}")
            assert r.status_code == 200, (path, r.text)
        state = c.get("/api/v1/online/sessions/s/state").json()
        assert state["reward_count"] == 3
    # and after a restart on the same file
    with BackgroundServer(db_path=db) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/api/v1/online/sessions").status_code == 200
        assert c.get("/api/v1/online/sessions/s/state").status_code == 200


def test_in_process_reward_domain(server: Any, backend: LocalBackend) -> None:
    (cid,) = seed(backend, "dom", CANDIDATE)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="dom",
        backend=backend,
        selection=pick(cid),
        warm=True,
    )
    resp = client.chat.completions.create(model="m", messages=messages())
    for bad in (1e155, 10**400, -1e6 - 1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError):
            synth.reward(resp, bad)  # type: ignore[arg-type]
    synth.reward(resp, 1e6)
    synth.reward(resp, -1e6)
    assert synth.flush(5)
    stats = candidate_stats(backend, "dom", cid)
    assert stats["reward_count"] == 2 and stats["avg_reward"] == 0.0
    backend.get_state("dom")
    # the engine defends itself when called directly (HttpBackend, other clients)
    rec = {"idempotency_key": "direct", "rollout_id": resp.synth.rollout_id, "value": 1e155}
    res = backend.record_rewards([rec, {**rec, "idempotency_key": "d2", "value": 10**400}])
    assert [r["status"] for r in res] == ["rejected", "rejected"]
    backend.get_state("dom")


def _append_reward_event(db: str, session: str, candidate_id: str, value: Any) -> None:
    """Write a reward event straight into the log, as an older version could have."""
    con = sqlite3.connect(db)
    with con:
        seq = con.execute("SELECT MAX(seq) FROM events").fetchone()[0] + 1
        payload = {
            "idempotency_key": f"old-{seq}",
            "rollout_id": f"old-ro-{seq}",
            "candidate_id": candidate_id,
            "value": value,
            "created_at": time.time(),
        }
        con.execute(
            "INSERT INTO events (seq, session_id, type, payload, created_at) VALUES (?,?,?,?,?)",
            (seq, session, "reward", json.dumps(payload), time.time()),
        )
    con.close()


def test_an_old_event_log_with_a_huge_reward_replays_finite(tmp_path: Path, caplog: Any) -> None:
    db = str(tmp_path / "old.db")
    with LocalBackend(db) as b:
        (cid,) = seed(b, "old", CANDIDATE)
        seed(b, "other", CANDIDATE)
    _append_reward_event(db, "old", cid, 1e155)
    _append_reward_event(db, "old", cid, 0.0)
    _append_reward_event(db, "old", cid, -1e300)
    caplog.set_level(logging.WARNING)
    with LocalBackend(db) as b:
        state = b.get_state("old")  # raised OverflowError/ValueError before
        (c,) = [c for c in state["candidates"] if c["candidate_id"] == cid]
        assert c["reward_count"] == 3
        assert abs(c["avg_reward"]) <= 1e6
        assert all(v is None or abs(v) < 1e300 for v in (c.get("reward_m2"), c.get("avg_reward")))
        json.dumps(state, allow_nan=False)  # strictly JSON: no inf/NaN anywhere
    assert "outside the reward range" in caplog.text
    with BackgroundServer(db_path=db) as srv, httpx.Client(base_url=srv.url, timeout=10) as cl:
        assert cl.get("/api/v1/online/sessions/old/state").status_code == 200
        assert {s["session_id"] for s in cl.get("/api/v1/online/sessions").json()["items"]} == {
            "old",
            "other",
        }
        # more rewards (and a snapshot) on top of the old log work
        ro = "new-ro"
        r = cl.post(
            "/api/v1/online/sessions/old/reward",
            json={"rollout_id": ro, "candidate_id": cid, "reward_info": {"score": 1.0}},
        )
        assert r.status_code == 200, r.text


def _append_event(db: str, session: str, type_: str, payload: dict[str, Any]) -> None:
    con = sqlite3.connect(db)
    with con:
        seq = con.execute("SELECT MAX(seq) FROM events").fetchone()[0] + 1
        con.execute(
            "INSERT INTO events (seq, session_id, type, payload, created_at) VALUES (?,?,?,?,?)",
            (seq, session, type_, json.dumps(payload), time.time()),
        )
    con.close()


def _append_rollout_row(db: str, session: str, created_at: float) -> None:
    con = sqlite3.connect(db)
    with con:
        seq = con.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        con.execute(
            "INSERT INTO rollouts (rollout_id, session_id, candidate_id, created_at, seq)"
            " VALUES (?,?,?,?,?)",
            (f"old-{created_at}", session, None, created_at, seq),
        )
    con.close()


def test_a_broken_session_never_takes_down_the_session_list(tmp_path: Path) -> None:
    db = str(tmp_path / "broken.db")
    with LocalBackend(db) as b:
        (cid,) = seed(b, "broken", CANDIDATE)
        seed(b, "fine", CANDIDATE)
    _append_reward_event(db, "broken", cid, "not a number")  # skipped on replay, with a warning
    _append_event(db, "broken", "candidate_archived", {})  # apply() raises on replay
    _append_rollout_row(db, "fine", 1e308)  # stored before created_at was bounded
    _append_rollout_row(db, "fine", -1e308)
    with BackgroundServer(db_path=db) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.get("/api/v1/online/sessions")
        assert r.status_code == 200, r.text
        assert [s["session_id"] for s in r.json()["items"]] == ["fine"]
        assert c.get("/api/v1/online/sessions/fine/state").status_code == 200
        assert c.get("/api/v1/online/sessions/fine/timeline").status_code == 200
        bad = c.get("/api/v1/online/sessions/broken/state")
        assert bad.status_code >= 400 and bad.json()["error"]["code"]


# ------------------------------------------------------------------ 2. token replay


def _feedback_app(server: Any, backend: LocalBackend, session: str, **router: Any) -> tuple:
    (cid,) = seed(backend, session, CANDIDATE)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session=session,
        backend=backend,
        selection=pick(cid),
        warm=True,
    )
    app = FastAPI()
    app.add_middleware(SynthMiddleware, secret="hostile-secret")
    app.include_router(feedback_router(**router))

    @app.get("/ask")
    def ask() -> dict[str, str]:
        resp = client.chat.completions.create(model="m", messages=messages())
        return {"rollout_id": resp.synth.rollout_id}

    return app, cid


def test_a_feedback_token_rewards_its_rollout_once(server: Any, backend: LocalBackend) -> None:
    app, cid = _feedback_app(server, backend, "replay")
    with TestClient(app) as tc:
        token = tc.get("/ask").headers["x-synth-rollout"]
        answers = [
            tc.post("/synth/feedback", json={"token": token, "reward": 1.0}) for _ in range(10)
        ]
        assert {a.status_code for a in answers} == {202}
        assert len({a.text for a in answers}) == 1  # a replay answers the first result
        other = tc.post("/synth/feedback", json={"token": token, "reward": 0.0})
        assert other.status_code == 409 and other.json()["error"]["code"] == "token_already_used"
        # a non-ASCII token is a clear 403, not a 500
        bad = tc.post("/synth/feedback", json={"token": "é" * 40 + ".sig", "reward": 1.0})
        assert bad.status_code == 403, bad.text
        huge = tc.post("/synth/feedback", content=b'{"token":"%s","reward":1e155}' % token.encode())
        assert huge.status_code == 422
    assert synth.flush(5)
    assert candidate_stats(backend, "replay", cid)["reward_count"] == 1


def test_a_replay_in_another_process_is_counted_once(server: Any, backend: LocalBackend) -> None:
    """The key derives from the token, so the backend counts a replay sent by another
    process (here: the replay memory emptied) once."""
    from synth_middleware.client import web as _web

    app, cid = _feedback_app(server, backend, "replay2")
    with TestClient(app) as tc:
        token = tc.get("/ask").headers["x-synth-rollout"]
        first = tc.post("/synth/feedback", json={"token": token, "reward": 1.0})
        assert synth.flush(5)
        _web._replays.clear()
        again = tc.post("/synth/feedback", json={"token": token, "reward": 1.0})
        assert first.json()["idempotency_key"] == again.json()["idempotency_key"]
    assert synth.flush(5)
    assert candidate_stats(backend, "replay2", cid)["reward_count"] == 1


def test_feedback_per_token_all_counts_every_post(server: Any, backend: LocalBackend) -> None:
    app, cid = _feedback_app(server, backend, "every", per_token="all")
    with TestClient(app) as tc:
        token = tc.get("/ask").headers["x-synth-rollout"]
        for v in (1.0, 0.0, 1.0):
            assert tc.post("/synth/feedback", json={"token": token, "reward": v}).status_code == 202
    assert synth.flush(5)
    assert candidate_stats(backend, "every", cid)["reward_count"] == 3


# ------------------------------------------------------------------ hostile upstream


class _Upstream:
    """An OpenAI-compatible upstream that misbehaves on demand (``mode``)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        async def chat(request: Request) -> Response:
            self.calls += 1
            auth = request.headers.get("authorization", "")
            key = auth.removeprefix("Bearer ")
            if self.mode == "auth401":  # OpenAI's own format and masking
                masked = f"{key[:8]}{'*' * 20}{key[-4:]}"
                msg = f"Incorrect API key provided: {masked}. You can find your API key at ..."
                return JSONResponse(
                    {
                        "error": {
                            "message": msg,
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    },
                    status_code=401,
                )
            if self.mode == "echo":  # echoes the request headers, in the body and a header
                return JSONResponse(
                    {
                        "error": {
                            "message": f"bad request; you sent {dict(request.headers)}",
                            "type": auth,
                            "param": key,
                        }
                    },
                    status_code=400,
                    headers={"x-request-id": auth, "openai-echo": key},
                )
            if self.mode == "echo500":
                return Response(f"upstream crashed handling {auth}".encode(), status_code=500)
            if self.mode == "drip":  # one byte every 0.1 s for ~30 s

                async def drip():  # type: ignore[no-untyped-def]
                    for _ in range(300):
                        yield b" "
                        await asyncio.sleep(0.1)
                    yield b"{}"

                return StreamingResponse(drip(), media_type="application/json")
            if self.mode == "late_stream":  # headers at once, the first event after 20 s

                async def late():  # type: ignore[no-untyped-def]
                    await asyncio.sleep(20)
                    yield b"data: [DONE]\n\n"

                return StreamingResponse(late(), media_type="text/event-stream")
            return JSONResponse(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": "m",
                    "created": 0,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "ok"},
                        }
                    ],
                }
            )

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def upstream() -> Any:
    from web_helpers import serve

    up = _Upstream()
    with serve(up.app()) as url:
        up.url = url + "/v1"  # type: ignore[attr-defined]
        yield up


UPSTREAM_KEY = "sk-canary-UPSTREAM-0123456789abcdefR6tY"
SERVER_KEY = "srv-key-without-prefix-9876543210zyxw"
PROXY = "/api/v1/online/sessions/p/proxy/chat/completions"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _leaks(text: str, *keys: str) -> list[str]:
    """Every key, or fragment of one (first 8, last 8, last 4 after a mask), in ``text``."""
    found = []
    for k in keys:
        for frag in (k, k[:8], k[-8:]):
            if frag in text:
                found.append(frag)
        if "****" in text or f"*{k[-4:]}" in text or f"...{k[-4:]}" in text:
            found.append(f"masked {k[-4:]}")
    return found


# ------------------------------------------------------------------ 3. forged pages


def test_a_keyless_server_refuses_web_pages_and_foreign_hosts(
    tmp_path: Path, upstream: Any, caplog: Any
) -> None:
    with (
        BackgroundServer(
            db_path=str(tmp_path / "k.db"), upstream_url=upstream.url, upstream_api_key=UPSTREAM_KEY
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as c,
    ):
        assert c.post("/api/v1/online/sessions", json={"session_id": "p"}).status_code == 200
        # a cross-site "simple" POST: text/plain (no preflight) must not reach the upstream
        for ctype in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ):
            r = c.post(PROXY, content=json.dumps(CHAT), headers={"content-type": ctype})
            assert r.status_code == 415, (ctype, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unsupported_media_type"
            r = c.post(
                "/api/v1/online/sessions/p/reward",
                content=b'{"reward_info":{"score":1}}',
                headers={"content-type": ctype},
            )
            assert r.status_code == 415
        assert upstream.calls == 0
        # DNS rebinding: another Host name
        for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
            r = c.get("/api/v1/online/sessions", headers={"host": host})
            assert r.status_code == 421, (host, r.status_code)
            assert "items" not in r.text
            r = c.post(PROXY, json=CHAT, headers={"host": host})
            assert r.status_code == 421
        assert c.get("/health", headers={"host": "10.0.0.7:8000"}).status_code == 200  # probes
        # a page on another origin (a browser sends Origin / Sec-Fetch-Site)
        r = c.post(PROXY, json=CHAT, headers={"origin": "https://evil.example"})
        assert r.status_code == 403
        r = c.post(PROXY, content=json.dumps(CHAT), headers={"sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        assert upstream.calls == 0
        # loopback names, same-origin pages and scripts without a content type still work
        for host in ("localhost", f"127.0.0.1:{srv.port}", f"[::1]:{srv.port}"):
            assert c.get("/api/v1/online/sessions", headers={"host": host}).status_code == 200
        ok = c.post(PROXY, json=CHAT, headers={"origin": srv.url})
        assert ok.status_code == 200, ok.text
        assert c.post(PROXY, content=json.dumps(CHAT)).status_code == 200
        assert upstream.calls == 2
    # --allowed-host adds a name; "*" turns the check off
    with BackgroundServer(db_path=str(tmp_path / "k.db"), allowed_hosts=("synth.internal",)) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert (
                c.get("/api/v1/online/sessions", headers={"host": "synth.internal:9"}).status_code
                == 200
            )
            assert (
                c.get("/api/v1/online/sessions", headers={"host": "evil.example"}).status_code
                == 421
            )
    # with a key the key is the guard (a page cannot send it without a preflight)
    with BackgroundServer(db_path=str(tmp_path / "k.db"), api_key=SERVER_KEY) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            h = {"x-api-key": SERVER_KEY, "host": "synth.example.com"}
            assert c.get("/api/v1/online/sessions", headers=h).status_code == 200
            r = c.post(PROXY, content=json.dumps(CHAT), headers={**h, "content-type": "text/plain"})
            assert r.status_code == 415


def test_serve_says_auth_off_on_start(tmp_path: Path, caplog: Any) -> None:
    import threading

    from synth_middleware.server import run

    started = threading.Event()

    class _Stop(Exception):
        pass

    def fake_server_for(app: Any, config: Any) -> Any:
        class S:
            def run(self) -> None:
                started.set()
                raise _Stop

        return S()

    caplog.set_level(logging.WARNING)
    orig = run.server_for
    run.server_for = fake_server_for  # type: ignore[assignment]
    try:
        with pytest.raises(_Stop):
            run.serve(db_path=str(tmp_path / "w.db"), port=0, optimizer=False)
    finally:
        run.server_for = orig  # type: ignore[assignment]
    assert started.is_set()
    assert "auth off" in caplog.text


# ------------------------------------------------------------------ 4. upstream error text


def test_upstream_error_text_never_carries_a_credential(
    tmp_path: Path, upstream: Any, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        BackgroundServer(
            db_path=str(tmp_path / "u.db"),
            api_key=SERVER_KEY,
            upstream_url=upstream.url,
            upstream_api_key=UPSTREAM_KEY,
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=10, headers={"x-api-key": SERVER_KEY}) as c,
    ):
        assert c.post("/api/v1/online/sessions", json={"session_id": "p"}).status_code == 200
        seen = []
        for mode in ("auth401", "echo", "echo500"):
            upstream.mode = mode
            r = c.post(PROXY, json=CHAT)
            assert 400 <= r.status_code < 600 and r.status_code != 500, (mode, r.status_code)
            assert r.json()["error"]["code"], r.text
            text = r.text + json.dumps(dict(r.headers))
            assert not _leaks(text, UPSTREAM_KEY, SERVER_KEY), (mode, text)
            seen.append(r.json()["error"]["code"])
        assert seen[0] == "upstream_auth_failed"
    assert not _leaks(caplog.text, UPSTREAM_KEY, SERVER_KEY)


# ------------------------------------------------------------------ 5. a deadline


def test_upstream_timeout_is_a_deadline(tmp_path: Path, upstream: Any) -> None:
    with (
        BackgroundServer(
            db_path=str(tmp_path / "d.db"),
            upstream_url=upstream.url,
            upstream_api_key=UPSTREAM_KEY,
            upstream_timeout=1.0,
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        assert c.post("/api/v1/online/sessions", json={"session_id": "p"}).status_code == 200
        upstream.mode = "drip"
        t0 = time.monotonic()
        r = c.post(PROXY, json=CHAT)
        took = time.monotonic() - t0
        assert r.status_code == 504 and took < 3.0, (r.status_code, took)
        upstream.mode = "late_stream"
        t0 = time.monotonic()
        with c.stream("POST", PROXY, json={**CHAT, "stream": True}) as s:
            body = b"".join(s.iter_bytes())
        took = time.monotonic() - t0
        assert took < 3.0, took
        assert s.status_code == 504 or b"upstream_error" in body, (s.status_code, body)


# ------------------------------------------------------------------ 7. small 500s


def test_hostile_proxy_inputs_are_clear_4xx(tmp_path: Path, upstream: Any) -> None:
    with (
        BackgroundServer(
            db_path=str(tmp_path / "h.db"), upstream_url=upstream.url, upstream_api_key=UPSTREAM_KEY
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as c,
    ):
        assert c.post("/api/v1/online/sessions", json={"session_id": "p"}).status_code == 200
        r = c.post(PROXY, content=b"[" * 100_000, headers=JSON)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = c.post(
            PROXY, content=b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=JSON
        )
        assert 400 <= r.status_code < 500, r.status_code
        for rid in ("%0D%0Ax-evil:%201", "a%00b", "%E9t%E9", "a%20b", "%7F"):
            calls = upstream.calls
            r = c.post(f"/api/v1/online/sessions/p/proxy/{rid}/chat/completions", json=CHAT)
            assert r.status_code == 422, (rid, r.status_code, r.text)
            assert "rollout_id" in r.json()["error"]["message"]
            assert upstream.calls == calls, rid  # refused before the upstream was called
        assert (
            c.post("/api/v1/online/sessions/p/proxy/ro-1/chat/completions", json=CHAT).status_code
            == 200
        )
        assert c.get("/health").status_code == 200


# ------------------------------------------------------------------ 6. credential origins


def test_proposer_key_goes_only_to_allowed_origins() -> None:
    from synth_middleware.engine.proposer import (
        ENV_ALLOWED_HOSTS,
        ENV_API_KEY,
        ENV_URL,
        api_key_for,
        scrub_secrets,
    )

    key = "prop0sal-key-no-prefix-ABCDEFGH12345678"
    env = {ENV_API_KEY: key, ENV_URL: "http://llm.internal:8443/v1"}
    assert api_key_for("http://llm.internal:8443/v1/chat/completions", env) == key
    assert api_key_for("http://llm.internal:9999/v1", env) is None  # another port
    assert api_key_for("https://llm.internal:8443/v1", env) is None  # another scheme
    assert api_key_for("https://api.openai.com/v1", env) == key
    assert api_key_for("http://api.openai.com/v1", env) is None
    env2 = {**env, ENV_ALLOWED_HOSTS: "http://127.0.0.1:8080, trusted.example"}
    assert api_key_for("http://127.0.0.1:8080/v1", env2) == key
    assert api_key_for("http://127.0.0.1:8081/v1", env2) is None
    assert api_key_for("https://trusted.example:444/v1", env2) == key  # a bare host: any port
    # a provider's masked echo of a key without an sk- prefix
    text = f"Incorrect API key provided: {key[:8]}{'*' * 16}{key[-4:]} (code 401)"
    for frag in (key[:8], key[-4:], key[-8:], "****"):
        assert frag not in scrub_secrets(text, env), frag


class _Recorder:
    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def any_path(request: Request) -> JSONResponse:
            self.headers.append(dict(request.headers))
            return JSONResponse({"detail": "no"}, status_code=401)

        return Starlette(routes=[Route("/{path:path}", any_path, methods=["GET", "POST"])])


def test_a_job_never_sends_the_environment_key_to_a_url_it_chose(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from web_helpers import serve

    env_key = "environment-key-SECRET-55556666"
    monkeypatch.setenv("ENVIRONMENT_API_KEY", env_key)
    monkeypatch.delenv("SYNTH_CONTAINER_ALLOWED_ORIGINS", raising=False)
    rec = _Recorder()
    with serve(rec.app()) as target, BackgroundServer(db_path=str(tmp_path / "j.db")) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as c:

            def run_job() -> None:
                n = len(rec.headers)
                body = {
                    "algorithm": "gepa",
                    "auto_start": True,
                    "config_body": {
                        "container_url": target,
                        "model": "m",
                        "rollout_budget": 4,
                        "train_seeds": [0, 1],
                        "val_seeds": [2],
                    },
                }
                r = c.post("/api/prompt-learning/online/jobs", json=body)
                assert r.status_code in (200, 201), r.text
                job = r.json().get("id") or r.json().get("job_id")
                if r.json().get("status") not in ("running", "queued"):
                    c.post(f"/api/prompt-learning/online/jobs/{job}/start")
                deadline = time.monotonic() + 15
                while len(rec.headers) == n and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert len(rec.headers) > n, "the job never called its container"

            run_job()
            sent = json.dumps(rec.headers)
            assert env_key not in sent and env_key[-8:] not in sent
            # the operator allows that origin: then the key goes there
            monkeypatch.setenv("SYNTH_CONTAINER_ALLOWED_ORIGINS", target)
            run_job()
            assert env_key in json.dumps(rec.headers[-1])


# ------------------------------------------------------------------ 8. idempotency keys


def test_idempotency_keys_name_one_reward_in_one_session(tmp_path: Path) -> None:
    db = str(tmp_path / "idem.db")

    def reward(c: httpx.Client, sid: str, rollout: str, score: float, key: str) -> httpx.Response:
        body = {"rollout_id": rollout, "reward_info": {"score": score}, "idempotency_key": key}
        return c.post(f"/api/v1/online/sessions/{sid}/reward", json=body)

    def count(c: httpx.Client, sid: str) -> int:
        return c.get(f"/api/v1/online/sessions/{sid}/state").json()["reward_count"]

    with BackgroundServer(db_path=db) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        for sid in ("s1", "s2"):
            assert c.post("/api/v1/online/sessions", json={"session_id": sid}).status_code == 200
        assert reward(c, "s1", "r1", 1.0, "k").json()["status"] == "accepted"
        # the same key and body: a duplicate (the first result), counted once
        again = reward(c, "s1", "r1", 1.0, "k")
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        # the same key with another body: 409, as Stripe answers, and nothing stored
        for rollout, score in (("r1", 0.0), ("r9", 1.0)):
            r = reward(c, "s1", rollout, score, "k")
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "idempotency_conflict"
        assert count(c, "s1") == 1
        # keys are per session: s2's reward with the same key is its own
        r = reward(c, "s2", "r2", 0.5, "k")
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        assert count(c, "s2") == 1
        # a reward posted to s2 for s1's rollout is refused (it was counted in s1)
        r = reward(c, "s2", "r1", 1.0, "other-key")
        assert 400 <= r.status_code < 500 and "another session" in r.text, r.text
        assert count(c, "s1") == 1 and count(c, "s2") == 1
        # in one batch: a repeated key with another value is refused too
        batch = [
            {"idempotency_key": "b", "rollout_id": "r3", "session_id": "s1", "value": 1.0},
            {"idempotency_key": "b", "rollout_id": "r3", "session_id": "s1", "value": 1.0},
            {"idempotency_key": "b", "rollout_id": "r3", "session_id": "s1", "value": 0.0},
        ]
        res = c.post("/api/v1/rewards/batch", json={"rewards": batch}).json()["results"]
        assert [x["status"] for x in res] == ["accepted", "duplicate", "rejected"]
        assert res[2]["error"].startswith("idempotency_key conflict")
    # a key stored before keys were scoped (older versions) still counts as seen
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "INSERT INTO reward_keys (idempotency_key, session_id, seq, rollout_id)"
            " VALUES ('legacy', 's1', 1, 'r1')"
        )
    con.close()
    with BackgroundServer(db_path=db) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert reward(c, "s1", "r1", 1.0, "legacy").json()["status"] == "duplicate"
        assert count(c, "s1") == 2  # r1's and r3's


def test_serve_flags_reach_the_config(monkeypatch: Any, tmp_path: Path) -> None:
    from synth_middleware import cli
    from synth_middleware.server import run

    seen: dict[str, Any] = {}
    monkeypatch.setattr(run, "serve", lambda **kw: seen.update(kw))
    monkeypatch.delenv("SYNTH_API_KEY", raising=False)
    argv = ["serve", "--db", str(tmp_path / "f.db"), "--allowed-host", "a.example"]
    argv += ["--allowed-host", "b.example", "--upstream-total-timeout", "7"]
    assert cli.main(argv) == 0
    cfg = seen["config"]
    assert cfg.allowed_hosts == ("a.example", "b.example") and cfg.upstream_total_timeout == 7
    monkeypatch.setenv("SYNTH_ALLOWED_HOSTS", "c.example, d.example")
    assert cli.main(["serve", "--db", str(tmp_path / "f.db")]) == 0
    assert seen["config"].allowed_hosts == ("c.example", "d.example")


def test_a_key_repeated_in_one_batch_without_its_session(tmp_path: Path) -> None:
    """The first record creates its rollout (naming the session), the second names only
    the rollout: still the same key in the same session, so a duplicate."""
    with LocalBackend(str(tmp_path / "b.db")) as b:
        seed(b, "s", CANDIDATE)
        first = {"idempotency_key": "k", "rollout_id": "new", "session_id": "s", "value": 1.0}
        second = {"idempotency_key": "k", "rollout_id": "new", "value": 1.0}
        third = {"idempotency_key": "k", "rollout_id": "new", "value": 0.0}
        res = b.record_rewards([first, second, third])
        assert [r["status"] for r in res] == ["accepted", "duplicate", "rejected"]
        assert b.get_state("s")["reward_count"] == 1
