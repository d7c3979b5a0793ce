"""``GET /api/v1/online/sessions/{id}/events``: the session's event log, as a JSON
page or as a stream of server-sent events.

A client that asks for ``Accept: text/event-stream`` gets the change feed
(below); any other gets one JSON page of the append-only log, as the hosted
client's ``session.events(since_seq=, limit=)`` expects it:
``{session_id, events: [{seq, type, data, created_at}], next_seq, has_more}``
(events with ``seq > since_seq``, oldest first; pass ``next_seq`` as the next
``since_seq``).

On connect the stream sends the current state (``event: state``), then a new
``state`` event whenever the session changes (at most one per
``min_interval`` seconds) and a ``best_candidate`` event as soon as the best
candidate changes. Each event's ``id`` is the state version. A comment line
keeps idle connections alive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from synth_middleware.server._responses import dumps, json_response
from synth_middleware.server.context import ServerContext, get_context

router = APIRouter(prefix="/api/v1/online/sessions", tags=["sessions"])
Ctx = Annotated[ServerContext, Depends(get_context)]

KEEPALIVE_SECONDS = 15.0


def _event(name: str, version: int, data: Any) -> bytes:
    return (
        b"event: "
        + name.encode()
        + b"\nid: "
        + str(version).encode()
        + b"\ndata: "
        + (dumps(data) + b"\n\n")
    )


async def _stream(
    ctx: ServerContext, request: Request, session_id: str, min_interval: float
) -> AsyncIterator[bytes]:
    engine, feed = ctx.engine, ctx.feed
    state = engine.get_state(session_id)
    version = state["version"]
    best = state.get("best_candidate_id")
    yield _event("state", version, state)
    last_sent = time.monotonic()
    last_beat = last_sent
    while not feed.closed:
        await feed.wait(session_id, min(ctx.config.external_poll_interval, KEEPALIVE_SECONDS))
        if feed.closed or await request.is_disconnected():
            return
        now = time.monotonic()
        if now - last_sent < min_interval:  # coalesce bursts of writes
            await asyncio.sleep(min_interval - (now - last_sent))
        state = engine.get_state(session_id)
        if state["version"] != version:
            version = state["version"]
            if state.get("best_candidate_id") != best:
                best = state.get("best_candidate_id")
                yield _event(
                    "best_candidate",
                    version,
                    {
                        "session_id": session_id,
                        "version": version,
                        "best_candidate_id": best,
                        "best_reward": state.get("best_reward"),
                    },
                )
            yield _event("state", version, state)
            last_sent = last_beat = time.monotonic()
        elif time.monotonic() - last_beat >= KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"
            last_beat = time.monotonic()


_SECRET_NAMES = ("api_key", "apikey", "secret", "token", "password", "authorization")


def _secret_name(name: Any) -> bool:
    low = str(name).lower().replace("-", "_")
    return any(low == n or low.endswith("_" + n) or (low.endswith(n + "s") and n == "api_key")
               for n in _SECRET_NAMES)


def _masked(value: Any) -> Any:
    """``value`` with the values of key-like fields (``*api_key*``, ``*token*``, ...) masked."""
    if isinstance(value, dict):
        return {
            k: "***" if _secret_name(k) and v else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _page(ctx: ServerContext, session_id: str, since_seq: int, limit: int) -> dict[str, Any]:
    events = ctx.engine.store.read_events(session_id, since_seq, limit + 1)
    more = len(events) > limit
    events = events[:limit]
    return {
        "session_id": session_id,
        "events": [
            {"seq": e.seq, "type": e.type, "data": _masked(e.payload), "created_at": e.created_at}
            for e in events
        ],
        "next_seq": events[-1].seq if events else since_seq,
        "has_more": more,
    }


@router.get("/{session_id}/events", response_model=None)
async def session_events(
    session_id: str,
    request: Request,
    ctx: Ctx,
    min_interval: Annotated[float, Query(ge=0, le=60)] = 0.1,
    since_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> StreamingResponse | Response:
    """A JSON page of the event log; with ``Accept: text/event-stream``, server-sent
    events: ``state`` on every change, ``best_candidate`` when the best changes."""
    ctx.engine.get_state(session_id)  # 404 before the stream starts
    if "text/event-stream" not in request.headers.get("accept", ""):
        return json_response(_page(ctx, session_id, since_seq, limit))
    return StreamingResponse(
        _stream(ctx, request, session_id, min_interval),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
