"""Online sessions: create, list, state (with long-poll), pause/resume/cancel,
prompt URLs, reward, and the history views the dashboard draws."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from starlette.requests import Request
from starlette.responses import Response

from synth_middleware.errors import NotFoundError
from synth_middleware.server import operations as ops
from synth_middleware.server._errors import ApiError
from synth_middleware.server._responses import json_response
from synth_middleware.server.context import ServerContext, get_context
from synth_middleware.server.models import (
    CreateSessionRequest,
    CreateSessionResponse,
    PatchSessionRequest,
    PromptUrls,
    RewardAck,
    RewardRequest,
    SessionList,
    SessionStateResponse,
    Timeline,
)
from synth_middleware.wire import MAX_ID_CHARS, MAX_TIMESTAMP, MIN_TIMESTAMP, validate_session_id

_log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/online/sessions", tags=["sessions"])
Ctx = Annotated[ServerContext, Depends(get_context)]


@router.post("", response_model=CreateSessionResponse)
async def create_session(body: CreateSessionRequest, request: Request, ctx: Ctx) -> Response:
    """Create a session, or return it when ``session_id`` names an existing one."""
    return json_response(await ops.create_session(ctx, request, body))


@router.get("", response_model=SessionList)
async def list_sessions(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    """The newest sessions' states."""
    ids = ctx.engine.session_ids()[-limit:][::-1]
    items = []
    for sid in ids:
        try:
            items.append(ctx.engine.get_state(sid))
        except NotFoundError:  # removed meanwhile
            continue
        except Exception:  # one broken session must not hide the others
            _log.exception("session %s: its state could not be built; left out of the list", sid)
            continue
    return json_response({"items": items})


async def _state(
    ctx: ServerContext, session_id: str, wait_version: int | None, timeout: float
) -> Response:
    if wait_version is None:
        return json_response(ops.get_state(ctx, session_id))
    return json_response(await ops.wait_for_state(ctx, session_id, wait_version, timeout))


_WaitVersion = Annotated[
    int | None,
    Query(ge=0, description="long-poll: answer once the state's version is past this"),
]
_Timeout = Annotated[float, Query(ge=0, le=60, description="long-poll limit in seconds")]


@router.get("/{session_id}", response_model=SessionStateResponse)
async def get_session(
    session_id: str, ctx: Ctx, wait_version: _WaitVersion = None, timeout: _Timeout = 30.0
) -> Response:
    """The live state; with ``wait_version`` it waits (up to ``timeout``) for a newer one."""
    return await _state(ctx, session_id, wait_version, timeout)


@router.get("/{session_id}/state", response_model=SessionStateResponse)
async def get_session_state(
    session_id: str, ctx: Ctx, wait_version: _WaitVersion = None, timeout: _Timeout = 30.0
) -> Response:
    """Alias of ``GET /api/v1/online/sessions/{id}``."""
    return await _state(ctx, session_id, wait_version, timeout)


@router.patch("/{session_id}", response_model=SessionStateResponse)
async def patch_session(session_id: str, body: PatchSessionRequest, ctx: Ctx) -> Response:
    """``{state: "paused" | "running" | "cancelled"}``."""
    status = body.state or body.status
    if status is None:
        raise ApiError(422, "validation_error", "state: send paused, running or cancelled")
    return json_response(await ops.set_status(ctx, session_id, status))


@router.get("/{session_id}/prompt", response_model=PromptUrls)
async def get_prompt_urls(
    session_id: str,
    request: Request,
    ctx: Ctx,
    correlation_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
) -> Response:
    """The proxy URLs of the session (Pattern A)."""
    ops.get_state(ctx, session_id)  # 404 for an unknown session
    return json_response(ops.prompt_urls(ctx, request, session_id, correlation_id))


@router.post("/{session_id}/reward", response_model=RewardAck)
async def post_reward(
    session_id: str,
    body: RewardRequest,
    ctx: Ctx,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_ID_CHARS)] = None,
) -> Response:
    """Report a reward for a rollout (idempotent with ``idempotency_key``)."""
    return json_response(await ops.post_reward(ctx, session_id, body, idempotency_key))


@router.get("/{session_id}/rollouts")
async def list_rollouts(
    session_id: str, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Response:
    """The latest rollouts, newest first, each with its rewards."""
    ctx.require_session(session_id)
    return json_response({"items": ctx.engine.rollout_records(session_id, limit)})


@router.get("/{session_id}/timeline", response_model=Timeline)
async def timeline(
    session_id: str,
    ctx: Ctx,
    buckets: Annotated[int, Query(ge=1, le=500)] = 30,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 5000,
) -> Response:
    """Rollouts over time: the latest ``limit`` rollouts counted in ``buckets`` equal spans."""
    validate_session_id(session_id)
    ctx.require_session(session_id)
    rows = ctx.engine.store.recent_rollouts(session_id, limit)
    out: list[dict[str, Any]] = []
    if rows:
        # bounded to the timestamp domain: rows stored before it was enforced (+-1e308)
        times = [min(max(r.created_at, MIN_TIMESTAMP), MAX_TIMESTAMP) for r in rows]
        lo, hi = min(times), max(times)
        width = max((hi - lo) / buckets, 1e-9)
        counts = [0] * buckets
        for t in times:
            counts[min(int((t - lo) / width), buckets - 1)] += 1
        out = [
            {"start": lo + i * width, "end": lo + (i + 1) * width, "rollouts": n}
            for i, n in enumerate(counts)
        ]
    return json_response({"session_id": session_id, "buckets": out})
