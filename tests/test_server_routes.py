"""Every wire-API route of `synth-middleware serve`, against a real server on loopback."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from synth_middleware.server.background import BackgroundServer

BASELINE = "You are a support assistant. Classify the request."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    db = tmp_path_factory.mktemp("server") / "synth.db"
    with BackgroundServer(db_path=db, proxy_refresh_interval=0.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield client


_counter = iter(range(10_000))


def new_session(http: httpx.Client, **extra: Any) -> str:
    sid = f"s{next(_counter)}-{time.monotonic_ns()}"
    body = {"session_id": sid, "kind": "gepa_online", "baseline": BASELINE, **extra}
    r = http.post("/api/v1/online/sessions", json=body)
    assert r.status_code == 200, r.text
    return sid


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    return body["error"]  # type: ignore[no-any-return]


# -- health, openapi, errors ------------------------------------------------------------


def test_health_and_openapi(http: httpx.Client) -> None:
    assert http.get("/health").json()["healthy"] is True
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/online/sessions",
        "/api/v1/online/sessions/{session_id}",
        "/api/v1/online/sessions/{session_id}/prompt",
        "/api/v1/online/sessions/{session_id}/reward",
        "/api/v1/online/sessions/{session_id}/events",
        "/api/v1/online/sessions/{session_id}/rewards:batch",
        "/api/v1/rewards/batch",
        "/api/v1/rollouts/batch",
        "/api/v1/systems/{system_id}/candidates",
        "/api/v1/candidates/{candidate_id}",
        "/api/v1/candidates/{candidate_id}/archive",
        "/api/v1/offline/jobs/{job_id}/candidates/{candidate_id}",
        "/api/v1/online/sessions/{session_id}/proxy/chat/completions",
        "/api/v1/online/sessions/{session_id}/proxy/{rollout_id}/chat/completions",
        "/api/prompt-learning/online/mipro/systems/{system_id}/status",
        "/api/prompt-learning/online/mipro/systems/{system_id}/state",
        "/api/prompt-learning/online/gepa/sessions",
        "/api/prompt-learning/online/gepa/sessions/{session_id}/reward",
    ):
        assert path in paths, path


def test_unknown_route_and_method_are_json(http: httpx.Client) -> None:
    r = http.get("/api/v1/nothing-here")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = http.delete("/api/v1/online/sessions")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"


# -- sessions ---------------------------------------------------------------------------------


def test_create_is_ensure_and_registers_the_baseline(http: httpx.Client, server: Any) -> None:
    sid = new_session(http, correlation_id="corr-1")
    r = http.post("/api/v1/online/sessions", json={"session_id": sid, "kind": "gepa_online"})
    body = r.json()
    assert body["created"] is False and body["session_id"] == sid
    assert body["proxy_url"] == f"{server.url}/api/v1/online/sessions/{sid}/proxy"
    assert body["online_url"] == body["proxy_url"]
    assert body["chat_completions_url"] == f"{body['proxy_url']}/chat/completions"
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    assert state["kind"] == "gepa_online" and state["status"] == "running"
    base = http.get(f"/api/v1/candidates/{state['baseline_candidate_id']}").json()
    assert base["candidate_content"] == BASELINE and base["is_baseline"] is True
    assert base["system_id"] == sid


@pytest.mark.parametrize(
    "extra",
    [
        {"metadata": {"baseline_prompt": "from metadata"}},
        {"config_body": {"initial_prompt": "from config"}},
        {
            "config_body": {
                "prompt_learning": {
                    "algorithm": "gepa",
                    "initial_prompt": {
                        "messages": [
                            {"role": "system", "pattern": "from messages"},
                            {"role": "user", "pattern": "{query}"},
                        ]
                    },
                }
            }
        },
    ],
)
def test_baseline_sources(http: httpx.Client, extra: dict[str, Any]) -> None:
    sid = f"base-{next(_counter)}"
    r = http.post("/api/v1/online/sessions", json={"session_id": sid, **extra})
    assert r.status_code == 200 and r.json()["created"] is True
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    text = http.get(f"/api/v1/candidates/{state['baseline_candidate_id']}").json()
    assert text["candidate_content"].startswith("from ")


def test_create_without_session_id_generates_one(http: httpx.Client) -> None:
    r = http.post(
        "/api/v1/online/sessions",
        json={"kind": "mipro_online", "system": {"name": "banking77"}, "config_body": {}},
    )
    assert r.status_code == 200
    sid = r.json()["session_id"]
    assert sid.startswith("sess_") and r.json()["created"] is True


def test_create_validation(http: httpx.Client) -> None:
    r = http.post("/api/v1/online/sessions", json={"kind": "nope"})
    assert r.status_code == 422 and "kind" in error_of(r)["message"]
    r = http.post("/api/v1/online/sessions", json={"session_id": "bad id!"})
    assert r.status_code == 400 and "session_id" in error_of(r)["message"]


def test_state_list_patch_prompt(http: httpx.Client, server: Any) -> None:
    sid = new_session(http)
    listed = http.get("/api/v1/online/sessions").json()["items"]
    assert sid in [s["session_id"] for s in listed]
    assert http.get(f"/api/v1/online/sessions/{sid}/state").json()["session_id"] == sid
    for state in ("paused", "running", "cancelled"):
        r = http.patch(f"/api/v1/online/sessions/{sid}", json={"state": state})
        assert r.status_code == 200 and r.json()["status"] == state
    r = http.patch(f"/api/v1/online/sessions/{sid}", json={"state": "exploding"})
    assert r.status_code == 422
    urls = http.get(f"/api/v1/online/sessions/{sid}/prompt", params={"correlation_id": "r-7"})
    assert urls.json()["chat_completions_url"].endswith(
        f"/sessions/{sid}/proxy/r-7/chat/completions"
    )
    r = http.get("/api/v1/online/sessions/missing-session")
    assert r.status_code == 404 and error_of(r)["code"] == "session_not_found"
    assert http.get("/api/v1/online/sessions/missing/prompt").status_code == 404


# -- rewards ------------------------------------------------------------------------------------


def test_reward_forms_and_idempotency(http: httpx.Client) -> None:
    sid = new_session(http)
    cid = http.post(f"/api/v1/online/sessions/{sid}/candidates", json={"candidate_content": "B"})
    cid = cid.json()["candidate_id"]
    url = f"/api/v1/online/sessions/{sid}/reward"
    r = http.post(
        url, json={"reward_info": {"score": 0.75}, "rollout_id": "r1", "candidate_id": cid}
    )
    ack = r.json()
    assert r.status_code == 200 and ack["status"] == "accepted" and ack["candidate_id"] == cid
    # inferred from expected/predicted
    r = http.post(
        url,
        json={"reward_info": {}, "metadata": {"expected": " Card_Lost ", "predicted": "card_lost"}},
    )
    assert r.json()["reward"] == 1.0
    # idempotency: header and body field
    for kw in ({"headers": {"Idempotency-Key": "idem-1"}}, {}):
        body = {"reward_info": {"score": 1}, "rollout_id": "r2"}
        if not kw:
            body["idempotency_key"] = "idem-2"
        first = http.post(url, json=body, **kw).json()
        again = http.post(url, json=body, **kw).json()
        assert (first["status"], again["status"]) == ("accepted", "duplicate")
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    assert state["reward_count"] == 4
    stats = {c["candidate_id"]: c for c in state["candidates"]}
    assert stats[cid]["reward_count"] == 1 and stats[cid]["avg_reward"] == 0.75


def test_bad_rewards_are_4xx_and_lose_nothing(http: httpx.Client) -> None:
    sid = new_session(http)
    url = f"/api/v1/online/sessions/{sid}/reward"
    assert (
        http.post(url, json={"reward_info": {"score": 0.5}, "rollout_id": "ok"}).status_code == 200
    )
    before = http.get(f"/api/v1/online/sessions/{sid}").json()
    bad = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"reward_info": {"score": "high"}}).encode(), 422, "invalid_reward"),
        (json.dumps({"reward_info": {"score": True}}).encode(), 422, "invalid_reward"),
        (b'{"reward_info": {"score": NaN}}', 422, "invalid_reward"),
        (json.dumps({"reward_info": {}}).encode(), 422, "missing_reward"),
        (json.dumps({"reward_info": "x"}).encode(), 422, "validation_error"),
        (
            json.dumps({"reward_info": {"score": 1}, "candidate_id": "cand_nope"}).encode(),
            404,
            "candidate_not_found",
        ),
        (
            json.dumps(
                {"reward_info": {"score": 1}, "feedback": 1, "metadata": {"x": "y" * 70_000}}
            ).encode(),
            400,
            "reward_rejected",
        ),
    ]
    for raw, status, code in bad:
        r = http.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, (raw[:60], r.text)
        assert error_of(r)["code"] == code
    assert (
        http.post(
            "/api/v1/online/sessions/nope/reward", json={"reward_info": {"score": 1}}
        ).status_code
        == 404
    )
    after = http.get(f"/api/v1/online/sessions/{sid}").json()
    assert after["reward_count"] == before["reward_count"] == 1
    assert after["version"] == before["version"]


def test_batch_rewards_and_rollouts(http: httpx.Client) -> None:
    sid = new_session(http)
    rollouts = [
        {
            "session_id": sid,
            "rollout_id": f"b{i}",
            "candidate_id": None,
            "input": [{"role": "user", "content": "hi"}],
        }
        for i in range(5)
    ] + [{"rollout_id": "no-session"}, "junk"]
    r = http.post("/api/v1/rollouts/batch", json={"rollouts": rollouts})
    body = r.json()
    assert r.status_code == 200 and body["accepted"] == 5 and body["skipped"] == 2
    assert [e["index"] for e in body["errors"]] == [5, 6]
    assert body["statuses"] == ["accepted"] * 5 + ["skipped"] * 2
    # idempotent; a repeat within one batch counts as a duplicate of the first
    again = http.post(
        "/api/v1/rollouts/batch", json={"rollouts": [*rollouts[:5], {**rollouts[0]}]}
    ).json()
    assert (again["accepted"], again["duplicates"]) == (0, 6)
    assert again["statuses"] == ["duplicate"] * 6
    # session-scoped variant fills session_id
    r = http.post(
        f"/api/v1/online/sessions/{sid}/rollouts:batch", json={"rollouts": [{"rollout_id": "b9"}]}
    )
    assert r.json() == {
        "accepted": 1,
        "duplicates": 0,
        "supplemented": 0,
        "skipped": 0,
        "errors": [],
        "statuses": ["accepted"],
    }
    rewards = [
        {"idempotency_key": f"k{i}", "rollout_id": f"b{i}", "value": i / 4} for i in range(5)
    ] + [
        {"idempotency_key": "k0", "rollout_id": "b0", "value": 0.0},  # the same reward again
        {"idempotency_key": "kbad", "rollout_id": "b1", "value": float("inf")},
        {"idempotency_key": "knone", "rollout_id": "unknown-rollout", "value": 1.0},
    ]
    r = http.post(
        "/api/v1/rewards/batch",
        content=json.dumps({"rewards": rewards}),
        headers={"content-type": "application/json"},
    )
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted"] * 5 + [
        "duplicate",
        "rejected",
        "rejected",
    ]
    assert results[6]["idempotency_key"] == "kbad" and results[6]["error"]
    r = http.post(
        f"/api/v1/online/sessions/{sid}/rewards:batch",
        json={
            "rewards": [
                {
                    "idempotency_key": "s1",
                    "rollout_id": "implicit-1",
                    "value": 0.5,
                    "candidate_id": None,
                }
            ]
        },
    )
    assert r.json()["results"][0]["status"] == "accepted"
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    assert state["rollout_count"] == 7 and state["reward_count"] == 6
    r = http.post("/api/v1/rewards/batch", json={"rewards": "nope"})
    assert r.status_code == 422


# -- candidates ----------------------------------------------------------------------------


def test_candidates_add_list_page_sort_get_archive(http: httpx.Client) -> None:
    sid = new_session(http)
    ids = []
    for i in range(4):
        r = http.post(
            f"/api/v1/online/sessions/{sid}/candidates", json={"candidate_content": f"C{i}"}
        )
        assert r.status_code == 201
        ids.append(r.json()["candidate_id"])
    structured = {
        "object": "transformation",
        "text_replacements": [
            {"old_text": "support", "new_text": "banking", "apply_to_role": "system"}
        ],
    }
    r = http.post(
        f"/api/v1/online/sessions/{sid}/candidates",
        json={"artifact_payload": structured, "parent_id": ids[0]},
    )
    assert r.status_code == 201 and r.json()["parent_id"] == ids[0]
    sid_rewards = [
        {
            "idempotency_key": f"{sid}-{cid}-{j}",
            "rollout_id": f"{sid}-{cid}-{j}",
            "value": v,
            "session_id": sid,
            "candidate_id": cid,
        }
        for cid, v in zip(ids, (0.1, 0.9, 0.5, 0.3), strict=True)
        for j in range(2)
    ]
    assert http.post("/api/v1/rewards/batch", json={"rewards": sid_rewards}).status_code == 200
    page = http.get(f"/api/v1/systems/{sid}/candidates", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"] and page["system_id"] == sid
    seen = [i["candidate_id"] for i in page["items"]]
    while page["next_cursor"]:
        page = http.get(
            f"/api/v1/systems/{sid}/candidates", params={"limit": 2, "cursor": page["next_cursor"]}
        ).json()
        seen += [i["candidate_id"] for i in page["items"]]
    assert len(seen) == 6 and len(set(seen)) == 6
    best_first = http.get(
        f"/api/v1/systems/{sid}/candidates", params={"sort": "objective:desc", "limit": 1}
    ).json()["items"][0]
    assert best_first["candidate_id"] == ids[1] and best_first["objective"] == pytest.approx(0.9)
    lean = http.get(f"/api/v1/systems/{sid}/candidates", params={"include": ""}).json()["items"]
    assert all("candidate_content" not in i for i in lean)
    assert http.get(f"/api/v1/online/sessions/{sid}/candidates").json()["system_id"] == sid
    # archive (POST and DELETE), baseline refused, status filter
    r = http.post(f"/api/v1/candidates/{ids[0]}/archive", json={"reason": "worse"})
    assert r.json() == {
        "candidate_id": ids[0],
        "session_id": sid,
        "status": "archived",
        "changed": True,
    }
    assert http.delete(f"/api/v1/candidates/{ids[0]}").json()["changed"] is False
    assert http.delete(f"/api/v1/candidates/{ids[2]}").json()["changed"] is True
    archived = http.get(f"/api/v1/systems/{sid}/candidates", params={"status": "archived"}).json()
    assert {i["candidate_id"] for i in archived["items"]} == {ids[0], ids[2]}
    base = http.get(f"/api/v1/online/sessions/{sid}").json()["baseline_candidate_id"]
    r = http.post(f"/api/v1/candidates/{base}/archive")
    assert r.status_code == 400 and "baseline" in error_of(r)["message"]
    # get one, job variant, errors
    assert http.get(f"/api/v1/candidates/{ids[1]}").json()["candidate_content"] == "C1"
    assert http.get(f"/api/v1/offline/jobs/{sid}/candidates/{ids[1]}").status_code == 200
    assert (
        error_of(http.get(f"/api/v1/offline/jobs/job-x/candidates/{ids[1]}"))["code"]
        == "job_not_found"
    )
    assert http.get("/api/v1/candidates/cand_missing").status_code == 404
    assert http.get(f"/api/v1/systems/{sid}/candidates", params={"limit": 0}).status_code == 422
    assert (
        http.get(f"/api/v1/systems/{sid}/candidates", params={"sort": "bogus"}).status_code == 400
    )
    assert http.get(f"/api/v1/systems/{sid}/candidates", params={"cursor": "@@"}).status_code == 400
    r = http.post(f"/api/v1/online/sessions/{sid}/candidates", json={})
    assert r.status_code == 422
    r = http.post(
        f"/api/v1/online/sessions/{sid}/candidates",
        json={"candidate_content": "x", "parent_id": "cand_nope"},
    )
    assert r.status_code == 404


# -- legacy routes --------------------------------------------------------------------------


def test_mipro_status_and_state(http: httpx.Client) -> None:
    sid = new_session(http)
    url = f"/api/prompt-learning/online/mipro/systems/{sid}/status"
    r = http.post(url, json={"rollout_id": "m1", "status": "reward", "reward": 0.5})
    assert r.status_code == 200 and r.json()["result"] == "accepted" and "candidate_id" in r.json()
    r = http.post(url, json={"rollout_id": "m1", "status": "done"})
    assert r.status_code == 200 and r.json()["status"] == "done"
    assert http.post(url, json={"rollout_id": "m1", "status": "reward"}).status_code == 422
    assert http.post(url, json={"status": "reward", "reward": 1}).status_code == 422
    state = http.get(f"/api/prompt-learning/online/mipro/systems/{sid}/state").json()
    assert state["reward_count"] == 1 and isinstance(state["candidates"], dict)
    assert {"best_candidate_id", "version", "rollout_count", "proposal_seq"} <= set(state)


@pytest.mark.parametrize("algo", ["gepa", "mipro"])
def test_prompt_learning_session_routes(http: httpx.Client, algo: str) -> None:
    base = f"/api/prompt-learning/online/{algo}/sessions"
    r = http.post(
        base, json={"config_body": {"initial_prompt": "legacy"}, "overrides": {}, "metadata": {}}
    )
    assert r.status_code == 200
    sid = r.json()["session_id"]
    assert http.get(f"{base}/{sid}").json()["kind"] == f"{algo}_online"
    assert http.get(f"{base}/{sid}/prompt").json()["proxy_url"].endswith(f"{sid}/proxy")
    assert http.post(f"{base}/{sid}/reward", json={"reward_info": {"score": 1}}).json()["ok"]
    for action, status in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        assert http.post(f"{base}/{sid}/{action}", json={}).json()["status"] == status


# -- change feed ----------------------------------------------------------------------------


def test_long_poll_wakes_on_change(http: httpx.Client, server: Any) -> None:
    sid = new_session(http)
    version = http.get(f"/api/v1/online/sessions/{sid}").json()["version"]
    t0 = time.monotonic()
    r = http.get(f"/api/v1/online/sessions/{sid}", params={"wait_version": version, "timeout": 0.2})
    assert r.json()["version"] == version and time.monotonic() - t0 >= 0.15

    def later() -> None:
        time.sleep(0.2)
        httpx.post(
            f"{server.url}/api/v1/online/sessions/{sid}/reward", json={"reward_info": {"score": 1}}
        )

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    r = http.get(f"/api/v1/online/sessions/{sid}", params={"wait_version": version, "timeout": 10})
    assert r.json()["version"] > version and time.monotonic() - t0 < 5


def test_sse_events_stream_state_and_best_changes(http: httpx.Client, server: Any) -> None:
    sid = new_session(http, config_body={"min_rollouts_for_best": 3})
    cid = http.post(f"/api/v1/online/sessions/{sid}/candidates", json={"candidate_content": "X"})
    cid = cid.json()["candidate_id"]
    base = http.get(f"/api/v1/online/sessions/{sid}").json()["baseline_candidate_id"]
    events: list[tuple[str, dict[str, Any]]] = []

    def reader() -> None:
        with httpx.stream(
            "GET",
            f"{server.url}/api/v1/online/sessions/{sid}/events",
            params={"min_interval": 0},
            headers={"Accept": "text/event-stream"},
            timeout=10,
        ) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    events.append((name, json.loads(line[6:])))
                    if name == "best_candidate":
                        return

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + 5
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert events and events[0][0] == "state" and events[0][1]["best_candidate_id"] == base
    rewards = [
        {
            "idempotency_key": f"{sid}-{c}-{i}",
            "rollout_id": f"{sid}-{c}-{i}",
            "value": v,
            "session_id": sid,
            "candidate_id": c,
        }
        for i in range(40)  # interleaved: evidence over the same period
        for c, v in ((base, 0.0), (cid, 1.0))
    ]
    assert http.post("/api/v1/rewards/batch", json={"rewards": rewards}).status_code == 200
    t.join(10)
    assert not t.is_alive()
    assert events[-1][0] == "best_candidate" and events[-1][1]["best_candidate_id"] == cid
    assert http.get("/api/v1/online/sessions/missing/events").status_code == 404


def test_history_views(http: httpx.Client) -> None:
    sid = new_session(http)
    for i in range(3):
        http.post(
            f"/api/v1/online/sessions/{sid}/reward",
            json={"reward_info": {"score": i}, "rollout_id": f"h{i}"},
        )
    rollouts = http.get(f"/api/v1/online/sessions/{sid}/rollouts").json()["items"]
    assert [r["rollout_id"] for r in rollouts] == ["h2", "h1", "h0"]
    assert rollouts[0]["rewards"][0]["value"] == 2
    tl = http.get(f"/api/v1/online/sessions/{sid}/timeline", params={"buckets": 4}).json()
    assert len(tl["buckets"]) == 4 and sum(b["rollouts"] for b in tl["buckets"]) == 3


# -- the hot routes (answered before FastAPI) ----------------------------------------------

# The hot layer answers JSON bodies sent as application/json and GETs without a query
# string; the same requests sent as another JSON type, or with a query parameter the
# route ignores, are answered by the FastAPI route. Both must answer alike.
HOT = {"content-type": "application/json"}
FASTAPI = {"content-type": "application/x-test+json"}


def both_ways(
    http: httpx.Client,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, httpx.Response]:
    """The same request through the hot layer, then through FastAPI."""
    out = []
    for via, query in ((HOT, ""), (FASTAPI, "?via=fastapi")):
        if body is None and raw is None:
            out.append(http.request(method, path + query, headers=headers))
        else:
            content = raw if raw is not None else json.dumps(body(via is HOT)).encode()
            out.append(
                http.request(method, path, content=content, headers={**via, **(headers or {})})
            )
    return out[0], out[1]


def test_hot_routes_answer_errors_as_fastapi_does(http: httpx.Client) -> None:
    sid = new_session(http)
    url = f"/api/v1/online/sessions/{sid}/reward"
    version = http.get(f"/api/v1/online/sessions/{sid}").json()["version"]
    cases: list[tuple[str, str, Any, bytes | None, dict[str, str] | None, int]] = [
        (
            "POST",
            "/api/v1/online/sessions/nope/reward",
            {"reward_info": {"score": 1}},
            None,
            None,
            404,
        ),
        ("POST", url, {"reward_info": {"score": 1}, "candidate_id": "cand_nope"}, None, None, 404),
        ("POST", url, {"reward_info": {"score": "high"}}, None, None, 422),
        ("POST", url, {"reward_info": {}}, None, None, 422),
        ("POST", url, {"reward_info": {"score": 1}, "rollout_id": ""}, None, None, 422),
        ("POST", url, None, b"{not json", None, 400),
        ("POST", url, None, b"", None, 422),
        ("POST", url, {"reward_info": {"score": 1}}, None, {"idempotency-key": "k" * 300}, 422),
        ("POST", "/api/v1/online/sessions/bad id/rewards:batch", {"rewards": []}, None, None, 400),
        ("POST", "/api/v1/rollouts/batch", {"rollouts": "x"}, None, None, 422),
        (
            "POST",
            f"/api/prompt-learning/online/mipro/systems/{sid}/status",
            {"rollout_id": "r", "status": "reward"},
            None,
            None,
            422,
        ),
        (
            "POST",
            "/api/prompt-learning/online/mipro/systems/nope/status",
            {"rollout_id": "r", "status": "done"},
            None,
            None,
            404,
        ),
        ("GET", "/api/v1/online/sessions/nope", None, None, None, 404),
        ("GET", "/api/v1/online/sessions/bad id/state", None, None, None, 400),
        ("GET", "/api/v1/candidates/cand_nope", None, None, None, 404),
    ]
    for method, path, body, raw, headers, status in cases:
        make = (lambda hot, b=body: b) if body is not None else None
        hot, slow = both_ways(http, method, path, make, raw=raw, headers=headers)
        assert hot.status_code == slow.status_code == status, (path, body, hot.text, slow.text)
        assert hot.json() == slow.json(), (path, body)
        error_of(hot)
    assert http.get(f"/api/v1/online/sessions/{sid}").json()["version"] == version


def test_hot_routes_answer_successes_as_fastapi_does(http: httpx.Client) -> None:
    sid = new_session(http)
    cid = http.post(f"/api/v1/online/sessions/{sid}/candidates", json={"candidate_content": "B"})
    cid = cid.json()["candidate_id"]

    def same(hot: httpx.Response, slow: httpx.Response, *varying: str) -> None:
        assert hot.status_code == slow.status_code == 200, (hot.text, slow.text)
        a, b = hot.json(), slow.json()
        for key in varying:
            assert a.pop(key) != b.pop(key)
        assert a == b

    reward = {"reward_info": {"score": 0.5, "why": "x"}, "candidate_id": cid, "trace_ref": "t"}
    for path in (
        f"/api/v1/online/sessions/{sid}/reward",
        f"/api/prompt-learning/online/gepa/sessions/{sid}/reward",
    ):
        same(
            *both_ways(
                http, "POST", path, lambda hot, p=path: {**reward, "rollout_id": f"r-{hot}-{p}"}
            ),
            "rollout_id",
            "idempotency_key",
        )
    dup = {"reward_info": {"score": 1}, "rollout_id": "dup", "idempotency_key": "dup"}
    http.post(f"/api/v1/online/sessions/{sid}/reward", json=dup)
    same(*both_ways(http, "POST", f"/api/v1/online/sessions/{sid}/reward", lambda hot: dup))
    hot, slow = both_ways(
        http,
        "POST",
        f"/api/v1/online/sessions/{sid}/reward",
        lambda hot: {"reward_info": {"score": 1}, "rollout_id": "h"},
        headers={"Idempotency-Key": "from-header"},
    )  # the header key reached both: the second is a duplicate of the first
    assert [r.json()["status"] for r in (hot, slow)] == ["accepted", "duplicate"]
    assert hot.json()["idempotency_key"] == slow.json()["idempotency_key"] == "from-header"
    same(
        *both_ways(
            http,
            "POST",
            f"/api/v1/online/sessions/{sid}/rollouts:batch",
            lambda hot: {"rollouts": [{"rollout_id": f"b-{hot}", "candidate_id": cid}, {"x": 1}]},
        )
    )
    hot, slow = both_ways(
        http,
        "POST",
        "/api/v1/rewards/batch",
        lambda hot: {
            "rewards": [
                {"idempotency_key": "dup", "rollout_id": "dup", "value": 1},
                {"idempotency_key": f"new-{hot}", "rollout_id": f"b-{hot}", "value": 1},
                {"idempotency_key": "bad", "rollout_id": f"b-{hot}", "value": "x"},
            ]
        },
    )
    results = [[(r["status"], r.get("error")) for r in x.json()["results"]] for x in (hot, slow)]
    assert results[0] == results[1]
    assert [status for status, _ in results[0]] == ["duplicate", "accepted", "rejected"]
    same(
        *both_ways(
            http,
            "POST",
            f"/api/prompt-learning/online/mipro/systems/{sid}/status",
            lambda hot: {"rollout_id": f"b-{hot}", "status": "done"},
        ),
        "rollout_id",
    )
    same(*both_ways(http, "GET", f"/api/v1/online/sessions/{sid}"))
    same(*both_ways(http, "GET", f"/api/v1/online/sessions/{sid}/state"))
    same(*both_ways(http, "GET", f"/api/v1/candidates/{cid}"))
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    assert state["rollout_count"] == state["reward_count"] == 8


def test_hot_routes_are_the_documented_routes(server: Any) -> None:
    from synth_middleware.server.models import RewardRequest
    from synth_middleware.server.routes.hot import ROUTES, HotRoutes

    paths = server.app.openapi()["paths"]
    hot = HotRoutes(server.app, ctx=server.app.state.synth)
    for route in ROUTES:
        op = paths[route.path][route.method.lower()]  # same path, same method, documented
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        ref = body.get("schema", {}).get("$ref")
        assert ref == (f"#/components/schemas/{route.model.__name__}" if route.model else None)
        names = re.findall(r"\{(\w+)\}", route.path)
        concrete = re.sub(r"\{(\w+)\}", r"\1-x", route.path)
        assert hot.match(route.method, concrete) == (route, {n: f"{n}-x" for n in names})
    # ordinary JSON bodies are parsed here; anything else is left to FastAPI
    ok = b'{"reward_info": {"score": 1}}'
    assert isinstance(
        hot._parse(RewardRequest, ok, [(b"content-type", b"application/json")]), RewardRequest
    )
    assert isinstance(hot._parse(RewardRequest, ok, []), RewardRequest)
    for raw, content_type in (
        (ok, b"application/x-test+json"),
        (ok, b"text/plain"),
        (b"", b"application/json"),
        (b"{", b"application/json"),
        (b'{"reward_info": 1}', b"application/json"),
    ):
        assert hot._parse(RewardRequest, raw, [(b"content-type", content_type)]) is None
    assert hot.match("POST", "/api/v1/online/sessions/s/reward/extra") is None
    assert hot.match("DELETE", "/api/v1/candidates/c") is None
    assert hot.match("GET", "/api/v1/candidates/a/b") is None


def test_json_bodies_without_content_type_are_json_on_every_route(http: httpx.Client) -> None:
    sid = f"noct-{next(_counter)}"
    body = json.dumps({"session_id": sid, "baseline": "b"}).encode()
    r = http.post("/api/v1/online/sessions", content=body)  # a FastAPI route
    assert "content-type" not in r.request.headers and r.status_code == 200, r.text
    reward = json.dumps({"reward_info": {"score": 1}}).encode()
    r = http.post(f"/api/v1/online/sessions/{sid}/reward", content=reward)  # a hot one
    assert r.status_code == 200, r.text
    for path in ("/api/v1/online/sessions", f"/api/v1/online/sessions/{sid}/reward"):
        r = http.post(path, content=body, headers={"content-type": "text/plain"})
        # a type a web page can post cross-site without a preflight: refused (issue #23)
        assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"


# -- the writer: group commit of concurrent rollout batches -----------------------------------


def _writer_engine(tmp_path: Any) -> Any:
    from synth_middleware.engine import Engine, open_store

    engine = Engine(open_store(str(tmp_path / "writer.db")))
    engine.ensure_session("w", baseline=BASELINE)
    return engine


def _ro(*ids: str, session: str = "w") -> list[dict[str, Any]]:
    return [{"session_id": session, "rollout_id": rid} for rid in ids]


@pytest.mark.parametrize("threaded", [False, True])
def test_writer_merges_concurrent_rollout_batches_with_exact_answers(
    tmp_path: Any, threaded: bool
) -> None:
    import asyncio

    from synth_middleware.server.writer import EngineWriter

    engine = _writer_engine(tmp_path)
    engine.record_rollouts(_ro("old"))
    writer = EngineWriter(engine, threaded=threaded)
    requests = [
        _ro("a1", "shared", "old"),
        [*_ro("b1"), "junk", *_ro("shared", "b2")],
        _ro("c1", "nobody-knows", session="no-such-session"),
        _ro("shared", "d1", "d1"),
    ]

    async def send() -> list[Any]:
        return await asyncio.gather(*(writer.record_rollouts(r) for r in requests))

    try:
        if threaded:
            writer.start()
        a, b, c, d = asyncio.run(send())
        if not threaded:  # inline: one drain of the queue, one transaction for all four
            assert (writer.batches, writer.jobs, writer.engine_calls) == (1, 4, 1)
        # Each answer is the request's own, as if the requests had committed in order.
        assert a.statuses == ["accepted", "accepted", "duplicate"]
        assert (a.accepted, a.duplicates, a.skipped, a.errors) == (2, 1, 0, [])
        assert b.statuses == ["accepted", "skipped", "duplicate", "accepted"]
        assert (b.accepted, b.duplicates, b.skipped) == (2, 1, 1)
        assert [i for i, _ in b.errors] == [1]
        assert (c.accepted, c.skipped) == (0, 2) and [i for i, _ in c.errors] == [0, 1]
        assert "unknown session" in c.errors[0][1]
        assert d.statuses == ["duplicate", "accepted", "duplicate"]
        assert (d.accepted, d.duplicates) == (1, 2)
        assert engine.get_state("w")["rollout_count"] == 1 + 5  # old, a1, shared, b1, b2, d1
    finally:
        writer.stop()
        engine.close()


def test_writer_groups_rollouts_and_rewards_across_interleaving_but_not_calls(
    tmp_path: Any,
) -> None:
    import asyncio

    from synth_middleware.server.writer import EngineWriter

    engine = _writer_engine(tmp_path)
    writer = EngineWriter(engine)

    def reward(i: int) -> list[dict[str, Any]]:
        return [{"idempotency_key": f"k{i}", "rollout_id": f"r{i}", "value": 1.0}]

    async def send() -> list[Any]:
        return await asyncio.gather(
            writer.record_rewards(reward(0)),  # queued before its rollout: still accepted
            writer.record_rollouts(_ro("r0")),
            writer.record_rollouts(_ro("r1")),
            writer.record_rewards(reward(1)),
            writer.call(lambda: engine.get_state("w")["reward_count"]),
            writer.record_rollouts(_ro("r2")),
            writer.record_rewards(reward(2)),
        )

    try:
        rw0, ro0, ro1, rw1, seen, ro2, rw2 = asyncio.run(send())
        # rollouts, rewards | the call (a barrier) | rollouts, rewards: five transactions
        assert (writer.jobs, writer.engine_calls) == (7, 5)
        assert [x[0]["status"] for x in (rw0, rw1, rw2)] == ["accepted"] * 3
        assert [x.accepted for x in (ro0, ro1, ro2)] == [1, 1, 1]
        assert seen == 2  # the call ran after the rewards queued before it, before the one after
        st = engine.get_state("w")
        assert (st["rollout_count"], st["reward_count"]) == (3, 3)
    finally:
        writer.stop()
        engine.close()


def test_concurrent_rollout_batches_over_http_are_counted_once(
    http: httpx.Client, server: BackgroundServer
) -> None:
    sid = new_session(http)
    shared = [f"shared{i}" for i in range(10)]
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def post(t: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            ids = [*shared, f"own{t}-0", f"own{t}-1"]
            body = {"rollouts": [{"session_id": sid, "rollout_id": rid} for rid in ids]}
            r = client.post("/api/v1/rollouts/batch", json=body)
            assert r.status_code == 200, r.text
            with lock:
                answers.append(r.json())

    threads = [threading.Thread(target=post, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a["accepted"] for a in answers) == 10 + 8 * 2
    assert sum(a["duplicates"] for a in answers) == 7 * 10
    assert all(a["skipped"] == 0 and a["errors"] == [] for a in answers)
    assert http.get(f"/api/v1/online/sessions/{sid}").json()["rollout_count"] == 26
