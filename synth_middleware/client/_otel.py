"""OpenTelemetry glue: ids on the current span, our own context keys, one
GenAI CLIENT span per call when the app configured a TracerProvider.

Only the API is required. We never set the global provider; with none
configured we skip span creation entirely (it would be a no-op anyway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from synth_middleware.client._evaluation import anchor
from synth_middleware.client._tracer import tracer_for
from synth_middleware.rollout import (
    OTEL_CANDIDATE_KEY,
    OTEL_ROLLOUT_KEY,
    OTEL_SESSION_KEY,
    _safe_detach,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from synth_middleware.rollout import Rollout

ATTR_SESSION = "synth.session_id"
ATTR_ROLLOUT = "synth.rollout_id"
ATTR_CANDIDATE = "synth.candidate_id"
BAGGAGE_SESSION = "synth.session_id"
BAGGAGE_ROLLOUT = "synth.rollout_id"
BAGGAGE_CANDIDATE = "synth.candidate_id"


def id_attributes(r: Rollout) -> dict[str, str]:
    """The synth ids as span attributes (only those that are set)."""
    attrs = {ATTR_ROLLOUT: r.rollout_id}
    if r.session_id is not None:
        attrs[ATTR_SESSION] = r.session_id
    if r.candidate_id is not None:
        attrs[ATTR_CANDIDATE] = r.candidate_id
    return attrs


class CallSpan:
    """Telemetry of one wrapped call: context attached for its duration, and a span."""

    __slots__ = ("_ended", "_token", "span")

    def __init__(
        self,
        r: Rollout,
        model: Any,
        provider: TracerProvider | None,
        *,
        baggage: bool,
        operation: str = "chat",
    ) -> None:
        self._ended = False
        attrs = id_attributes(r)
        parent = trace.get_current_span()
        if parent.is_recording():
            parent.set_attributes(attrs)
        tracer = tracer_for(provider)
        self.span: Span | None = None
        ctx = otel_context.get_current()
        if tracer is not None:
            attrs["gen_ai.operation.name"] = operation
            attrs["gen_ai.system"] = "openai"
            if isinstance(model, str):
                attrs["gen_ai.request.model"] = model
            self.span = tracer.start_span(
                f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attrs, context=ctx
            )
            ctx = trace.set_span_in_context(self.span, ctx)
            if r._otel is None or r._otel[1] is None:  # the rollout's span, for rewards
                anchor(r, self.span.get_span_context(), provider)
        # one copy of the context for our three keys (set_value copies each time)
        values = dict(ctx)
        values[OTEL_ROLLOUT_KEY] = r.rollout_id
        values[OTEL_SESSION_KEY] = r.session_id
        values[OTEL_CANDIDATE_KEY] = r.candidate_id
        ctx = otel_context.Context(values)
        if baggage:
            ctx = otel_baggage.set_baggage(BAGGAGE_ROLLOUT, r.rollout_id, ctx)
            if r.session_id:
                ctx = otel_baggage.set_baggage(BAGGAGE_SESSION, r.session_id, ctx)
            if r.candidate_id:
                ctx = otel_baggage.set_baggage(BAGGAGE_CANDIDATE, r.candidate_id, ctx)
        self._token: object | None = otel_context.attach(ctx)

    def detach(self) -> None:
        """Restore the caller's context (the span may live on, e.g. for a stream)."""
        if self._token is not None:
            _safe_detach(self._token)
            self._token = None

    def end(self, response: Any = None, error: BaseException | None = None) -> None:
        """Record response attributes and end the span (idempotent)."""
        self.detach()
        if self._ended:
            return
        self._ended = True
        span = self.span
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.set_attribute("error.type", type(error).__qualname__)
        elif response is not None:
            set_response_attributes(span, response)
        span.end()


def set_response_attributes(span: Span, response: Any) -> None:
    """GenAI response attributes from a ChatCompletion, chunk usage, or Response."""
    model = getattr(response, "model", None)
    if isinstance(model, str):
        span.set_attribute("gen_ai.response.model", model)
    rid = getattr(response, "id", None)
    if isinstance(rid, str):
        span.set_attribute("gen_ai.response.id", rid)
    usage = getattr(response, "usage", None)
    if usage is not None:
        inp = getattr(usage, "prompt_tokens", None)
        if inp is None:
            inp = getattr(usage, "input_tokens", None)
        out = getattr(usage, "completion_tokens", None)
        if out is None:
            out = getattr(usage, "output_tokens", None)
        if isinstance(inp, int):
            span.set_attribute("gen_ai.usage.input_tokens", inp)
        if isinstance(out, int):
            span.set_attribute("gen_ai.usage.output_tokens", out)


def rollout_ids_from_baggage() -> tuple[str | None, str | None, str | None]:
    """(session, rollout, candidate) carried in W3C baggage by an upstream service."""
    ctx = otel_context.get_current()
    get = otel_baggage.get_baggage
    s, r, c = get(BAGGAGE_SESSION, ctx), get(BAGGAGE_ROLLOUT, ctx), get(BAGGAGE_CANDIDATE, ctx)
    return (
        s if isinstance(s, str) else None,
        r if isinstance(r, str) else None,
        c if isinstance(c, str) else None,
    )
