"""Candidates: list (cursor paging, status filter, sort, include), get one, add, archive."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from synth_middleware.errors import NotFoundError
from synth_middleware.server._aliases import ALIAS_KEY
from synth_middleware.server._errors import ApiError
from synth_middleware.server._responses import json_response
from synth_middleware.server.context import ServerContext, get_context
from synth_middleware.server.models import (
    AddCandidateRequest,
    ArchiveRequest,
    ArchiveResponse,
    CandidateItemResponse,
    CandidatePage,
)
from synth_middleware.wire import CandidateItem

router = APIRouter(tags=["candidates"])
Ctx = Annotated[ServerContext, Depends(get_context)]


def _enrich(item: CandidateItem | dict[str, Any], session_id: str) -> dict[str, Any]:
    out = dict(item)
    out["system_id"] = session_id
    out["session_id"] = session_id
    out["score"] = out["objective"] = item.get("avg_reward")
    return out


def _page(
    ctx: ServerContext,
    session_id: str,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
    sort: str | None,
    include: str | None,
    job_id: str | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if include is not None:
        kwargs["include"] = [part.strip() for part in include.split(",") if part.strip()]
    page = ctx.engine.list_candidates(
        session_id, status=status, limit=limit, cursor=cursor, sort=sort, **kwargs
    )
    page["items"] = [_enrich(i, session_id) for i in page["items"]]
    if job_id is not None:
        page["job_id"] = job_id
    return page


_Status = Annotated[str | None, Query(description="active, archived or all")]
_Limit = Annotated[int, Query(ge=1, le=1000)]
_Sort = Annotated[str | None, Query(description='e.g. "objective:desc,created_at:desc"')]
_Include = Annotated[
    str | None, Query(description='comma-separated; "prompt_text" adds candidate_content')
]


BASELINE_ALIAS = "baseline"


def _with_baseline_alias(ctx: ServerContext, page: dict[str, Any], system_id: str) -> None:
    """Add an item ``candidate_id: "baseline"`` (``alias_of`` the real baseline) to a
    first page: the hosted client's ``get_candidate("baseline")`` looks for it there."""
    state = ctx.engine.get_state(system_id)
    base = state.get("baseline_candidate_id")
    if not isinstance(base, str):
        return
    found = next((i for i in page["items"] if i.get("candidate_id") == base), None)
    item = dict(found) if found is not None else _enrich(ctx.engine.get_candidate(base), system_id)
    item.update(candidate_id=BASELINE_ALIAS, alias_of=base)
    page["items"].append(item)


@router.get("/api/v1/systems/{system_id}/candidates", response_model=CandidatePage)
async def list_system_candidates(
    system_id: str,
    request: Request,
    ctx: Ctx,
    job_id: str | None = None,
    algorithm: str | None = None,
    mode: str | None = None,
    status: _Status = None,
    limit: _Limit = 100,
    cursor: str | None = None,
    sort: _Sort = None,
    include: _Include = None,
) -> Response:
    """A page of the session's candidates (for online sessions ``system_id`` is the session id).

    Asked as ``/api/systems/{id}/candidates`` (the hosted client's spelling), the
    first page also carries ``candidate_id: "baseline"``, an alias of the baseline.
    """
    page = _page(
        ctx,
        system_id,
        status=status,
        limit=limit,
        cursor=cursor,
        sort=sort,
        include=include,
        job_id=job_id,
    )
    if ALIAS_KEY in request.scope and not cursor and status in (None, "all", "active"):
        _with_baseline_alias(ctx, page, system_id)
    return json_response(page)


@router.get("/api/v1/online/sessions/{session_id}/candidates", response_model=CandidatePage)
async def list_session_candidates(
    session_id: str,
    ctx: Ctx,
    status: _Status = None,
    limit: _Limit = 100,
    cursor: str | None = None,
    sort: _Sort = None,
    include: _Include = None,
) -> Response:
    """Alias of ``GET /api/v1/systems/{session_id}/candidates``."""
    return json_response(
        _page(
            ctx,
            session_id,
            status=status,
            limit=limit,
            cursor=cursor,
            sort=sort,
            include=include,
            job_id=None,
        )
    )


def _session_of(ctx: ServerContext, candidate_id: str) -> str:
    sid = ctx.candidate_session(candidate_id) if candidate_id else None
    if sid is None:
        raise NotFoundError(f"unknown candidate {candidate_id!r}", code="candidate_not_found")
    return sid


def candidate_item(ctx: ServerContext, candidate_id: str) -> dict[str, Any]:
    """One candidate as ``GET /api/v1/candidates/{id}`` answers it (404 if unknown)."""
    sid = _session_of(ctx, candidate_id)
    return _enrich(ctx.engine.get_candidate(candidate_id), sid)


@router.get("/api/v1/candidates/{candidate_id}", response_model=CandidateItemResponse)
async def get_candidate(candidate_id: str, request: Request, ctx: Ctx) -> Response:
    """One candidate with its full payload.

    Asked as ``/api/candidates/baseline`` (the hosted client's spelling), ``baseline``
    names no session: the answer says so (no ``system_id``), and the client then
    finds the session's ``baseline`` alias in its candidate list.
    """
    if (
        candidate_id == BASELINE_ALIAS
        and ALIAS_KEY in request.scope
        and ctx.candidate_session(candidate_id) is None
    ):
        return json_response(
            {
                "candidate_id": BASELINE_ALIAS,
                "alias": True,
                "system_id": None,
                "message": "'baseline' is each session's baseline; list the session's candidates",
            }
        )
    return json_response(candidate_item(ctx, candidate_id))


@router.get(
    "/api/v1/offline/jobs/{job_id}/candidates/{candidate_id}",
    response_model=CandidateItemResponse,
)
async def get_job_candidate(job_id: str, candidate_id: str, ctx: Ctx) -> Response:
    """Offline jobs are not run by this server: answers only when ``job_id`` is the
    candidate's session, else 404."""
    item = candidate_item(ctx, candidate_id)
    if item["session_id"] != job_id:
        raise ApiError(404, "job_not_found", f"unknown offline job {job_id!r}")
    return json_response(item)


@router.post(
    "/api/v1/online/sessions/{session_id}/candidates",
    response_model=CandidateItemResponse,
    status_code=201,
)
async def add_candidate(session_id: str, body: AddCandidateRequest, ctx: Ctx) -> Response:
    """Add a candidate: ``candidate_content`` (prompt text) and/or ``artifact_payload``."""
    if body.candidate_content is None and body.artifact_payload is None:
        raise ApiError(422, "validation_error", "send candidate_content (text) or artifact_payload")
    engine = ctx.engine
    cid = await ctx.writer.call(
        lambda: engine.add_candidate(
            session_id,
            body.candidate_content,
            payload=body.artifact_payload,
            parent_id=body.parent_id,
            metadata=body.metadata,
        )
    )
    return json_response(_enrich(engine.get_candidate(cid), session_id), status=201)


async def _archive(ctx: ServerContext, candidate_id: str, reason: str) -> Response:
    sid = _session_of(ctx, candidate_id)
    engine = ctx.engine
    changed = await ctx.writer.call(
        lambda: engine.archive_candidate(sid, candidate_id, reason=reason)
    )
    return json_response(
        {"candidate_id": candidate_id, "session_id": sid, "status": "archived", "changed": changed}
    )


@router.post("/api/v1/candidates/{candidate_id}/archive", response_model=ArchiveResponse)
async def archive_candidate(
    candidate_id: str, ctx: Ctx, body: Annotated[ArchiveRequest | None, Body()] = None
) -> Response:
    """Archive a candidate (it stops being served); the baseline cannot be archived."""
    return await _archive(ctx, candidate_id, body.reason if body else "archived")


@router.delete("/api/v1/candidates/{candidate_id}", response_model=ArchiveResponse)
async def delete_candidate(candidate_id: str, ctx: Ctx) -> Response:
    """Same as archiving: candidates are never erased from the log."""
    return await _archive(ctx, candidate_id, "archived")
