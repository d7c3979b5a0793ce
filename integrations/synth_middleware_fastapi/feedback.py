"""The handler-side pieces: the rollout dependency and the ready feedback router."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from synth_middleware._tokens import TokenData
from synth_middleware.client.web import (
    DEFAULT_TOKEN_MAX_AGE,
    FEEDBACK_MODES,
    FEEDBACK_PATH,
    MAX_FEEDBACK_BODY,
    FeedbackError,
    WebConfig,
    check_body_size,
    forbidden,
    parse_feedback,
    submit_feedback,
    too_large,
)
from synth_middleware.rollout import Rollout, current_rollout
from synth_middleware.wire import MAX_ABS_REWARD, MAX_FEEDBACK_BYTES
from synth_middleware_fastapi.middleware import SCOPE_CONFIG, STATE_ROLLOUT

AuthCheck = Callable[[Request, TokenData], "bool | Awaitable[bool]"]
"""``(request, token) -> bool`` (sync or async): may this caller reward this rollout?"""


def get_rollout(request: Request) -> Rollout:
    """FastAPI dependency: the request's :class:`Rollout` (needs :class:`SynthMiddleware`)."""
    state = request.scope.get("state")
    r = state.get(STATE_ROLLOUT) if state else None
    if r is None:
        r = current_rollout()
    if r is None:
        raise RuntimeError(
            "no synth rollout for this request: add the middleware with "
            "app.add_middleware(synth_middleware_fastapi.SynthMiddleware)"
        )
    return r


synth_rollout = Depends(get_rollout)
"""``def handler(r: Rollout = synth_rollout)``: the request's rollout as a default."""

SynthRollout = Annotated[Rollout, Depends(get_rollout)]
"""``def handler(r: SynthRollout)``: the request's rollout as an annotation."""

_FEEDBACK_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["token", "reward"],
                    "properties": {
                        "token": {
                            "type": "string",
                            "description": "the x-synth-rollout header of the rated response",
                        },
                        "reward": {
                            "type": "number",
                            "minimum": -MAX_ABS_REWARD,
                            "maximum": MAX_ABS_REWARD,
                            "description": "the reward: finite, within +-1e6",
                        },
                        # maxLength counts characters; the limit is in UTF-8 bytes, which
                        # the endpoint checks (this bound holds for ASCII text)
                        "feedback": {"type": "string", "maxLength": MAX_FEEDBACK_BYTES},
                        "metadata": {"type": "object"},
                    },
                }
            }
        },
    }
}


def feedback_router(
    *,
    path: str = FEEDBACK_PATH,
    secret: str | bytes | None = None,
    token_max_age: float | None = None,
    auth: AuthCheck | None = None,
    include_in_schema: bool = True,
    per_token: str | None = None,
) -> APIRouter:
    """An ``APIRouter`` with ``POST /synth/feedback``: ``{token, reward, feedback?, metadata?}``.

    ::

        app.include_router(feedback_router(auth=lambda request, token: True))

    Answers 202 ``{"status": "accepted", "rollout_id", "idempotency_key"}``
    once the reward is queued; 400 for a body that is not a JSON object, 403
    for a forged or expired token or one the ``auth`` check refuses, 413 for
    an oversized body, 422 for a missing or bad reward, feedback or metadata,
    503 when no wrapped client is there to deliver it; every error with a
    JSON body ``{"error": {"code", "message"}}``.

    ``secret`` and ``token_max_age`` default to the middleware's options
    (then ``SYNTH_TOKEN_SECRET`` and a week), so tokens verify with the
    secret that signed them. ``per_token`` (default: the middleware's
    ``feedback_per_token``, else ``"once"``): ``"once"`` counts one reward per
    token and answers a replay with the first result (409 if the replay
    carries another reward); ``"all"`` counts every post. ``auth`` (sync or async) receives the request
    and the verified token data; a falsy answer refuses the reward.
    """

    async def synth_feedback(request: Request) -> JSONResponse:
        cfg: WebConfig | None = request.scope.get(SCOPE_CONFIG)
        sec = secret if secret is not None else (cfg.secret if cfg is not None else None)
        if token_max_age is not None:
            max_age: float | None = token_max_age
        else:
            max_age = cfg.token_max_age if cfg is not None else DEFAULT_TOKEN_MAX_AGE
        if per_token is not None:
            mode = per_token
        else:
            mode = cfg.feedback_per_token if cfg is not None else "once"
        try:
            check_body_size(request.headers.get("content-length"))
            body = await _read_body(request)
            fb = parse_feedback(body, secret=sec, max_age=max_age, per_token=mode)
            if auth is not None:
                ok = auth(request, fb.token)
                if inspect.isawaitable(ok):
                    ok = await ok
                if not ok:
                    raise forbidden()
            out = submit_feedback(fb)
        except FeedbackError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse(out, status_code=202)

    router = APIRouter()
    router.add_api_route(
        path,
        synth_feedback,
        methods=["POST"],
        status_code=202,
        name="synth_feedback",
        summary="Reward a rollout by its token",
        include_in_schema=include_in_schema,
        openapi_extra=_FEEDBACK_SCHEMA,
    )
    if per_token is not None and per_token not in FEEDBACK_MODES:
        raise ValueError(f"per_token must be one of {', '.join(FEEDBACK_MODES)}")
    return router


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FEEDBACK_BODY:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)
