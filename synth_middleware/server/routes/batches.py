"""Batch ingestion: rewards (idempotent by key) and rollouts (idempotent by id).

A batch is validated record by record: a malformed record is rejected (or
skipped) in its own result and never affects the others. Every answer is
sent after the batch committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from synth_middleware.server import operations as ops
from synth_middleware.server._responses import json_response
from synth_middleware.server.context import ServerContext, get_context
from synth_middleware.server.models import (
    RewardBatchRequest,
    RewardBatchResponse,
    RolloutBatchRequest,
    RolloutBatchResponse,
)
from synth_middleware.wire import validate_session_id

router = APIRouter(tags=["batches"])
Ctx = Annotated[ServerContext, Depends(get_context)]


def _with_session(records: list[Any], session_id: str | None, ctx: ServerContext) -> list[Any]:
    """Fill ``session_id`` (path default) and ``candidate_id`` (remembered proxy rollouts)."""
    out: list[Any] = []
    for r in records:
        if isinstance(r, Mapping):
            r = dict(r)
            if session_id is not None and r.get("session_id") is None:
                r["session_id"] = session_id
            rid, sid = r.get("rollout_id"), r.get("session_id")
            if r.get("candidate_id") is None and isinstance(rid, str) and isinstance(sid, str):
                cid = ops.remembered_candidate(ctx, sid, rid)
                if cid is not None:
                    r["candidate_id"] = cid
        out.append(r)
    return out


async def store_rewards(
    ctx: ServerContext, records: list[Any], session_id: str | None
) -> dict[str, Any]:
    """Store a reward batch (records without ``session_id`` take ``session_id``); the
    answer body ``{results: [...]}``, sent once the batch committed."""
    if session_id is not None:
        validate_session_id(session_id)
    records = _with_session(records, session_id, ctx)
    return {"results": await ctx.writer.record_rewards(records)}


async def store_rollouts(
    ctx: ServerContext, records: list[Any], session_id: str | None
) -> dict[str, Any]:
    """Store a rollout batch (records without ``session_id`` take ``session_id``); the
    answer body ``{accepted, duplicates, supplemented, skipped, errors, statuses}``."""
    if session_id is not None:
        validate_session_id(session_id)
        records = [
            {**r, "session_id": session_id}
            if isinstance(r, Mapping) and r.get("session_id") is None
            else r
            for r in records
        ]
    result = await ctx.writer.record_rollouts(records)
    return {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "supplemented": result.supplemented,
        "skipped": result.skipped,
        "errors": [{"index": i, "error": e} for i, e in result.errors],
        "statuses": result.statuses,
    }


@router.post("/api/v1/rewards/batch", response_model=RewardBatchResponse)
async def rewards_batch(body: RewardBatchRequest, ctx: Ctx) -> Response:
    """``{rewards: [RewardRecord, ...]}`` -> ``{results: [RewardResult, ...]}``, in order."""
    return json_response(await store_rewards(ctx, body.rewards, None))


@router.post(
    "/api/v1/online/sessions/{session_id}/rewards:batch", response_model=RewardBatchResponse
)
async def session_rewards_batch(session_id: str, body: RewardBatchRequest, ctx: Ctx) -> Response:
    """As ``/api/v1/rewards/batch``; records without ``session_id`` belong to this session."""
    return json_response(await store_rewards(ctx, body.rewards, session_id))


@router.post("/api/v1/rollouts/batch", response_model=RolloutBatchResponse)
async def rollouts_batch(body: RolloutBatchRequest, ctx: Ctx) -> Response:
    """``{rollouts: [RolloutRecord, ...]}``; idempotent on ``rollout_id``."""
    return json_response(await store_rollouts(ctx, body.rollouts, None))


@router.post(
    "/api/v1/online/sessions/{session_id}/rollouts:batch", response_model=RolloutBatchResponse
)
async def session_rollouts_batch(session_id: str, body: RolloutBatchRequest, ctx: Ctx) -> Response:
    """As ``/api/v1/rollouts/batch``; records without ``session_id`` belong to this session."""
    return json_response(await store_rollouts(ctx, body.rollouts, session_id))
