"""OpenTelemetry: ids on spans and in context, GenAI CLIENT spans, opt-in baggage."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import textwrap

import httpx2
import openai
from helpers import CANDIDATE, messages, pick, seed
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

import synth_middleware as synth
from synth_middleware.rollout import OTEL_ROLLOUT_KEY


def _client(server, backend, session, otel=None, **kw):  # type: ignore[no-untyped-def]
    (cid,) = seed(backend, session, CANDIDATE)
    provider = otel[0] if otel else None
    seen: list[dict] = []

    def hook(request: httpx2.Request) -> None:
        seen.append(
            {
                "rollout": otel_context.get_value(OTEL_ROLLOUT_KEY),
                "baggage": dict(baggage.get_all()),
                "span": trace.get_current_span(),
            }
        )

    http = httpx2.Client(event_hooks={"request": [hook]})
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0, http_client=http),
        session=session,
        backend=backend,
        selection=pick(cid),
        warm=True,
        tracer_provider=provider,
        **kw,
    )
    return client, cid, seen


def test_genai_span_with_ids_and_parent(server, backend, otel):
    provider, exporter = otel
    client, cid, seen = _client(server, backend, "otel1", otel)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("request") as parent:
        resp = client.chat.completions.create(model="m1", messages=messages("a b c"))
    r = synth.rollout_of(resp)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chat = spans["chat m1"]
    assert chat.kind is SpanKind.CLIENT
    assert chat.parent.span_id == parent.get_span_context().span_id
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "m1"
    assert a["gen_ai.response.model"] == "m1"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["synth.rollout_id"] == r.rollout_id
    assert a["synth.candidate_id"] == cid
    assert a["synth.session_id"] == "otel1"
    # ids also on the app's current span
    assert spans["request"].attributes["synth.rollout_id"] == r.rollout_id
    # and in OTel context (our key) while the HTTP request is made, without baggage
    assert seen[-1]["rollout"] == r.rollout_id
    assert seen[-1]["baggage"] == {}
    assert otel_context.get_value(OTEL_ROLLOUT_KEY) is None  # restored after the call


def test_baggage_only_when_asked(server, backend):
    client, cid, seen = _client(server, backend, "bag", baggage=True)
    resp = client.chat.completions.create(model="m", messages=messages())
    r = synth.rollout_of(resp)
    assert seen[-1]["baggage"]["synth.rollout_id"] == r.rollout_id
    assert seen[-1]["baggage"]["synth.candidate_id"] == cid
    assert baggage.get_all() == {}


def test_stream_span_ends_at_end_close_and_abandon(server, backend, otel):
    _, exporter = otel
    client, _, _ = _client(server, backend, "ostream", otel)
    s = client.chat.completions.create(model="m", messages=messages("a b c d"), stream=True)
    assert not exporter.get_finished_spans()  # still open while streaming
    list(s)
    assert len(exporter.get_finished_spans()) == 1
    s = client.chat.completions.create(model="m", messages=messages("a b c d"), stream=True)
    next(iter(s))
    s.close()
    assert len(exporter.get_finished_spans()) == 2
    s = client.chat.completions.create(model="m", messages=messages("a b c d"), stream=True)
    for _ in s:
        break
    del s
    gc.collect()
    assert len(exporter.get_finished_spans()) == 3
    assert all(sp.name == "chat m" for sp in exporter.get_finished_spans())


def test_model_error_marks_span(server, backend, otel):
    _, exporter = otel
    client, _, _ = _client(server, backend, "oerr", otel)
    server.fail_next(500)
    try:
        client.chat.completions.create(model="m", messages=messages())
    except openai.InternalServerError:
        pass
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"


async def test_no_detach_errors_across_asyncio_tasks(server, backend, otel, caplog):
    provider, _ = otel
    (cid,) = seed(backend, "ohop", CANDIDATE)
    client = synth.wrap(
        openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="ohop",
        backend=backend,
        selection=pick(cid),
        warm=True,
        tracer_provider=provider,
    )
    caplog.set_level(logging.DEBUG)
    # a stream created in one task and consumed in another
    stream = await client.chat.completions.create(model="m", messages=messages("x y"), stream=True)

    async def consume() -> int:
        return len([c async for c in stream])

    assert await asyncio.create_task(consume()) > 0
    # a rollout opened in one task, calls in child tasks
    async with synth.rollout(key="hop") as r:
        got = await asyncio.gather(
            *[
                asyncio.create_task(client.chat.completions.create(model="m", messages=messages()))
                for _ in range(5)
            ]
        )
    assert all(synth.rollout_of(g) is r for g in got)
    assert not [rec for rec in caplog.records if "detach" in rec.getMessage().lower()]


def test_global_provider_is_never_set_and_is_used_when_the_app_sets_it(tmp_path):
    code = textwrap.dedent(
        """
        import openai, synth_middleware as synth
        from opentelemetry import trace
        from opentelemetry.trace import ProxyTracerProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from synth_middleware.backends.local import LocalBackend
        from synth_middleware.testing import FakeOpenAIServer
        with FakeOpenAIServer() as srv:
            b = LocalBackend(DBPATH)
            c = synth.wrap(openai.OpenAI(api_key="k", base_url=srv.url), session="g", backend=b)
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
            exp = InMemorySpanExporter()
            p = TracerProvider(); p.add_span_processor(SimpleSpanProcessor(exp))
            trace.set_tracer_provider(p)
            c.chat.completions.create(model="m2", messages=[{"role": "user", "content": "hi"}])
            assert [s.name for s in exp.get_finished_spans()] == ["chat m2"], exp.get_finished_spans()
        print("ok")
        """
    ).replace("DBPATH", repr(str(tmp_path / "g.db")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
