"""What happens around one wrapped call: candidate applied, rollout opened,
telemetry started, and afterwards the rollout recorded. Shared by the sync,
async, raw, streaming and Responses paths so they cannot drift apart.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synth_middleware.client._otel import CallSpan, rollout_ids_from_baggage
from synth_middleware.client.candidates import system_text
from synth_middleware.rollout import Rollout, attach_rollout, current_rollout, new_rollout_id

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from synth_middleware.backends.base import Backend, RolloutRecord
    from synth_middleware.client.selection import Selection
    from synth_middleware.client.session import SessionRuntime

log = logging.getLogger("synth_middleware")
_internal_errors = 0


@dataclass(slots=True)
class WrapConfig:
    """Settings of one ``wrap()``: shared by the client and every copy of it."""

    session: str
    backend: Backend
    runtime: SessionRuntime
    selection: Selection
    baggage: bool
    send_traces: bool
    tracer_provider: TracerProvider | None


class Call:
    """One wrapped call in flight."""

    __slots__ = ("cfg", "input", "kwargs", "rollout", "tel")

    def __init__(self, cfg: WrapConfig, kwargs: dict[str, Any], api: str) -> None:
        self.cfg = cfg
        self.kwargs = kwargs
        self.input: Any = None
        try:
            self.rollout = self._open(api)
        except Exception:  # our bug must never become the app's error
            _internal_error()
            self.kwargs = kwargs
            self.rollout = Rollout(session_id=cfg.session, rollout_id=new_rollout_id())
        try:
            self.tel: CallSpan | None = CallSpan(
                self.rollout, kwargs.get("model"), cfg.tracer_provider, baggage=cfg.baggage
            )
        except Exception:
            _internal_error()
            self.tel = None

    def _open(self, api: str) -> Rollout:
        cfg = self.cfg
        rt = cfg.runtime
        rt.counters.calls += 1
        r = self._rollout()
        snap = rt.snapshot()
        kwargs = self.kwargs
        if api == "chat":
            messages = kwargs.get("messages")
            if not isinstance(messages, list | tuple):
                return r
            system = system_text(messages)
        else:  # Responses API: the system prompt is ``instructions``
            messages = None
            system = kwargs.get("instructions")
            if not isinstance(system, str):
                system = None
        if cfg.send_traces:
            self.input = _user_side(messages) if messages is not None else kwargs.get("input")
        if not rt.observe(system, snap) or snap is None:
            rt.counters.served_baseline += 1
            return r
        cand = rt.choose(snap, r, cfg.selection)
        if cand is None:
            rt.counters.served_baseline += 1
            return r
        if cand.is_baseline:
            r.candidate_id = cand.candidate_id
            rt.counters.served_baseline += 1
            return r
        if api == "chat":
            new = cand.apply(messages, baseline=snap.baseline)  # type: ignore[arg-type]
            if new is None:  # the candidate does not fit this call: pass through
                rt.counters.mismatched += 1
                return r
            self.kwargs = {**kwargs, "messages": new}
        else:
            text = cand.instructions()
            if text is None:
                rt.counters.mismatched += 1
                return r
            self.kwargs = {**kwargs, "instructions": text}
        r.candidate_id = cand.candidate_id
        rt.counters.served_candidate += 1
        return r

    def _rollout(self) -> Rollout:
        cfg = self.cfg
        cur = current_rollout()
        if cur is not None:
            if cur.session_id is None:
                cur.session_id = cfg.session
                cur._runtime = cfg.runtime
                return cur
            if cur.session_id == cfg.session:
                return cur
            # another session's call inside a rollout: its own rollout, same key
            return Rollout(
                session_id=cfg.session,
                rollout_id=new_rollout_id(),
                key=cur.key,
                metadata=cur.metadata,
                bucket=cur.bucket,
                _runtime=cfg.runtime,
            )
        if cfg.baggage:
            session, rollout_id, candidate_id = rollout_ids_from_baggage()
            if rollout_id and session == cfg.session:
                return Rollout(
                    session_id=session,
                    rollout_id=rollout_id,
                    candidate_id=candidate_id,
                    _runtime=cfg.runtime,
                    _recorded=True,  # the upstream service recorded it
                )
        return Rollout(session_id=cfg.session, rollout_id=new_rollout_id(), _runtime=cfg.runtime)

    # ------------------------------------------------------------ completion
    def detach(self) -> None:
        """Restore the caller's OTel context (streams keep their span open)."""
        if self.tel is not None:
            self.tel.detach()

    def finish(self, response: Any, *, output: Any = None, attach: bool = True) -> None:
        """The call succeeded: attach the rollout, end the span, record the rollout."""
        r = self.rollout
        try:
            if attach and response is not None:
                attach_rollout(response, r)
            if self.tel is not None:
                self.tel.end(response)
            if not r._recorded:
                r._recorded = True
                if output is None and self.cfg.send_traces and response is not None:
                    output = _output_text(response)
                self.cfg.runtime.reporter.add_rollout(self._record(output))
        except Exception:
            _internal_error()

    def finish_raw(self, raw: Any) -> None:
        """The call succeeded with a raw (``with_raw_response``) response: record the
        output from the parsed body (the SDK caches the parse, so the app's own
        ``parse()`` costs nothing more); a stream's body is left for the app."""
        self.finish(raw, output=self.body_output(raw), attach=False)

    def body_output(self, resp: Any, *, if_read: bool = False) -> str | None:
        """The output text of an SDK API response's body, for the trace. ``if_read``:
        only when the app already read the body (a streamed response is never read
        here). ``None`` without traces, for ``stream=True`` or an unparsable body."""
        parse = self._body_parser(resp, if_read)
        if parse is None or inspect.iscoroutinefunction(parse):  # async: abody_output
            return None
        try:
            return _output_text(parse())
        except Exception:  # the app sees the body's problem when it parses
            return None

    async def abody_output(self, resp: Any, *, if_read: bool = False) -> str | None:
        """:meth:`body_output` for the async client's responses."""
        parse = self._body_parser(resp, if_read)
        if parse is None:
            return None
        try:
            parsed = parse()
            if inspect.isawaitable(parsed):
                parsed = await parsed
            return _output_text(parsed)
        except Exception:
            return None

    def _body_parser(self, resp: Any, if_read: bool) -> Any:
        """``resp.parse`` when its body may be parsed for the trace, else ``None``."""
        if not self.cfg.send_traces or self.kwargs.get("stream") is True:
            return None
        if if_read:  # never read a body the app did not: it may be large, or unwanted
            http = getattr(resp, "http_response", None)
            if not getattr(http, "is_stream_consumed", False):
                return None
        parse = getattr(resp, "parse", None)
        return parse if callable(parse) else None

    def fail(self, error: BaseException) -> None:
        """The model call raised: end the span with the error; nothing is recorded."""
        try:
            if self.tel is not None:
                self.tel.end(error=error)
        except Exception:
            _internal_error()

    def _record(self, output: Any) -> RolloutRecord:
        r = self.rollout
        rec: RolloutRecord = {
            "session_id": r.session_id or self.cfg.session,
            "rollout_id": r.rollout_id,
            "candidate_id": r.candidate_id,
            "created_at": time.time(),
            "key": r.key,
            "metadata": r.metadata,
            "bucket": r.bucket,
            "model": self.kwargs.get("model"),
        }
        if self.cfg.send_traces:
            rec["input"] = self.input
            rec["output"] = output
        return rec


def _user_side(messages: Any) -> list[Any]:
    """The conversation without the system prompt (what the optimizer may learn from)."""
    return [
        m
        for m in messages
        if not (isinstance(m, Mapping) and m.get("role") in ("system", "developer"))
    ]


def _output_text(response: Any) -> str | None:
    try:
        choices = getattr(response, "choices", None)
        if choices is None:  # Responses API
            text = getattr(response, "output_text", None)
            return text if isinstance(text, str) else None
        msg = choices[0].message
        if msg.content is not None:
            return str(msg.content)
        calls = msg.tool_calls
        if calls:
            return calls[0].function.arguments  # type: ignore[no-any-return]
    except (AttributeError, IndexError, TypeError):
        pass
    return None


def _internal_error() -> None:
    global _internal_errors
    _internal_errors += 1
    if _internal_errors == 1 or _internal_errors % 1000 == 0:
        log.exception(
            "synth-middleware: internal error (%d so far); the call goes through unchanged",
            _internal_errors,
        )
