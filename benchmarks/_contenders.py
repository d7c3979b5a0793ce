"""The contenders the overhead benchmarks compare, built the same way in each.

``peers.py`` (rounds of blocks) and ``lockstep.py`` (one call at a time) run
each contender in its own worker process and build it here, so both measure
the same thing. See ``peers.py`` for what each contender is.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# "raw-control" is a second raw client in its own process: the A/A control. Its
# distance from "raw" is the noise floor of comparing two processes (memory layout,
# scheduling), which on a small VM can be several percent.
CONTENDERS = ("raw", "raw-control", "ours", "openllmetry", "langfuse")
# diagnostics, only when named in --only (see peers.py's module docs)
DIAGNOSTIC = ("ours-no-delivery", "ours-rollouts-50ms")
SYSTEM = "You are a support assistant. Classify the customer's request."
CAND = "You are a banking intent classifier. Answer with one label."
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "my card is lost"}]


def build(kind: str, url: str, tmp: str) -> tuple[object, object, object]:
    """(loopback client, in-memory client, keepalive) for one contender."""
    from synth_middleware.testing import in_memory_http_client

    mem_kw = {"base_url": "http://fake/v1", "http_client": in_memory_http_client()}
    if kind in ("raw", "raw-control"):
        import openai

        return (
            openai.OpenAI(api_key="k", base_url=url, max_retries=0),
            openai.OpenAI(api_key="k", max_retries=0, **mem_kw),
            None,
        )
    if kind.startswith("ours"):
        import openai

        import synth_middleware as synth
        from synth_middleware.backends.local import LocalBackend

        class NoDelivery(LocalBackend):
            def record_rollouts(self, rollouts: object) -> None:
                return None

        cls = NoDelivery if kind == "ours-no-delivery" else LocalBackend
        if kind == "ours-rollouts-50ms":
            from synth_middleware.client import reporter

            reporter.ROLLOUT_GATHER = 0.05
        backend = cls(str(Path(tmp) / "peers.db"))
        for s in ("loop", "mem"):
            backend.ensure_session(s, baseline=SYSTEM)
            backend.add_candidate(s, CAND)
        loop = synth.wrap(
            openai.OpenAI(api_key="k", base_url=url, max_retries=0),
            session="loop",
            backend=backend,
            warm=True,
            ttl=3600,
        )
        mem = synth.wrap(
            openai.OpenAI(api_key="k", max_retries=0, **mem_kw),
            session="mem",
            backend=backend,
            warm=True,
            ttl=3600,
        )
        return loop, mem, backend
    if kind == "openllmetry":
        import openai
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        OpenAIInstrumentor().instrument(tracer_provider=provider)
        return (
            openai.OpenAI(api_key="k", base_url=url, max_retries=0),
            openai.OpenAI(api_key="k", max_retries=0, **mem_kw),
            exporter,
        )
    if kind == "langfuse":
        from langfuse.openai import OpenAI  # type: ignore[attr-defined]

        return (
            OpenAI(api_key="k", base_url=url, max_retries=0),
            OpenAI(api_key="k", max_retries=0, **mem_kw),
            None,
        )
    raise SystemExit(f"unknown contender {kind}")


def plain(url: str) -> object:
    """A plain ``openai.OpenAI`` client on ``url``."""
    import openai

    return openai.OpenAI(api_key="k", base_url=url, max_retries=0)


def self_check(kind: str, loop: object, keep: object) -> str:
    """A line showing the contender really did its work (spans, a served candidate)."""
    if kind == "openllmetry":
        spans = keep.get_finished_spans()  # type: ignore[attr-defined]
        return f"{len(spans)} spans exported in memory"
    if kind.startswith("ours"):
        resp = loop.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[attr-defined]
        return f"candidate served: {getattr(resp, 'synth', None) is not None}"
    if kind == "langfuse":
        from langfuse import get_client

        get_client().flush()
        return "traces exported to the loopback sink"
    return ""


def drain(kind: str, keep: object) -> None:
    """Let a contender finish its background work (ours: deliver what is queued
    and close the backend; Langfuse: export)."""
    if kind.startswith("ours"):
        import synth_middleware as synth

        synth.flush(30)
        keep.close()  # type: ignore[attr-defined]
    elif kind == "langfuse":
        from langfuse import get_client

        get_client().flush()


class Sink(BaseHTTPRequestHandler):
    """Accepts and discards every request (Langfuse's export target); counts them."""

    hits = 0

    def _ok(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        type(self).hits += 1
        body = b'{"successes":[],"errors":[]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET = do_PATCH = _ok

    def log_message(self, *args: object) -> None:
        pass


def start_sink() -> tuple[ThreadingHTTPServer, dict[str, str]]:
    """The loopback sink, serving, and the environment for workers: Langfuse
    exports to the sink, OpenLLMetry records content."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{sink.server_address[1]}"
    env = dict(
        os.environ,
        LANGFUSE_HOST=url,
        LANGFUSE_BASE_URL=url,
        LANGFUSE_PUBLIC_KEY="pk-lf-local",
        LANGFUSE_SECRET_KEY="sk-lf-local",
        OTEL_SDK_DISABLED="false",
        TRACELOOP_TRACE_CONTENT="true",
        PYTHONUNBUFFERED="1",
    )
    return sink, env
