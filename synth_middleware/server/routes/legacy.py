"""Older hosted routes, kept so clients written against them work unchanged.

* MIPRO systems (the Banking77 walkthrough):
  ``POST /api/prompt-learning/online/mipro/systems/{id}/status`` and
  ``GET .../systems/{id}/state``.
* Session routes of both algorithms, ``/api/prompt-learning/online/{mipro|gepa}/sessions``:
  create, state, prompt URLs, reward, pause, resume, cancel.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from starlette.requests import Request
from starlette.responses import Response

from synth_middleware.server import operations as ops
from synth_middleware.server._responses import json_response
from synth_middleware.server.context import ServerContext, get_context
from synth_middleware.server.models import (
    CreateSessionRequest,
    CreateSessionResponse,
    MiproStatusRequest,
    PromptUrls,
    RewardAck,
    RewardRequest,
    SessionStateResponse,
)
from synth_middleware.wire import MAX_ID_CHARS

router = APIRouter(prefix="/api/prompt-learning/online", tags=["legacy"])
Ctx = Annotated[ServerContext, Depends(get_context)]

_ACTIONS = {"pause": "paused", "resume": "running", "cancel": "cancelled"}


def _mipro_state(state: Any) -> dict[str, Any]:
    candidates = {
        c["candidate_id"]: {
            "avg_reward": c["avg_reward"],
            "rollout_count": c["rollout_count"],
            "reward_count": c["reward_count"],
            "parent_id": c["parent_id"],
            "is_baseline": c["is_baseline"],
            "status": c["status"],
        }
        for c in state["candidates"]
    }
    proposals = sum(1 for c in state["candidates"] if not c["is_baseline"] and c["parent_id"])
    return {
        "system_id": state["session_id"],
        "status": state["status"],
        "best_candidate_id": state["best_candidate_id"],
        "best_reward": state["best_reward"],
        "version": state["version"],
        "rollout_count": state["rollout_count"],
        "reward_count": state["reward_count"],
        "proposal_seq": proposals,
        "candidates": candidates,
    }


@router.post("/mipro/systems/{system_id}/status")
async def mipro_status(
    system_id: str,
    body: MiproStatusRequest,
    ctx: Ctx,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_ID_CHARS)] = None,
) -> Response:
    """``{rollout_id, status: "reward", reward, candidate_id?}`` records a reward; any
    other status (``"done"``) is acknowledged."""
    return json_response(await ops.mipro_status(ctx, system_id, body, idempotency_key))


@router.get("/mipro/systems/{system_id}/state")
async def mipro_state(system_id: str, ctx: Ctx) -> Response:
    """The state in the older shape (``candidates`` keyed by id, ``proposal_seq``)."""
    return json_response(_mipro_state(ops.get_state(ctx, system_id)))


def _status_route(status: str) -> Any:
    async def act(session_id: str, ctx: Ctx) -> Response:
        return json_response(await ops.set_status(ctx, session_id, status))

    act.__doc__ = f"Set the session {status} (older route)."
    return act


def _add_session_routes(algo: str) -> None:
    kind = f"{algo}_online"
    base = f"/{algo}/sessions"

    async def create(body: CreateSessionRequest, request: Request, ctx: Ctx) -> Response:
        return json_response(await ops.create_session(ctx, request, body, kind=kind))

    async def state(session_id: str, ctx: Ctx) -> Response:
        return json_response(ops.get_state(ctx, session_id))

    async def prompt(
        session_id: str,
        request: Request,
        ctx: Ctx,
        correlation_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    ) -> Response:
        ctx.require_session(session_id)
        return json_response(ops.prompt_urls(ctx, request, session_id, correlation_id))

    async def reward(
        session_id: str,
        body: RewardRequest,
        ctx: Ctx,
        idempotency_key: Annotated[str | None, Header(max_length=MAX_ID_CHARS)] = None,
    ) -> Response:
        return json_response(await ops.post_reward(ctx, session_id, body, idempotency_key))

    create.__doc__ = f"Create a {algo.upper()} online session (older route)."
    state.__doc__ = "The session state (older route)."
    prompt.__doc__ = "The session's proxy URLs (older route)."
    reward.__doc__ = "Report a reward (older route)."
    # (path under base, handler, method, answer model, operation name suffix)
    routes = (
        ("", create, "POST", CreateSessionResponse, "create_session"),
        ("/{session_id}", state, "GET", SessionStateResponse, "session_state"),
        ("/{session_id}/prompt", prompt, "GET", PromptUrls, "prompt_urls"),
        ("/{session_id}/reward", reward, "POST", RewardAck, "reward"),
    )
    for suffix, endpoint, method, model, name in routes:
        router.add_api_route(
            base + suffix,
            endpoint,
            methods=[method],
            response_model=model,
            name=f"{algo}_{name}",
        )
    for action, status in _ACTIONS.items():
        act = _status_route(status)
        router.add_api_route(
            f"{base}/{{session_id}}/{action}",
            act,
            methods=["POST"],
            response_model=SessionStateResponse,
            name=f"{algo}_{action}",
        )


for _algo in ("mipro", "gepa"):
    _add_session_routes(_algo)
