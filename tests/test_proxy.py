"""The Pattern A proxy against a local OpenAI-compatible upstream (FakeOpenAIServer)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

import openai

from synth_middleware.client.selection import routing_from_state
from synth_middleware.server.background import BackgroundServer
from synth_middleware.testing import FakeOpenAIServer

KEY = "synth-proxy-key"
UPSTREAM_KEY = "sk-upstream-secret"
BASELINE = "You are a support assistant."
H = {"X-API-Key": KEY}


def _system(body: dict[str, Any]) -> str:
    for m in body.get("messages", []):
        if m.get("role") in ("system", "developer"):
            return str(m.get("content"))
    return "<none>"


def reply(body: dict[str, Any]) -> str:
    """The upstream answers with the system prompt it received, so tests see the injection."""
    return f"SYSTEM[{_system(body)}]"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply=reply) as srv:
        yield srv


@pytest.fixture
def fresh_upstream(upstream: FakeOpenAIServer) -> FakeOpenAIServer:
    upstream.reset()
    return upstream


@pytest.fixture(scope="module")
def synth(
    upstream: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    db = tmp_path_factory.mktemp("proxy") / "synth.db"
    with BackgroundServer(
        db_path=db,
        api_key=KEY,
        upstream_url=upstream.url,
        upstream_api_key=UPSTREAM_KEY,
        proxy_refresh_interval=0.0,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(synth: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=synth.url, headers=H, timeout=10) as c:
        yield c


_n = iter(range(1000))


def session(
    http: httpx.Client, *candidates: str, baseline: str | None = BASELINE
) -> tuple[str, dict[str, str]]:
    sid = f"px{next(_n)}"
    body: dict[str, Any] = {"session_id": sid}
    if baseline is not None:
        body["baseline"] = baseline
    assert http.post("/api/v1/online/sessions", json=body).status_code == 200
    texts = {http.get(f"/api/v1/online/sessions/{sid}").json()["baseline_candidate_id"]: baseline}
    for text in candidates:
        cid = http.post(
            f"/api/v1/online/sessions/{sid}/candidates", json={"candidate_content": text}
        )
        texts[cid.json()["candidate_id"]] = text
    return sid, texts  # type: ignore[return-value]


def chat_body(user: str = "I lost my card", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": BASELINE}, {"role": "user", "content": user}],
        **extra,
    }


def test_non_streaming_injects_records_and_tags(
    http: httpx.Client, fresh_upstream: FakeOpenAIServer
) -> None:
    sid, texts = session(http, "CAND-A: be precise.", "CAND-B: one label only.")
    served: dict[str, int] = {}
    for _ in range(30):
        r = http.post(f"/api/v1/online/sessions/{sid}/proxy/chat/completions", json=chat_body())
        assert r.status_code == 200, r.text
        cid = r.headers["x-gepa-candidate-id"]
        assert r.headers["x-mipro-candidate-id"] == cid and r.headers["x-gepa-rollout-id"]
        assert r.json()["choices"][0]["message"]["content"] == f"SYSTEM[{texts[cid]}]"
        served[cid] = served.get(cid, 0) + 1
    assert len(served) >= 2, served  # Thompson explores candidates with no evidence
    # the upstream got the server's key, never the client's
    for headers in fresh_upstream.headers:
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert KEY not in json.dumps(headers)
    # the rollouts are recorded with the served candidate, the input and the output
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    assert state["rollout_count"] == 30
    rollouts = http.get(f"/api/v1/online/sessions/{sid}/rollouts", params={"limit": 1}).json()
    item = rollouts["items"][0]
    assert item["candidate_id"] in texts and item["model"] == "gpt-test"
    assert item["input"] == [{"role": "user", "content": "I lost my card"}]
    assert item["output"] == f"SYSTEM[{texts[item['candidate_id']]}]"


def test_named_rollout_is_sticky_and_reward_by_rollout_only(
    http: httpx.Client, fresh_upstream: Any
) -> None:
    sid, _ = session(http, "CAND-A", "CAND-B", "CAND-C")
    for rollout in ("ro-1", "ro-2", "ro-3"):
        seen = set()
        for path in ("chat/completions", "v1/chat/completions"):
            for _ in range(3):
                r = http.post(
                    f"/api/v1/online/sessions/{sid}/proxy/{rollout}/{path}", json=chat_body()
                )
                assert r.headers["x-gepa-rollout-id"] == rollout
                seen.add(r.headers["x-gepa-candidate-id"])
        assert len(seen) == 1
        cid = seen.pop()
        # the older MIPRO flow: reward and done name only the rollout
        status = f"/api/prompt-learning/online/mipro/systems/{sid}/status"
        ack = http.post(
            status, json={"rollout_id": rollout, "status": "reward", "reward": 1.0}
        ).json()
        assert ack["candidate_id"] == cid
        assert (
            http.post(status, json={"rollout_id": rollout, "status": "done"}).json()["candidate_id"]
            == cid
        )
        stats = {
            c["candidate_id"]: c
            for c in http.get(f"/api/v1/online/sessions/{sid}").json()["candidates"]
        }
        assert stats[cid]["reward_count"] >= 1
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    assert state["rollout_count"] == 3 and state["reward_count"] == 3


def test_paused_session_serves_its_best_and_openai_sdk_works(
    http: httpx.Client, synth: BackgroundServer, fresh_upstream: Any
) -> None:
    sid, texts = session(http, "CAND-A")
    http.patch(f"/api/v1/online/sessions/{sid}", json={"state": "paused"})
    urls = http.get(f"/api/v1/online/sessions/{sid}/prompt").json()
    client = openai.OpenAI(base_url=urls["proxy_url"], api_key=KEY, max_retries=0)
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(**chat_body())
        resp = raw.parse()
        assert resp.choices[0].message.content == f"SYSTEM[{BASELINE}]"
        assert texts[raw.headers["x-gepa-candidate-id"]] == BASELINE
    client.close()


def test_streaming_passes_chunks_and_records_after(
    http: httpx.Client, synth: BackgroundServer, fresh_upstream: Any
) -> None:
    sid, texts = session(http, "CAND-S")
    url = f"{synth.url}/api/v1/online/sessions/{sid}/proxy/stream-1/chat/completions"
    with httpx.stream("POST", url, headers=H, json=chat_body(stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        cid = r.headers["x-gepa-candidate-id"]
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in lines[:-1]
    )
    assert text == f"SYSTEM[{texts[cid]}]"
    # committed before [DONE] reached us
    item = http.get(f"/api/v1/online/sessions/{sid}/rollouts").json()["items"][0]
    assert item["rollout_id"] == "stream-1" and item["output"] == text
    # the OpenAI SDK streams through it too
    client = openai.OpenAI(
        base_url=f"{synth.url}/api/v1/online/sessions/{sid}/proxy", api_key=KEY, max_retries=0
    )
    chunks = list(client.chat.completions.create(**chat_body(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(
        "SYSTEM["
    )
    client.close()


def test_structured_candidate_and_baseline_registration(
    http: httpx.Client, fresh_upstream: Any
) -> None:
    sid, _ = session(http, baseline=None)
    r = http.post(f"/api/v1/online/sessions/{sid}/proxy/chat/completions", json=chat_body())
    assert r.status_code == 200
    # the first call's system prompt became the baseline
    state = http.get(f"/api/v1/online/sessions/{sid}").json()
    base = http.get(f"/api/v1/candidates/{state['baseline_candidate_id']}").json()
    assert base["candidate_content"] == BASELINE
    tf = {
        "object": "transformation",
        "text_replacements": [
            {"old_text": "support", "new_text": "BANKING", "apply_to_role": "system"}
        ],
    }
    cid = http.post(
        f"/api/v1/online/sessions/{sid}/candidates", json={"artifact_payload": tf}
    ).json()["candidate_id"]
    replies = set()
    for _ in range(20):
        r = http.post(f"/api/v1/online/sessions/{sid}/proxy/chat/completions", json=chat_body())
        replies.add(
            (r.headers["x-gepa-candidate-id"], r.json()["choices"][0]["message"]["content"])
        )
    assert (cid, "SYSTEM[You are a BANKING assistant.]") in replies


def test_bad_requests(http: httpx.Client) -> None:
    sid, _ = session(http)
    base = f"/api/v1/online/sessions/{sid}/proxy/chat/completions"
    r = http.post(base, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = http.post(base, json={"model": "m"})
    assert r.status_code == 422 and "messages" in r.json()["error"]["message"]
    r = http.post("/api/v1/online/sessions/nope/proxy/chat/completions", json=chat_body())
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_upstream_errors_map_to_json(http: httpx.Client, fresh_upstream: FakeOpenAIServer) -> None:
    sid, _ = session(http)
    url = f"/api/v1/online/sessions/{sid}/proxy/chat/completions"
    fresh_upstream.fail_next(500)
    r = http.post(url, json=chat_body())
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert r.json()["error"]["upstream_status"] == 500 and r.headers["x-gepa-rollout-id"]
    fresh_upstream.fail_next(429, retry_after=2)
    r = http.post(url, json=chat_body())
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    fresh_upstream.fail_next(401)
    r = http.post(url, json=chat_body())
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth_failed"
    fresh_upstream.fail_next(500)
    r = http.post(url, json=chat_body(stream=True))
    assert r.status_code == 502
    assert http.get(f"/api/v1/online/sessions/{sid}").json()["rollout_count"] == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_upstream_down_is_502_and_slow_is_504(tmp_path: Any) -> None:
    body = {"session_id": "s", "baseline": BASELINE}
    with BackgroundServer(
        db_path=tmp_path / "a.db", upstream_url=f"http://127.0.0.1:{_closed_port()}/v1"
    ) as down:
        httpx.post(f"{down.url}/api/v1/online/sessions", json=body)
        for stream in (False, True):
            r = httpx.post(
                f"{down.url}/api/v1/online/sessions/s/proxy/chat/completions",
                json=chat_body(stream=stream),
            )
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    with (
        FakeOpenAIServer(delay=2.0) as slow,
        BackgroundServer(
            db_path=tmp_path / "b.db", upstream_url=slow.url, upstream_timeout=0.2
        ) as srv,
    ):
        httpx.post(f"{srv.url}/api/v1/online/sessions", json=body)
        for stream in (False, True):
            r = httpx.post(
                f"{srv.url}/api/v1/online/sessions/s/proxy/chat/completions",
                json=chat_body(stream=stream),
                timeout=10,
            )
            assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    with BackgroundServer(db_path=tmp_path / "c.db") as none:
        httpx.post(f"{none.url}/api/v1/online/sessions", json=body)
        r = httpx.post(
            f"{none.url}/api/v1/online/sessions/s/proxy/chat/completions", json=chat_body()
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_not_configured"


# -- what FakeOpenAIServer cannot do: a canned-bytes upstream ------------------------------


class RawUpstream:
    """A loopback HTTP/1.1 server that answers every request with the same bytes and
    counts connections and requests (keep-alive unless ``close_after``)."""

    def __init__(self, answer: bytes, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            return
                        head += line
                    length = 0
                    for line in head.split(b"\r\n"):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    outer.requests.append(head + self.rfile.read(length))
                    self.wfile.write(outer.answer)
                    self.wfile.flush()
                    if outer.close_after:
                        return

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> RawUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _answer(body: bytes, status: str = "200 OK", **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


COMPLETION = json.dumps(
    {"object": "chat.completion", "choices": [{"message": {"content": "hi"}}]}
).encode()


def test_connections_are_pooled_and_proxy_env_is_ignored(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy from the environment would send every call to a closed port (502).
    closed = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, closed)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with (
        RawUpstream(_answer(COMPLETION, content_type="application/json")) as up,
        BackgroundServer(db_path=tmp_path / "p.db", upstream_url=up.url) as srv,
        httpx.Client(base_url=srv.url, trust_env=False) as c,
    ):
        c.post("/api/v1/online/sessions", json={"session_id": "s", "baseline": BASELINE})
        for _ in range(20):
            r = c.post("/api/v1/online/sessions/s/proxy/chat/completions", json=chat_body())
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"
        assert len(up.requests) == 20 and up.connections == 1  # one kept-alive connection
        assert up.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


def test_redirects_are_not_followed(tmp_path: Any) -> None:
    # Following one would send the upstream key wherever the redirect points.
    with RawUpstream(_answer(COMPLETION)) as elsewhere:
        moved = _answer(b"", "307 Temporary Redirect", location=f"{elsewhere.url}/chat/completions")
        with (
            RawUpstream(moved) as up,
            BackgroundServer(
                db_path=tmp_path / "p.db", upstream_url=up.url, upstream_api_key=UPSTREAM_KEY
            ) as srv,
        ):
            httpx.post(f"{srv.url}/api/v1/online/sessions", json={"session_id": "s"})
            for stream in (False, True):
                r = httpx.post(
                    f"{srv.url}/api/v1/online/sessions/s/proxy/chat/completions",
                    json=chat_body(stream=stream),
                )
                assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
                assert r.json()["error"]["upstream_status"] == 307
        assert len(up.requests) == 2 and elsewhere.requests == []


def test_stream_cut_by_the_upstream_ends_with_an_error_event_and_is_recorded(
    tmp_path: Any,
) -> None:
    event = b'data: {"choices":[{"delta":{"content":"partial"}}]}\n\n'
    cut = (  # a chunked stream that stops without its last chunk
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event)
    )
    with (
        RawUpstream(cut, close_after=True) as up,
        BackgroundServer(db_path=tmp_path / "p.db", upstream_url=up.url) as srv,
        httpx.Client(base_url=srv.url) as c,
    ):
        c.post("/api/v1/online/sessions", json={"session_id": "s", "baseline": BASELINE})
        r = c.post(
            "/api/v1/online/sessions/s/proxy/cut-1/chat/completions", json=chat_body(stream=True)
        )
        assert r.status_code == 200
        events = [line for line in r.text.split("\n") if line.startswith("data: ")]
        assert events[0] == event.decode().strip()
        assert json.loads(events[-1][6:])["error"]["code"] == "upstream_error"
        # recorded after the answer (no [DONE] came), with what the client received
        deadline = time.monotonic() + 5
        while True:
            items = c.get("/api/v1/online/sessions/s/rollouts").json()["items"]
            if items or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [(i["rollout_id"], i["output"]) for i in items] == [("cut-1", "partial")]


def test_routing_uses_the_engines_probability_best() -> None:
    stats = {
        "a": {"candidate_id": "a", "reward_count": 50, "avg_reward": 0.9, "reward_m2": 1.0},
        "b": {"candidate_id": "b", "reward_count": 50, "avg_reward": 0.1, "reward_m2": 1.0},
    }
    state: Any = {"policy": {"probability_best": {"a": 0.25, "b": 0.75}}}
    assert routing_from_state(state, ["a", "b"], stats) == [0.25, 0.75]
    # no (or an unusable) P(best) from the engine: computed from the statistics
    for policy in ({}, {"probability_best": {"a": 0.5}}, {"probability_best": {"a": -1, "b": 2}}):
        weights = routing_from_state({"policy": policy}, ["a", "b"], stats)  # type: ignore[typeddict-item]
        assert weights[0] > 0.99 and abs(sum(weights) - 1) < 1e-6


def test_proxy_routes_stay_in_the_openapi_document(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    base = "/api/v1/online/sessions/{session_id}/proxy"
    for tail in (
        "/chat/completions",
        "/v1/chat/completions",
        "/{rollout_id}/chat/completions",
        "/{rollout_id}/v1/chat/completions",
    ):
        op = paths[base + tail]["post"]
        assert op["tags"] == ["proxy"]
        assert "messages" in op["requestBody"]["content"]["application/json"]["schema"]["required"]
