"""Session operations shared by the current routes and the older hosted aliases.

Reads go straight to the engine (in-memory state, caught up from the log);
writes go through the single writer (:mod:`synth_middleware.server.writer`),
so each answer is sent only after its write committed.
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.requests import Request

from synth_middleware.engine.engine import IDEMPOTENCY_CONFLICT
from synth_middleware.errors import NotFoundError
from synth_middleware.server._errors import ApiError
from synth_middleware.server.context import ServerContext
from synth_middleware.server.models import (
    CreateSessionRequest,
    MiproStatusRequest,
    RewardRequest,
)
from synth_middleware.wire import (
    RewardRecord,
    SessionState,
    as_reward,
    reward_error,
    validate_session_id,
)
from synth_middleware.wire.prompts import prompt_text

MAX_WAIT_SECONDS = 60.0
_SCORE_KEYS = ("score", "reward", "outcome_reward", "value")
_SPACES = re.compile(r"\s+")


def new_id(prefix: str) -> str:
    """A fresh opaque id such as ``ro_3f2a...`` (96 random bits)."""
    return f"{prefix}_{os.urandom(12).hex()}"


# -- reads --------------------------------------------------------------------


def get_state(ctx: ServerContext, session_id: str) -> SessionState:
    """The session's state (404 ``session_not_found`` if unknown)."""
    return ctx.engine.get_state(session_id)


async def wait_for_state(
    ctx: ServerContext, session_id: str, after_version: int, timeout: float
) -> SessionState:
    """Long-poll: the state once its ``version`` is past ``after_version``, or at the timeout."""
    deadline = time.monotonic() + min(max(timeout, 0.0), MAX_WAIT_SECONDS)
    while True:
        state = ctx.engine.get_state(session_id)
        remaining = deadline - time.monotonic()
        if state["version"] > after_version or remaining <= 0 or ctx.feed.closed:
            return state
        # other processes sharing the database do not notify: re-check on a timer too
        await ctx.feed.wait(session_id, min(remaining, ctx.config.external_poll_interval))


def prompt_urls(
    ctx: ServerContext, request: Request, session_id: str, correlation_id: str | None = None
) -> dict[str, str]:
    """``{proxy_url, online_url, chat_completions_url}`` for a session.

    ``proxy_url`` (and its alias ``online_url``) is the base an OpenAI client
    takes as ``base_url``; with a ``correlation_id``, ``chat_completions_url``
    names it as the rollout, so every call through that URL is one rollout.
    """
    base = ctx.base_url(request)
    proxy = f"{base}/api/v1/online/sessions/{quote(session_id, safe='')}/proxy"
    if correlation_id:
        chat = f"{proxy}/{quote(correlation_id, safe='')}/chat/completions"
    else:
        chat = f"{proxy}/chat/completions"
    return {"proxy_url": proxy, "online_url": proxy, "chat_completions_url": chat}


# -- sessions -------------------------------------------------------------------


def baseline_from(body: CreateSessionRequest) -> str | None:
    """The baseline prompt a create request carries: ``baseline``, then
    ``metadata.baseline_prompt``, then ``config_body[.prompt_learning].initial_prompt``."""
    if body.baseline is not None:
        return body.baseline
    meta = body.metadata or {}
    if isinstance(meta.get("baseline_prompt"), str):
        return meta["baseline_prompt"]  # type: ignore[no-any-return]
    cfg = body.config_body or {}
    sections = [cfg]
    if isinstance(cfg.get("prompt_learning"), Mapping):
        sections.append(cfg["prompt_learning"])
    for section in sections:
        for key in ("initial_prompt", "baseline_prompt", "baseline"):
            text = prompt_text(section.get(key))
            if text is not None:
                return text
    return None


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` (nested dicts or dotted keys) into a copy of ``base``."""
    out = dict(base)
    for key, value in overrides.items():
        path = str(key).split(".")
        node = out
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, Mapping) else {}
            node[part] = child
            node = child
        leaf = path[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
            node[leaf] = _merge(dict(node[leaf]), value)
        else:
            node[leaf] = value
    return out


def session_config(body: CreateSessionRequest) -> dict[str, Any]:
    """What the engine stores as the session's config: ``config_body`` with
    ``overrides`` merged in (the engine reads its settings from the flat or the
    hosted nested form and type-checks them), plus the system name and metadata."""
    out = dict(body.config_body or {})
    if body.overrides:
        out = _merge(out, body.overrides)
    name = body.system_name or (body.system.name if body.system else None)
    if name and "system_name" not in out:
        out["system_name"] = name
    if body.config_name and "config_name" not in out:
        out["config_name"] = body.config_name
    if body.metadata and "metadata" not in out:
        out["metadata"] = body.metadata
    return out


_NO_BASELINE_HINT = (
    "put the baseline prompt in the config as prompt_learning.initial_prompt (text, or "
    "{messages: [{role: system, pattern|content}]}) or send baseline"
)


def _read_config_file(ctx: ServerContext, path_text: str) -> dict[str, Any]:
    """The TOML/JSON file ``path_text`` names, if it lies inside one of ``config_dirs``."""
    path = os.path.realpath(path_text)
    allowed = [os.path.realpath(d) for d in ctx.config.config_dirs]
    if not any(os.path.commonpath([path, d]) == d for d in allowed):
        raise ApiError(
            422,
            "config_path_not_allowed",
            f"config_path {path_text!r}: this server reads config files only inside the "
            "folders it was started with (serve --config-dir, or SYNTH_CONFIG_DIRS); "
            "none of them holds this file. Send the config itself instead: "
            "config_body=<dict> (or config=<dict>)",
        )
    try:
        with open(path, "rb") as f:
            raw = f.read(1024 * 1024 + 1)
    except OSError as exc:
        raise ApiError(
            422, "config_path_unreadable", f"config_path {path_text!r}: {exc.strerror}"
        ) from None
    try:
        if path.endswith(".json"):
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            422, "config_path_invalid", f"config_path {path_text!r}: not valid TOML/JSON: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(422, "config_path_invalid", f"config_path {path_text!r}: not a table")
    return data


def resolve_config(ctx: ServerContext, body: CreateSessionRequest) -> CreateSessionRequest:
    """``body`` with its config in ``config_body``: read from ``config`` (the hosted
    client's key) or from the file ``config_path`` names (see ``config_dirs``)."""
    sources = [
        name for name in ("config_body", "config", "config_path") if getattr(body, name) is not None
    ]
    if len(sources) > 1:
        raise ApiError(
            422, "validation_error", f"send one of {', '.join(sources)}, not several"
        )
    if body.config is not None:
        return body.model_copy(update={"config_body": body.config, "config": None})
    if body.config_path is not None:
        cfg = _read_config_file(ctx, body.config_path)
        return body.model_copy(update={"config_body": cfg, "config_path": None})
    return body


async def create_session(
    ctx: ServerContext, request: Request, body: CreateSessionRequest, *, kind: str | None = None
) -> dict[str, Any]:
    """Create the session (or return the existing one; a new baseline starts a generation).

    The answer has the create fields (``session_id, correlation_id, proxy_url,
    online_url, chat_completions_url, created``) and the session state. A new
    session whose request carried a config (``config``, ``config_path``,
    ``config_name``) without a baseline prompt is refused (422); one created
    with no baseline at all says so in ``warnings`` (the first call through the
    proxy then registers its system message as the baseline).
    """
    sid = body.session_id or new_id("sess")
    validate_session_id(sid)
    kind = kind or body.kind
    from_client_config = body.config is not None or body.config_path is not None
    body = resolve_config(ctx, body)
    baseline = baseline_from(body)
    config = session_config(body)
    try:
        ctx.engine.get_state(sid)
        existed = True
    except NotFoundError:
        existed = False
    warnings: list[str] = []
    if not existed and baseline is None:
        if from_client_config or (body.config_name and body.config_body is None):
            what = "config_name (this server keeps no named configs)" if (
                body.config_name and body.config_body is None
            ) else "the config"
            raise ApiError(
                422,
                "missing_baseline",
                f"no baseline prompt in {what}: {_NO_BASELINE_HINT}",
            )
        warnings.append(
            "no baseline prompt: the first call through the proxy registers its system "
            f"message as the baseline ({_NO_BASELINE_HINT})"
        )
    engine = ctx.engine
    state = await ctx.writer.call(
        lambda: engine.ensure_session(sid, baseline=baseline, kind=kind, config=config)
    )
    return {
        **state,  # the full state too, so an ensure-style client needs no second request
        "session_id": sid,
        "correlation_id": body.correlation_id,
        "kind": state.get("kind", kind),
        "status": state.get("status", "running"),
        "created": not existed,
        "system": {"id": sid, "name": config.get("system_name") or sid},
        **({"warnings": warnings} if warnings else {}),
        **prompt_urls(ctx, request, sid, body.correlation_id),
    }


async def set_status(ctx: ServerContext, session_id: str, status: str) -> SessionState:
    """Pause (``paused``), resume (``running``), cancel (``cancelled``) or complete a session."""
    engine = ctx.engine
    return await ctx.writer.call(lambda: engine.set_status(session_id, status))


# -- rewards --------------------------------------------------------------------


def _norm(value: Any) -> str:
    return _SPACES.sub(" ", str(value).strip()).casefold()


def reward_value(reward_info: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> float:
    """The reward: ``reward_info.score`` (or ``reward``, ``outcome_reward``, ``value``),
    else 1.0/0.0 from ``{expected, predicted}`` in ``metadata`` or ``reward_info``."""
    for key in _SCORE_KEYS:
        if key in reward_info:
            number = as_reward(reward_info[key])
            if number is None:
                raise ApiError(
                    422, "invalid_reward", f"reward_info.{key}: {reward_error(reward_info[key])}"
                )
            return number
    for source in (metadata or {}, reward_info):
        if "expected" in source and "predicted" in source:
            return 1.0 if _norm(source["expected"]) == _norm(source["predicted"]) else 0.0
    raise ApiError(
        422,
        "missing_reward",
        "no reward: send reward_info.score (a number), or metadata {expected, predicted}",
    )


def remembered_candidate(ctx: ServerContext, session_id: str, rollout_id: str) -> str | None:
    """The candidate this process served for ``rollout_id`` (proxy), if it remembers one."""
    seen = ctx.rollouts.get(rollout_id)
    if seen is not None and seen[0] == session_id:
        return seen[1]
    return None


async def record_reward(
    ctx: ServerContext,
    session_id: str,
    *,
    value: float,
    rollout_id: str | None,
    candidate_id: str | None,
    idempotency_key: str | None,
    feedback: str | None = None,
    metadata: dict[str, Any] | None = None,
    stop: bool = False,
    created_at: float | None = None,
) -> dict[str, Any]:
    """Store one reward and answer the ack (400/404 JSON errors when refused)."""
    if as_reward(value) is None:
        raise ApiError(422, "invalid_reward", reward_error(value) or "invalid reward")
    ctx.require_session(session_id)
    rid = rollout_id or new_id("ro")
    cid = candidate_id or remembered_candidate(ctx, session_id, rid)
    if cid is not None and ctx.candidate_session(cid) != session_id:
        raise ApiError(
            404, "candidate_not_found", f"unknown candidate {cid!r} in session {session_id!r}"
        )
    key = idempotency_key or new_id("rw")
    record: RewardRecord = {
        "idempotency_key": key,
        "rollout_id": rid,
        "value": value,
        "created_at": created_at if created_at is not None else time.time(),
        "session_id": session_id,
        "candidate_id": cid,
    }
    if feedback is not None:
        record["feedback"] = feedback
    if metadata:
        record["metadata"] = metadata
    if stop:
        record["stop"] = True
    result = (await ctx.writer.record_rewards([record]))[0]
    if result["status"] == "rejected":
        error = result.get("error") or "reward rejected"
        if error.startswith(IDEMPOTENCY_CONFLICT):  # as Stripe: a key names one request
            raise ApiError(409, "idempotency_conflict", error)
        raise ApiError(400, "reward_rejected", error)
    return {
        "ok": True,
        "status": result["status"],
        "session_id": session_id,
        "rollout_id": rid,
        "candidate_id": cid,
        "idempotency_key": key,
        "reward": value,
    }


async def post_reward(
    ctx: ServerContext, session_id: str, body: RewardRequest, header_key: str | None
) -> dict[str, Any]:
    """The ``/reward`` route: value from ``reward_info``, extras kept as metadata."""
    value = reward_value(body.reward_info, body.metadata)
    metadata: dict[str, Any] = dict(body.metadata or {})
    extra_info = {k: v for k, v in body.reward_info.items() if k not in ("score", "feedback")}
    if extra_info:
        metadata["reward_info"] = extra_info
    if body.trace_ref:
        metadata["trace_ref"] = body.trace_ref
    if body.artifact is not None:
        metadata["artifact"] = body.artifact
    feedback = body.reward_info.get("feedback")
    return await record_reward(
        ctx,
        session_id,
        value=value,
        rollout_id=body.rollout_id,
        candidate_id=body.candidate_id,
        idempotency_key=body.idempotency_key or header_key,
        feedback=feedback if isinstance(feedback, str) else None,
        metadata=metadata or None,
        stop=bool(body.stop),
        created_at=body.created_at,
    )


async def mipro_status(
    ctx: ServerContext, system_id: str, body: MiproStatusRequest, header_key: str | None
) -> dict[str, Any]:
    """The older MIPRO ``/status`` route: ``status: "reward"`` records a reward, any other
    status (``"done"``) is acknowledged (404 for an unknown system)."""
    if body.status == "reward":
        if body.reward is None:
            raise ApiError(422, "missing_reward", 'status "reward" needs a numeric "reward"')
        ack = await record_reward(
            ctx,
            system_id,
            value=body.reward,
            rollout_id=body.rollout_id,
            candidate_id=body.candidate_id,
            idempotency_key=body.idempotency_key or header_key,
            metadata=body.metadata,
        )
        return {**ack, "system_id": system_id, "status": "reward", "result": ack["status"]}
    ctx.require_session(system_id)
    cid = body.candidate_id or remembered_candidate(ctx, system_id, body.rollout_id)
    return {
        "ok": True,
        "system_id": system_id,
        "rollout_id": body.rollout_id,
        "candidate_id": cid,
        "status": body.status,
    }
