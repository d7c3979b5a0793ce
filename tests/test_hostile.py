"""Hostile input, probed as an attacker would (issue #23), each case end to end on
loopback: a real ``serve`` (uvicorn), real SQLite files, real FastAPI/Django apps,
the real OpenAI client against the local OpenAI-compatible test server.

* The reward domain (finite, ``|value| <= 1e6``) is enforced at every edge, the
  statistics stay finite even for an old event log holding a huge value, and a
  session whose state cannot be built never takes down the session list.
* A rollout token rewards its rollout once (a replay answers the first result).
"""

from __future__ import annotations

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


def test_a_broken_session_never_takes_down_the_session_list(tmp_path: Path) -> None:
    db = str(tmp_path / "broken.db")
    with LocalBackend(db) as b:
        (cid,) = seed(b, "broken", CANDIDATE)
        seed(b, "fine", CANDIDATE)
    _append_reward_event(db, "broken", cid, "not a number")  # apply() raises on replay
    with BackgroundServer(db_path=db) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.get("/api/v1/online/sessions")
        assert r.status_code == 200, r.text
        assert [s["session_id"] for s in r.json()["items"]] == ["fine"]
        assert c.get("/api/v1/online/sessions/fine/state").status_code == 200
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
    from synth_middleware.client import _web

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
