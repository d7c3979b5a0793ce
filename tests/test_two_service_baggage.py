"""Two real services on uvicorn (loopback): service A's request rollout travels
in W3C baggage (``opentelemetry.propagate.inject``) to service B, whose own
wrapped client joins the same rollout; one trace spans both."""

from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest
from fastapi import FastAPI
from helpers import CANDIDATE, candidate_stats, messages, pick, seed
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind
from synth_middleware_fastapi import SynthMiddleware, SynthRollout, feedback_router
from web_helpers import serve

import synth_middleware as synth
from synth_middleware._tokens import decode_token

SESSION = "two-services"
SECRET = "shared-secret"


def _wrap(server, backend, cid, provider, cls=openai.AsyncOpenAI):  # type: ignore[no-untyped-def]
    return synth.wrap(
        cls(api_key="k", base_url=server.url, max_retries=0),
        session=SESSION,
        backend=backend,
        selection=pick(cid),
        warm=True,
        baggage=True,
        tracer_provider=provider,
    )


def _service_b(server, backend, cid, provider):  # type: ignore[no-untyped-def]
    b = FastAPI()
    b.add_middleware(
        SynthMiddleware, secret=SECRET, baggage=True, exclude_paths=("/synth/feedback", "/bare")
    )
    client = _wrap(server, backend, cid, provider)

    @b.get("/answer")
    async def answer(r: SynthRollout) -> dict[str, str]:
        resp = await client.chat.completions.create(model="b", messages=messages("from A"))
        return {"request": r.rollout_id, "call": resp.synth.rollout_id}

    @b.get("/bare")  # no request rollout here: the wrapped client reads the baggage itself
    async def bare() -> dict[str, str]:
        resp = await client.chat.completions.create(model="b", messages=messages("bare"))
        return {"request": "", "call": resp.synth.rollout_id}

    return b


def _service_a(server, backend, cid, provider, b_url):  # type: ignore[no-untyped-def]
    a = FastAPI()
    a.add_middleware(SynthMiddleware, secret=SECRET, baggage=True, session=SESSION)
    a.include_router(feedback_router())
    client = _wrap(server, backend, cid, provider)

    @a.get("/handle")
    async def handle(r: SynthRollout, path: str = "/answer") -> dict[str, object]:
        own = await client.chat.completions.create(model="a", messages=messages("in A"))
        headers: dict[str, str] = {}
        inject(headers)  # traceparent + baggage (the synth ids) from the current context
        async with httpx2.AsyncClient(base_url=b_url, timeout=10) as http:
            downstream = (await http.get(path, headers=headers)).json()
        return {
            "rollout_id": r.rollout_id,
            "own": own.synth.rollout_id,
            "b": downstream,
            "baggage": headers.get("baggage", ""),
        }

    return a


@pytest.mark.parametrize("instrumented", [True, False], ids=["otel-instrumented", "bare"])
def test_downstream_service_joins_the_rollout(server, backend, otel, instrumented):
    provider, exporter = otel
    (cid,) = seed(backend, SESSION, CANDIDATE)
    b = _service_b(server, backend, cid, provider)
    if instrumented:
        FastAPIInstrumentor.instrument_app(b, tracer_provider=provider)
    with serve(b) as b_url:
        a = _service_a(server, backend, cid, provider, b_url)
        if instrumented:
            FastAPIInstrumentor.instrument_app(a, tracer_provider=provider)
        with serve(a) as a_url:

            async def main() -> list[httpx2.Response]:
                async with httpx2.AsyncClient(base_url=a_url, timeout=10) as http:
                    calls = [http.get("/handle") for _ in range(6)]
                    if instrumented:  # B's bare route needs the OTel extraction
                        calls.append(http.get("/handle", params={"path": "/bare"}))
                    return await asyncio.gather(*calls)

            results = asyncio.run(main())
            seen = set()
            for resp in results:
                body = resp.json()
                rid = decode_token(resp.headers["x-synth-rollout"], secret=SECRET).rollout_id
                assert body["rollout_id"] == body["own"] == rid
                assert body["b"]["call"] == rid  # B's wrapped call joined A's rollout
                if body["b"]["request"]:
                    assert body["b"]["request"] == rid
                assert f"synth.rollout_id={rid}" in body["baggage"]
                seen.add(rid)
            assert len(seen) == len(results)

            # a reward for A's token counts once, for the candidate both services served
            token = results[0].headers["x-synth-rollout"]
            with httpx2.Client(base_url=a_url) as http:
                fb = http.post("/synth/feedback", json={"token": token, "reward": 1.0})
            assert fb.status_code == 202
    assert synth.flush(5)
    stats = candidate_stats(backend, SESSION, cid)
    assert stats["rollout_count"] == len(results)  # B's joined calls add no rollouts
    assert stats["reward_count"] == 1

    if instrumented:  # one trace across both services
        spans = exporter.get_finished_spans()
        rid = decode_token(results[0].headers["x-synth-rollout"], secret=SECRET).rollout_id
        a_req = next(
            s
            for s in spans
            if s.kind is SpanKind.SERVER
            and s.name.endswith("/handle")
            and s.attributes.get("synth.rollout_id") == rid
        )
        b_chat = next(
            s for s in spans if s.name == "chat b" and s.attributes.get("synth.rollout_id") == rid
        )
        assert b_chat.context.trace_id == a_req.context.trace_id
