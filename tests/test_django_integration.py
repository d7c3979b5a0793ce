"""Django integration with a real settings module: sync and async views, WSGI
and ASGI (test clients and real servers on loopback), streaming, the
feedback endpoint, concurrency, forking and OpenTelemetry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx2
import openai
import pytest
from helpers import CANDIDATE, candidate_stats, pick, seed
from web_helpers import serve

import synth_middleware as synth
from synth_middleware._tokens import decode_token, encode_token

TESTS = Path(__file__).resolve().parent
SECRET = "django-test-secret"  # django_project.settings


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    from django_project import setup

    setup()


@pytest.fixture
def clients(server, backend, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from django_project import views

    session = "dj-" + request.node.name[:40].replace("[", "-").replace("]", "")
    (cid,) = seed(backend, session, CANDIDATE)
    kw = {"session": session, "backend": backend, "selection": pick(cid), "warm": True}
    views.CLIENTS["sync"] = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0), **kw
    )
    views.CLIENTS["async"] = lambda: synth.wrap(
        openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0), **kw
    )
    views.CLIENTS["cid"] = cid
    views.CLIENTS["session"] = session
    yield cid
    views.CLIENTS.clear()


def _token(resp) -> str:  # type: ignore[no-untyped-def]
    return resp["x-synth-rollout"]  # type: ignore[no-any-return]


def _feedback(client, token, reward, **kw):  # type: ignore[no-untyped-def]
    return client.post(
        "/synth/feedback",
        data=json.dumps({"token": token, "reward": reward, **kw}),
        content_type="application/json",
    )


def test_sync_and_async_views_under_wsgi(client, clients):
    resp = client.get("/classify", {"text": "card lost"}, headers={"x-user-id": "u7"})
    body = resp.json()
    data = decode_token(_token(resp), secret=SECRET)
    assert body["rollout_id"] == body["call"] == body["current"] == data.rollout_id
    assert data.candidate_id == clients and body["key"] == "u7"
    # an async view on the sync (WSGI) stack
    resp2 = client.get("/aclassify")
    b2 = resp2.json()
    assert (
        b2["rollout_id"]
        == b2["call"]
        == b2["task"]
        == decode_token(_token(resp2), secret=SECRET).rollout_id
    )
    assert b2["rollout_id"] != body["rollout_id"]
    assert synth.current_rollout() is None


async def test_sync_and_async_views_under_asgi(async_client, clients):
    resp = await async_client.get("/aclassify", headers={"x-user-id": "u8"})
    body = resp.json()
    data = decode_token(_token(resp), secret=SECRET)
    assert body["rollout_id"] == body["call"] == body["task"] == data.rollout_id
    assert data.candidate_id == clients and body["key"] == "u8"
    resp2 = await async_client.get("/classify")  # a sync view on the async stack
    b2 = resp2.json()
    assert (
        b2["rollout_id"]
        == b2["call"]
        == b2["current"]
        == decode_token(_token(resp2), secret=SECRET).rollout_id
    )
    assert synth.current_rollout() is None


def test_streaming_keeps_the_rollout_wsgi(client, clients):
    resp = client.get("/stream")
    text = b"".join(resp.streaming_content).decode()
    _, stream_rid, current_rid = text.split("|")
    assert decode_token(_token(resp), secret=SECRET).rollout_id == stream_rid == current_rid
    assert synth.current_rollout() is None


async def test_streaming_keeps_the_rollout_asgi(async_client, clients):
    resp = await async_client.get("/astream")
    text = b"".join([c async for c in resp.streaming_content]).decode()
    _, stream_rid, current_rid = text.split("|")
    assert decode_token(_token(resp), secret=SECRET).rollout_id == stream_rid == current_rid


def test_feedback_endpoint(client, clients, backend, settings):
    from django.test import Client
    from django_project import views

    session = views.CLIENTS["session"]
    first = client.get("/classify")
    token = _token(first)
    data = decode_token(token, secret=SECRET)
    strict = Client(enforce_csrf_checks=True)  # browsers post without a CSRF token
    ok = _feedback(strict, token, 1.0, feedback="resolved")
    assert ok.status_code == 202, ok.content
    assert ok.json()["rollout_id"] == data.rollout_id

    def code(resp):  # type: ignore[no-untyped-def]
        return resp.status_code, resp.json()["error"]["code"]

    forged = encode_token(session, data.rollout_id, clients, secret="not-the-secret")
    assert code(_feedback(client, forged, 1.0)) == (403, "invalid_token")
    assert code(_feedback(client, token.partition(".")[0], 1.0)) == (403, "invalid_token")
    old = encode_token(
        session, data.rollout_id, clients, secret=SECRET, issued_at=time.time() - 3600
    )  # TOKEN_MAX_AGE is 600
    assert code(_feedback(client, old, 1.0)) == (403, "token_expired")
    assert code(_feedback(client, token, "high")) == (422, "invalid_reward")
    assert code(_feedback(client, token, None)) == (422, "invalid_reward")
    assert code(client.post("/synth/feedback", data="{", content_type="application/json")) == (
        400,
        "invalid_json",
    )
    assert code(client.get("/synth/feedback")) == (405, "method_not_allowed")
    # one reward per token: a replay answers the first result, another value is a 409
    again = _feedback(client, token, 1.0, feedback="resolved")
    assert again.status_code == 202 and again.json() == ok.json()
    assert code(_feedback(client, token, 0.0)) == (409, "token_already_used")
    token = _token(client.get("/classify"))
    # a pluggable auth check, from the settings dict
    settings.SYNTH_MIDDLEWARE = {
        **settings.SYNTH_MIDDLEWARE,
        "FEEDBACK_AUTH": lambda request, tok: "HTTP_X_OK" in request.META,
    }
    assert code(_feedback(client, token, 1.0)) == (403, "forbidden")
    assert (
        client.post(
            "/synth/feedback",
            data=json.dumps({"token": token, "reward": 0.0}),
            content_type="application/json",
            headers={"x-ok": "1"},
        ).status_code
        == 202
    )
    assert synth.flush(5)
    stats = candidate_stats(backend, session, clients)
    assert stats["reward_count"] == 2 and stats["avg_reward"] == pytest.approx(0.5)


def test_bad_settings_are_reported(settings):
    from django.core.exceptions import ImproperlyConfigured
    from synth_middleware_django import SynthMiddleware

    settings.SYNTH_MIDDLEWARE = {"KEY_HEDAER": "x"}
    with pytest.raises(ImproperlyConfigured, match="KEY_HEDAER"):
        SynthMiddleware(lambda r: None)
    settings.SYNTH_MIDDLEWARE = {"TOKEN_MAX_AGE": 0}
    with pytest.raises(ImproperlyConfigured, match="token_max_age"):
        SynthMiddleware(lambda r: None)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_concurrent_requests_never_share_wsgi_and_asgi(clients):
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application

    httpd = make_server(
        "127.0.0.1",
        0,
        get_wsgi_application(),
        server_class=_ThreadingWSGIServer,
        handler_class=_Quiet,
    )
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        with httpx2.Client(base_url=url, timeout=10) as http, ThreadPoolExecutor(8) as pool:
            wsgi = list(pool.map(lambda i: http.get("/classify"), range(16)))
    finally:
        httpd.shutdown()
        httpd.server_close()

    with serve(get_asgi_application()) as url:

        async def main():  # type: ignore[no-untyped-def]
            async with httpx2.AsyncClient(base_url=url, timeout=10) as http:
                return await asyncio.gather(*(http.get("/aclassify") for _ in range(16)))

        asgi = asyncio.run(main())
    ids = []
    for resp in [*wsgi, *asgi]:
        assert resp.status_code == 200
        body = resp.json()
        rid = decode_token(resp.headers["x-synth-rollout"], secret=SECRET).rollout_id
        assert body["rollout_id"] == body["call"] == rid
        ids.append(rid)
    assert len(set(ids)) == 32


def test_reward_worker_survives_fork(server, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, os, sys, traceback
        sys.path.insert(0, {str(TESTS)!r})
        from django_project import setup, views
        setup()
        import openai
        import synth_middleware as synth
        from django.test import Client
        from helpers import CANDIDATE, candidate_stats, pick, seed
        from synth_middleware.backends.local import LocalBackend

        backend = LocalBackend({str(tmp_path / "fork.db")!r})
        (cid,) = seed(backend, "fork", CANDIDATE)
        views.CLIENTS["sync"] = synth.wrap(
            openai.OpenAI(api_key="k", base_url={server.url!r}, max_retries=0),
            session="fork", backend=backend, selection=pick(cid), warm=True)

        def rate(client, value):
            resp = client.get("/classify")
            fb = client.post("/synth/feedback", content_type="application/json",
                             data=json.dumps({{"token": resp["x-synth-rollout"], "reward": value}}))
            return fb.status_code == 202

        # the master (think gunicorn --preload) served a request: its worker thread runs
        assert rate(Client(), 1.0) and synth.flush(5)
        pid = os.fork()
        if pid == 0:
            try:
                ok = rate(Client(), 0.0) and synth.flush(5)
                os._exit(0 if ok else 3)
            except BaseException:
                traceback.print_exc()
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        stats = candidate_stats(backend, "fork", cid)
        print(json.dumps({{"child": os.waitstatus_to_exitcode(status),
                          "rewards": stats["reward_count"], "mean": stats["avg_reward"]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"child": 0, "rewards": 2, "mean": 0.5}, out.stderr


def test_opentelemetry_request_span_is_the_parent(clients, otel, backend):
    from django.test import Client
    from django_project import views
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.trace import SpanKind

    provider, exporter = otel
    views.CLIENTS["sync"] = synth.wrap(
        openai.OpenAI(api_key="k", base_url=views.CLIENTS["sync"].base_url, max_retries=0),
        session=views.CLIENTS["session"],
        backend=backend,
        selection=pick(clients),
        warm=True,
        tracer_provider=provider,
    )
    inst = DjangoInstrumentor()
    inst.instrument(tracer_provider=provider)
    try:
        c = Client()
        resp = c.get("/classify")
        token = _token(resp)
        assert _feedback(c, token, 1.0).status_code == 202
    finally:
        inst.uninstrument()
    rid = decode_token(token, secret=SECRET).rollout_id
    spans = exporter.get_finished_spans()
    chat = next(s for s in spans if s.name == "chat m")
    req = next(s for s in spans if s.kind is SpanKind.SERVER and "classify" in s.name)
    assert chat.parent.span_id == req.context.span_id
    for s in (chat, req):
        assert s.attributes["synth.rollout_id"] == rid
        assert s.attributes["synth.candidate_id"] == clients
        assert s.attributes["synth.session_id"] == views.CLIENTS["session"]
    # the reward from the later feedback request: a short span linked to the request span
    reward = next(s for s in spans if s.name == "synth.reward")
    assert reward.links[0].context.span_id == req.context.span_id
    (event,) = reward.events
    assert event.name == "gen_ai.evaluation.result"
    assert event.attributes["gen_ai.evaluation.score.value"] == 1.0
    assert event.attributes["synth.candidate_id"] == clients
    fb_span = next(s for s in spans if s.kind is SpanKind.SERVER and "feedback" in s.name)
    assert reward.parent.span_id == fb_span.context.span_id


def test_example_site_runs(tmp_path):
    demo = TESTS.parent / "examples" / "django_app" / "demo.py"
    out = subprocess.run(
        [sys.executable, str(demo)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYNTH_DB": str(tmp_path / "ex.db")},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("rewards=") == 2 and "x-synth-rollout" in out.stdout
