"""OpenTelemetry end to end with FastAPI's instrumentation: the request span is
the parent of our ``chat {model}`` span, both carry the synth ids, and a
reward is a ``gen_ai.evaluation.result`` event correlated with the rollout's
span. Explicit tracer providers only; the global-provider case runs in a
subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from helpers import CANDIDATE, messages, pick, seed
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import SpanKind
from synth_middleware_fastapi import SynthMiddleware, SynthRollout, feedback_router

import synth_middleware as synth
from synth_middleware._tokens import decode_token

SECRET = "otel-secret"
TESTS = Path(__file__).resolve().parent


def _setup(server, backend, otel, session):  # type: ignore[no-untyped-def]
    provider, exporter = otel
    (cid,) = seed(backend, session, CANDIDATE)
    kw = {
        "session": session,
        "backend": backend,
        "selection": pick(cid),
        "warm": True,
        "tracer_provider": provider,
    }
    aclient = synth.wrap(openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0), **kw)
    client = synth.wrap(openai.OpenAI(api_key="k", base_url=server.url, max_retries=0), **kw)
    app = FastAPI()
    app.add_middleware(SynthMiddleware, secret=SECRET)
    app.include_router(feedback_router())

    @app.post("/classify")
    async def classify(r: SynthRollout, rate: float | None = None) -> dict[str, str]:
        resp = await aclient.chat.completions.create(model="m", messages=messages("card"))
        if rate is not None:
            synth.reward(resp, rate)  # in the same request
        return {"rollout_id": r.rollout_id}

    @app.get("/sync")
    def sync_classify() -> dict[str, str]:
        resp = client.chat.completions.create(model="m", messages=messages("sync"))
        return {"rollout_id": resp.synth.rollout_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            s = await aclient.chat.completions.create(
                model="m", messages=messages("a b"), stream=True
            )
            async for _ in s:
                yield "."

        return StreamingResponse(body())

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return app, exporter, cid


def _server_span(spans, route):  # type: ignore[no-untyped-def]
    return next(s for s in spans if s.kind is SpanKind.SERVER and route in s.name)


def test_request_span_is_the_parent_and_both_carry_the_ids(server, backend, otel):
    app, exporter, cid = _setup(server, backend, otel, "otc-parent")
    with TestClient(app) as tc:
        for path in ("/classify", "/sync", "/stream"):
            exporter.clear()
            resp = tc.request("POST" if path == "/classify" else "GET", path)
            rid = decode_token(resp.headers["x-synth-rollout"], secret=SECRET).rollout_id
            spans = exporter.get_finished_spans()
            chat = next(s for s in spans if s.name == "chat m")
            req = _server_span(spans, path)
            assert chat.parent is not None and chat.parent.span_id == req.context.span_id, path
            assert chat.context.trace_id == req.context.trace_id
            for s in (chat, req):
                assert s.attributes["synth.rollout_id"] == rid, (path, s.name)
                assert s.attributes["synth.session_id"] == "otc-parent"
                assert s.attributes["synth.candidate_id"] == cid
            assert chat.attributes["gen_ai.operation.name"] == "chat"


def test_reward_in_the_request_is_an_event_on_the_request_span(server, backend, otel):
    app, exporter, cid = _setup(server, backend, otel, "otc-event")
    with TestClient(app) as tc:
        resp = tc.post("/classify", params={"rate": 0.75})
    rid = resp.json()["rollout_id"]
    spans = exporter.get_finished_spans()
    req = _server_span(spans, "/classify")
    (event,) = [e for e in req.events if e.name == "gen_ai.evaluation.result"]
    assert event.attributes["gen_ai.evaluation.score.value"] == 0.75
    assert event.attributes["gen_ai.evaluation.name"] == "synth.reward"
    assert event.attributes["synth.rollout_id"] == rid
    assert event.attributes["synth.candidate_id"] == cid
    assert event.attributes["synth.session_id"] == "otc-event"
    assert not [s for s in spans if s.name == "synth.reward"]


def test_reward_in_a_later_request_is_linked_to_the_rollout_span(server, backend, otel):
    app, exporter, cid = _setup(server, backend, otel, "otc-later")
    with TestClient(app) as tc:
        token = tc.post("/classify").headers["x-synth-rollout"]
        fb = tc.post("/synth/feedback", json={"token": token, "reward": 1})
        assert fb.status_code == 202
    spans = exporter.get_finished_spans()
    req = _server_span(spans, "/classify")
    fb_span = _server_span(spans, "/synth/feedback")
    reward = next(s for s in spans if s.name == "synth.reward")
    assert [link.context.span_id for link in reward.links] == [req.context.span_id]
    assert reward.parent.span_id == fb_span.context.span_id  # in the feedback request's trace
    (event,) = reward.events
    assert event.name == "gen_ai.evaluation.result"
    assert event.attributes["gen_ai.evaluation.score.value"] == 1.0
    assert event.attributes["synth.rollout_id"] == req.attributes["synth.rollout_id"]
    assert event.attributes["synth.candidate_id"] == cid
    assert "synth.rollout_id" not in fb_span.attributes  # the feedback path opened no rollout
    assert synth.flush(5)


def test_reward_without_a_web_request(server, backend, otel):
    provider, exporter = otel
    (cid,) = seed(backend, "otc-plain", CANDIDATE)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="otc-plain",
        backend=backend,
        selection=pick(cid),
        warm=True,
        tracer_provider=provider,
    )
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("job") as job:
        resp = client.chat.completions.create(model="m", messages=messages())
        with tracer.start_as_current_span("grading"):
            synth.reward(resp, 0.5)  # same trace: the event goes on the current span
    resp2 = client.chat.completions.create(model="m", messages=messages())
    synth.reward(resp2.synth.token, 0.25)  # no span current, by token: a linked span
    spans = {s.name: s for s in exporter.get_finished_spans()}
    grading = spans["grading"]
    assert grading.parent.span_id == job.get_span_context().span_id
    (event,) = grading.events
    assert event.attributes["gen_ai.evaluation.score.value"] == 0.5
    reward = spans["synth.reward"]
    chat2 = [s for s in exporter.get_finished_spans() if s.name == "chat m"][-1]
    assert reward.parent is None
    assert reward.links[0].context.span_id == chat2.context.span_id
    assert reward.events[0].attributes["synth.rollout_id"] == resp2.synth.rollout_id
    assert reward.events[0].attributes["synth.candidate_id"] == cid


def test_global_provider_and_instrumentation_in_a_subprocess(server, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        import openai
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from opentelemetry import trace
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import synth_middleware as synth
        from helpers import CANDIDATE, messages, pick, seed
        from synth_middleware.backends.local import LocalBackend
        from synth_middleware_fastapi import SynthMiddleware, feedback_router

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # the common production setup
        backend = LocalBackend({str(tmp_path / "g.db")!r})
        (cid,) = seed(backend, "glob", CANDIDATE)
        client = synth.wrap(openai.AsyncOpenAI(api_key="k", base_url={server.url!r}),
                            session="glob", backend=backend, selection=pick(cid), warm=True)
        app = FastAPI()
        app.add_middleware(SynthMiddleware, secret="s")
        app.include_router(feedback_router())

        @app.get("/c")
        async def c():
            await client.chat.completions.create(model="m", messages=messages())
            return {{}}

        FastAPIInstrumentor.instrument_app(app)
        with TestClient(app) as tc:
            token = tc.get("/c").headers["x-synth-rollout"]
            tc.post("/synth/feedback", json={{"token": token, "reward": 1}})
        spans = exporter.get_finished_spans()
        chat = next(s for s in spans if s.name == "chat m")
        req = next(s for s in spans if s.kind.name == "SERVER" and s.name.endswith("/c"))
        reward = next(s for s in spans if s.name == "synth.reward")
        print(json.dumps({{
            "parent_ok": chat.parent.span_id == req.context.span_id,
            "ids": [req.attributes.get("synth.candidate_id"),
                    chat.attributes.get("synth.candidate_id")] == [cid, cid],
            "link_ok": reward.links[0].context.span_id == req.context.span_id,
            "flushed": synth.flush(5),
        }}))
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
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "parent_ok": True,
        "ids": True,
        "link_ok": True,
        "flushed": True,
    }


def test_server_hot_routes_keep_http_route_on_instrumented_spans(otel, tmp_path):
    """The routes ``serve`` answers in its pure-ASGI layer (routes/hot.py) still get
    the route template on OpenTelemetry's FastAPI server spans: the instrumentation
    resolves it from the app's declared routes, which the hot routes stay part of."""
    from synth_middleware.server.app import create_app

    provider, exporter = otel
    app = create_app(db_path=tmp_path / "synth.db")
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    session = "/api/v1/online/sessions/{session_id}"
    with TestClient(app) as tc:
        r = tc.post(
            "/api/v1/online/sessions",
            json={"session_id": "hot", "kind": "gepa_online", "baseline": "You are terse."},
        )
        assert r.status_code == 200, r.text
        page = tc.get("/api/v1/online/sessions/hot/candidates").json()
        cid = page["items"][0]["candidate_id"]
        calls = [  # ordinary requests: the hot layer answers them
            ("GET", "/api/v1/online/sessions/hot", None, session),
            ("GET", "/api/v1/online/sessions/hot/state", None, f"{session}/state"),
            (
                "POST",
                "/api/v1/online/sessions/hot/reward",
                {"rollout_id": "r1", "reward_info": {"score": 1.0}},
                f"{session}/reward",
            ),
            (
                "POST",
                "/api/v1/rewards/batch",
                {"rewards": [{"session_id": "hot", "rollout_id": "r2", "value": 0.0}]},
                "/api/v1/rewards/batch",
            ),
            ("GET", f"/api/v1/candidates/{cid}", None, "/api/v1/candidates/{candidate_id}"),
        ]
        for method, path, body, route in calls:
            exporter.clear()
            r = tc.request(method, path, json=body)
            assert r.status_code == 200, (path, r.text)
            (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
            assert span.attributes["http.route"] == route, path
            assert span.name == f"{method} {route}"
