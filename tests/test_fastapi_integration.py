"""FastAPI integration: one rollout per request, the signed header, the rollout
dependency, background/spawned tasks, streaming, the feedback endpoint; via
the test client and via uvicorn on loopback."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx2
import openai
import pytest
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from helpers import BASELINE, CANDIDATE, candidate_stats, messages, pick, seed
from synth_middleware_fastapi import (
    SynthMiddleware,
    SynthRollout,
    feedback_router,
    get_rollout,
    synth_rollout,
)
from web_helpers import serve

import synth_middleware as synth
from synth_middleware import Rollout
from synth_middleware._tokens import decode_token, encode_token
from synth_middleware.client import web as _web

SECRET = "test-secret-fastapi"


def _clients(server, backend, session):  # type: ignore[no-untyped-def]
    (cid,) = seed(backend, session, CANDIDATE)
    kw = {"session": session, "backend": backend, "selection": pick(cid), "warm": True}
    aclient = synth.wrap(openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0), **kw)
    client = synth.wrap(openai.OpenAI(api_key="k", base_url=server.url, max_retries=0), **kw)
    return aclient, client, cid


def _app(aclient, client, *, feedback=None, **mw):  # type: ignore[no-untyped-def]
    app = FastAPI()
    mw.setdefault("secret", SECRET)
    app.add_middleware(SynthMiddleware, **mw)
    app.include_router(feedback or feedback_router())
    seen: dict[str, list[str]] = {"background": [], "task": []}
    app.state.seen = seen

    @app.post("/classify")
    async def classify(text: str, r: SynthRollout, bg: BackgroundTasks) -> dict[str, object]:
        first = await aclient.chat.completions.create(model="m", messages=messages(text))
        second = await aclient.chat.completions.create(model="m", messages=messages(text))

        async def in_task() -> None:
            await aclient.chat.completions.create(model="m", messages=messages("task"))
            seen["task"].append(synth.current_rollout().rollout_id)  # type: ignore[union-attr]

        await asyncio.create_task(in_task())

        async def later() -> None:
            resp = await aclient.chat.completions.create(model="m", messages=messages("bg"))
            seen["background"].append(resp.synth.rollout_id)

        bg.add_task(later)
        return {
            "rollout_id": r.rollout_id,
            "calls": [first.synth.rollout_id, second.synth.rollout_id],
            "key": r.key,
            "answer": first.choices[0].message.content,
        }

    @app.get("/sync")
    def sync_handler(r: Rollout = synth_rollout) -> dict[str, object]:  # thread pool
        resp = client.chat.completions.create(model="m", messages=messages("sync"))
        return {"rollout_id": r.rollout_id, "call": resp.synth.rollout_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            s = await aclient.chat.completions.create(
                model="m", messages=messages("one two three"), stream=True
            )
            async for chunk in s:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
            yield f"|{s.synth.rollout_id}|{synth.current_rollout().rollout_id}"  # type: ignore[union-attr]

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/slow")
    async def slow(r: SynthRollout) -> dict[str, object]:
        await asyncio.sleep(0.02)
        resp = await aclient.chat.completions.create(model="m", messages=messages("slow"))
        await asyncio.sleep(0.02)
        return {
            "rollout_id": r.rollout_id,
            "call": resp.synth.rollout_id,
            "current": synth.current_rollout().rollout_id,
        }  # type: ignore[union-attr]

    @app.get("/plain")
    async def plain(request: Request) -> dict[str, object]:
        return {"state": request.state.synth_rollout.rollout_id}

    return app


def _token(resp) -> str:  # type: ignore[no-untyped-def]
    tok = resp.headers["x-synth-rollout"]
    assert tok
    return tok  # type: ignore[no-any-return]


def test_one_rollout_per_request_with_header_dependency_and_tasks(server, backend):
    aclient, client, cid = _clients(server, backend, "fa-basic")
    app = _app(aclient, client, key_header="x-user-id")
    with TestClient(app) as tc:
        resp = tc.post("/classify", params={"text": "card lost"}, headers={"x-user-id": "u1"})
        assert resp.status_code == 200
        body = resp.json()
        data = decode_token(_token(resp), secret=SECRET)
        assert data.rollout_id == body["rollout_id"]
        assert body["calls"] == [body["rollout_id"]] * 2  # both calls joined the request's rollout
        assert (data.session_id, data.candidate_id) == ("fa-basic", cid)
        assert body["key"] == "u1"
        assert app.state.seen["task"] == [body["rollout_id"]]
        assert app.state.seen["background"] == [body["rollout_id"]]
        assert server.system_prompts()[-1] == CANDIDATE

        sync = tc.get("/sync")
        assert sync.json()["call"] == sync.json()["rollout_id"]
        assert decode_token(_token(sync), secret=SECRET).rollout_id == sync.json()["rollout_id"]
        assert sync.json()["rollout_id"] != body["rollout_id"]

        plain = tc.get("/plain")
        assert plain.json()["state"] == decode_token(_token(plain), secret=SECRET).rollout_id
    assert synth.current_rollout() is None


def test_feedback_in_a_later_request_updates_the_served_candidate(server, backend):
    aclient, client, cid = _clients(server, backend, "fa-feedback")
    app = _app(aclient, client)
    with TestClient(app) as tc:
        first = tc.post("/classify", params={"text": "card lost"})
        token = _token(first)
        before = candidate_stats(backend, "fa-feedback", cid)
        fb = tc.post(
            "/synth/feedback", json={"token": token, "reward": 1.0, "feedback": "right label"}
        )
        assert fb.status_code == 202, fb.text
        assert fb.json()["status"] == "accepted"
        assert fb.json()["rollout_id"] == first.json()["rollout_id"]
        assert "x-synth-rollout" not in fb.headers  # the feedback path opens no rollout
    assert synth.flush(5)
    after = candidate_stats(backend, "fa-feedback", cid)
    assert after["reward_count"] == before["reward_count"] + 1
    assert after["avg_reward"] == pytest.approx(1.0)
    assert synth.stats()["rejected"] == 0


def test_feedback_refusals(server, backend, monkeypatch):
    aclient, client, cid = _clients(server, backend, "fa-refuse")
    auth_calls: list[str] = []

    async def auth(request: Request, token) -> bool:  # type: ignore[no-untyped-def]
        auth_calls.append(token.rollout_id)
        return request.headers.get("x-api-key") == "ok"

    app = _app(aclient, client, feedback=feedback_router(auth=auth), token_max_age=60)
    with TestClient(app) as tc:
        token = _token(tc.post("/classify", params={"text": "x"}))
        data = decode_token(token, secret=SECRET)
        ok = {"x-api-key": "ok"}

        def post(body, headers=ok, **kw):  # type: ignore[no-untyped-def]
            return tc.post("/synth/feedback", headers=headers, json=body, **kw)

        def code(resp):  # type: ignore[no-untyped-def]
            return resp.status_code, resp.json()["error"]["code"]

        # forged: another secret, no signature, tampered body
        other = encode_token("fa-refuse", data.rollout_id, cid, secret="other")
        assert code(post({"token": other, "reward": 1})) == (403, "invalid_token")
        unsigned = token.partition(".")[0]
        assert code(post({"token": unsigned, "reward": 1})) == (403, "invalid_token")
        forged = encode_token("fa-refuse", "ro_someoneelse000000000000", cid, secret="x")
        forged = forged.partition(".")[0] + "." + token.partition(".")[2]
        assert code(post({"token": forged, "reward": 1})) == (403, "invalid_token")
        # expired: right secret, older than token_max_age
        old = encode_token(
            "fa-refuse", data.rollout_id, cid, secret=SECRET, issued_at=time.time() - 3600
        )
        assert code(post({"token": old, "reward": 1})) == (403, "token_expired")
        # bad rewards and bodies
        assert code(post({"token": token, "reward": "good"})) == (422, "invalid_reward")
        assert code(post({"token": token, "reward": True})) == (422, "invalid_reward")
        assert code(post({"token": token})) == (422, "invalid_reward")
        nan = tc.post(
            "/synth/feedback",
            headers={**ok, "content-type": "application/json"},
            content=b'{"token": "%s", "reward": NaN}' % token.encode(),
        )
        assert code(nan) == (422, "invalid_reward")
        assert code(post({"token": token, "reward": 1, "feedback": 5})) == (422, "invalid_feedback")
        assert code(post({"token": 7, "reward": 1})) == (422, "invalid_request")
        assert code(tc.post("/synth/feedback", headers=ok, content=b"not json")) == (
            400,
            "invalid_json",
        )
        assert code(post([1, 2])) == (400, "invalid_json")
        big = tc.post("/synth/feedback", headers=ok, content=b"x" * (_web.MAX_FEEDBACK_BODY + 1))
        assert code(big) == (413, "body_too_large")
        assert auth_calls == []  # nothing reached the auth check so far
        # the auth check refuses, then accepts
        assert code(post({"token": token, "reward": 1}, headers={})) == (403, "forbidden")
        good = post({"token": token, "reward": 0.5})
        assert good.status_code == 202
        assert auth_calls == [data.rollout_id, data.rollout_id]
    assert synth.flush(5)
    stats = candidate_stats(backend, "fa-refuse", cid)
    assert stats["reward_count"] == 1 and stats["avg_reward"] == pytest.approx(0.5)


def test_sticky_key_from_cookie_and_callable(server, backend):
    aclient, client, _ = _clients(server, backend, "fa-keys")
    app = _app(aclient, client, key_cookie="sid")
    with TestClient(app) as tc:
        tc.cookies.set("sid", "cookie-user")
        assert tc.post("/classify", params={"text": "a"}).json()["key"] == "cookie-user"
    # a fresh async client: the first one's connections belong to the first loop
    aclient2 = synth.wrap(
        openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="fa-keys",
        backend=backend,
    )
    app2 = _app(
        aclient2,
        client,
        key=lambda request: request.query_params.get("text"),
        key_header="x-user-id",
    )
    with TestClient(app2) as tc:
        r = tc.post("/classify", params={"text": "abc"}, headers={"x-user-id": "h"})
        assert r.json()["key"] == "abc"  # the callable wins over the header


def test_streaming_keeps_the_rollout_and_its_token_rewards_later(server, backend):
    aclient, client, cid = _clients(server, backend, "fa-stream")
    app = _app(aclient, client)
    with TestClient(app) as tc:
        resp = tc.get("/stream")
        text = resp.text
        _, stream_rid, current_rid = text.split("|")[:3]
        token = _token(resp)
        data = decode_token(token, secret=SECRET)
        # the model call happened inside the body, after the headers were sent
        assert data.rollout_id == stream_rid == current_rid
        assert data.session_id is None  # not known yet when the headers went out
        assert text.startswith("echo: one two three")
        fb = tc.post("/synth/feedback", json={"token": token, "reward": 0.25})
        assert fb.status_code == 202
    assert synth.flush(5)
    stats = candidate_stats(backend, "fa-stream", cid)
    assert stats["reward_count"] == 1 and stats["avg_reward"] == pytest.approx(0.25)
    assert synth.stats()["rejected"] == 0


def test_session_option_names_the_session_in_streaming_tokens(server, backend):
    aclient, client, _ = _clients(server, backend, "fa-stream2")
    app = _app(aclient, client, session="fa-stream2")
    with TestClient(app) as tc:
        resp = tc.get("/stream")
        assert decode_token(_token(resp), secret=SECRET).session_id == "fa-stream2"


def test_uvicorn_streaming_and_concurrent_requests_never_share(server, backend):
    aclient, client, _ = _clients(server, backend, "fa-uvicorn")
    app = _app(aclient, client)
    with serve(app) as url:

        async def main() -> list[tuple[str, dict]]:
            async with httpx2.AsyncClient(base_url=url, timeout=10) as http:

                async def one(i: int):  # type: ignore[no-untyped-def]
                    resp = await http.get("/slow")
                    return _token(resp), resp.json()

                out = await asyncio.gather(*(one(i) for i in range(24)))
                async with http.stream("GET", "/stream") as s:
                    chunks = [c async for c in s.aiter_text()]
                    token = _token(s)
                return [*out, (token, {"stream": "".join(chunks)})]

        results = asyncio.run(main())
    slow, (stoken, sbody) = results[:-1], results[-1]
    ids = []
    for token, body in slow:
        rid = decode_token(token, secret=SECRET).rollout_id
        assert body["rollout_id"] == body["call"] == body["current"] == rid
        ids.append(rid)
    assert len(set(ids)) == len(ids) == 24
    assert sbody["stream"].split("|")[1] == decode_token(stoken, secret=SECRET).rollout_id
    assert synth.flush(5)
    state = backend.get_state("fa-uvicorn")
    assert sum(c["rollout_count"] for c in state["candidates"]) == 25


def test_secret_from_settings_and_router_follows_the_middleware(server, backend, monkeypatch):
    aclient, client, cid = _clients(server, backend, "fa-secret")
    monkeypatch.setattr(synth.settings, "token_secret", "from-settings")
    app = _app(aclient, client, secret=None)
    with TestClient(app) as tc:
        token = _token(tc.post("/classify", params={"text": "a"}))
        decode_token(token, secret="from-settings")  # verifies
        synth.reward(token, 1.0)  # the library's reward() accepts the header token too
    aclient2 = synth.wrap(
        openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="fa-secret",
        backend=backend,
        selection=pick(cid),
    )
    app2 = _app(aclient2, client, secret="mw-only")  # router has no secret of its own
    with TestClient(app2) as tc:
        token = _token(tc.post("/classify", params={"text": "a"}))
        decode_token(token, secret="mw-only")
        assert tc.post("/synth/feedback", json={"token": token, "reward": 1}).status_code == 202
    assert synth.flush(5)
    assert candidate_stats(backend, "fa-secret", cid)["reward_count"] == 2


def test_generated_secret_warns_once(server, backend, monkeypatch, caplog):
    aclient, client, _ = _clients(server, backend, "fa-gen")
    monkeypatch.setattr(synth.settings, "token_secret", None)
    monkeypatch.setattr(_web, "_process_secret", None)
    app = _app(aclient, client, secret=None)
    with caplog.at_level(logging.WARNING, logger="synth_middleware"), TestClient(app) as tc:
        t1 = _token(tc.post("/classify", params={"text": "a"}))
        t2 = _token(tc.post("/classify", params={"text": "b"}))
        assert tc.post("/synth/feedback", json={"token": t1, "reward": 1}).status_code == 202
    warnings = [r for r in caplog.records if "per-process secret" in r.getMessage()]
    assert len(warnings) == 1
    assert decode_token(t2, secret=_web._process_secret).rollout_id


def test_excluded_paths_lifespan_and_missing_middleware():
    app = FastAPI()
    app.add_middleware(SynthMiddleware, secret=SECRET, exclude_paths=["/health"])

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"current": synth.current_rollout() is None}

    with TestClient(app) as tc:  # lifespan passes through
        resp = tc.get("/health")
        assert resp.json() == {"current": True} and "x-synth-rollout" not in resp.headers

    bare = FastAPI()

    @bare.get("/r")
    async def r(request: Request) -> dict[str, object]:
        try:
            get_rollout(request)
        except RuntimeError as exc:
            return {"error": str(exc)}
        return {}

    with TestClient(bare) as tc:
        assert "add_middleware" in tc.get("/r").json()["error"]


def test_bad_options_fail_at_startup():
    for kw in (
        {"header": "bad header"},
        {"key_header": ""},
        {"token_max_age": -1},
        {"key": "not callable"},
        {"session": ""},
    ):
        with pytest.raises(ValueError):
            SynthMiddleware(FastAPI(), **kw)  # type: ignore[arg-type]


def test_baseline_only_rollout_token_still_rewards(server, backend):
    # a cold session: the app's own prompt is served, no candidate in the token
    backend.ensure_session("fa-cold", baseline=BASELINE)
    aclient = synth.wrap(
        openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="fa-cold",
        backend=backend,
        warm=True,
    )
    app = _app(aclient, None)
    with TestClient(app) as tc:
        resp = tc.post("/classify", params={"text": "x"})
        assert resp.status_code == 200
        fb = tc.post("/synth/feedback", json={"token": _token(resp), "reward": 1})
        assert fb.status_code == 202
    assert synth.flush(5)
    base = backend.get_state("fa-cold")["candidates"][0]
    assert base["is_baseline"] and base["reward_count"] == 1


def test_example_app_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app" / "app.py"
    spec = importlib.util.spec_from_file_location("fastapi_example_app", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    state = module.demo()
    assert sum(c["reward_count"] for c in state["candidates"]) == 12
    assert "x-synth-rollout" in capsys.readouterr().out
