"""Rewards in traces: each reward becomes a ``gen_ai.evaluation.result`` event
correlated with its rollout's span.

A rollout's span is the first span it was seen under: the web request's
server span when a web integration opened the rollout, else the first
``chat {model}`` span of a wrapped call. It is kept on the rollout (a private
slot) and, so that a reward arriving in a later request of the same process
can still point at it, in a small bounded map keyed by rollout id.

When the reward is reported while a span of the rollout's trace is current
(the request span, the rollout's span, or any span under them), the event goes
on that span. Otherwise a short ``synth.reward`` span carries the event, with a
link to the rollout's span (and as a child of whatever is current, e.g. the
feedback request). Nothing here may fail ``reward()``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from synth_middleware.client._tracer import tracer_for

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, TracerProvider

    from synth_middleware.rollout import Rollout

log = logging.getLogger("synth_middleware")

EVENT_NAME = "gen_ai.evaluation.result"
EVALUATION_NAME = "synth.reward"
REWARD_SPAN_NAME = "synth.reward"
_MAX_KNOWN = 4096

_lock = threading.Lock()
_known: dict[str, Rollout] = {}  # rollout id -> rollout with a span (insertion order = age)
_errors = 0


def anchor(r: Rollout, span_context: SpanContext, provider: TracerProvider | None) -> None:
    """Make ``span_context`` the rollout's span unless it already has one.

    A later call may supply the tracer provider the first sighting lacked (a
    web request span is seen before any wrapped client names its provider).
    """
    cur = r._otel
    if cur is None:
        if not span_context.is_valid:
            return
        r._otel = (span_context, provider)
        with _lock:
            _known[r.rollout_id] = r
            if len(_known) > _MAX_KNOWN:
                del _known[next(iter(_known))]
    elif cur[1] is None and provider is not None:
        r._otel = (cur[0], provider)


def record_reward_event(r: Rollout, value: float) -> None:
    """Record a reward as a ``gen_ai.evaluation.result`` event (best effort, never raises)."""
    try:
        _record(r, value)
    except Exception:
        global _errors
        _errors += 1
        if _errors == 1:
            log.exception("synth-middleware: could not record the reward in the trace")


def _record(r: Rollout, value: float) -> None:
    src = r
    if r._otel is None and _known:
        src = _known.get(r.rollout_id, r)
    current = trace.get_current_span()
    recording = current.is_recording()
    anchor_ = src._otel
    if not recording and anchor_ is None:
        return  # no trace to correlate with: nothing to do, and cheaply
    attrs: dict[str, Any] = {
        "gen_ai.evaluation.name": EVALUATION_NAME,
        "gen_ai.evaluation.score.value": value,
        "synth.rollout_id": r.rollout_id,
    }
    session = r.session_id or src.session_id
    candidate = r.candidate_id or src.candidate_id
    if session is not None:
        attrs["synth.session_id"] = session
    if candidate is not None:
        attrs["synth.candidate_id"] = candidate
    if recording and (
        anchor_ is None or current.get_span_context().trace_id == anchor_[0].trace_id
    ):
        current.add_event(EVENT_NAME, attrs)
        return
    if anchor_ is None:
        return
    tracer = tracer_for(anchor_[1])
    if tracer is None:
        return
    span = tracer.start_span(
        REWARD_SPAN_NAME,
        links=[trace.Link(anchor_[0])],
        attributes={k: v for k, v in attrs.items() if k.startswith("synth.")},
    )
    span.add_event(EVENT_NAME, attrs)
    span.end()


def known_rollout(rollout_id: str) -> Rollout | None:
    """The in-process rollout with a span for ``rollout_id``, if still remembered."""
    return _known.get(rollout_id)
