"""Offline jobs over HTTP: the routes of :mod:`synth_middleware.offline.jobs`.

Each route is served under both ``/api/prompt-learning/online/jobs`` and
``/api/v1/offline/jobs``: create (``POST ""``), list (``GET ""``), status
(``GET /{job_id}``, ``/{job_id}/status``), result, start and cancel. The job
service itself knows nothing of HTTP: :class:`ServerJobHost` hands it this
server's engine writer, proxy and reward bookkeeping. A create request with
``mipro.mode = "online"`` (the Banking77 walkthrough) makes an online session
instead, which the caller drives (:func:`create_online_job`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from synth_middleware.engine import Engine
from synth_middleware.errors import InvalidRequestError
from synth_middleware.offline.jobs import ALGORITHMS, Job, JobManager, flat_config
from synth_middleware.server import operations as ops
from synth_middleware.server._errors import ApiError
from synth_middleware.server._responses import json_response
from synth_middleware.server.context import ServerContext, get_context
from synth_middleware.server.models import CreateSessionRequest

__all__ = [
    "JOB_PREFIXES",
    "ServerJobHost",
    "create_online_job",
    "job_rollout_call",
    "jobs_of",
    "online_mode",
    "router",
    "shutdown_jobs",
]

JOB_PREFIXES = ("/api/prompt-learning/online/jobs", "/api/v1/offline/jobs")
"""The two spellings of the jobs API (the hosted one's and ours)."""
_EXTRA_KEY = "offline_jobs"
_T = TypeVar("_T")


class ServerJobHost:
    """The :class:`~synth_middleware.offline.jobs.JobHost` of one server: its jobs write
    through the server's single writer and reward as the reward route does."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    @property
    def engine(self) -> Engine:
        """The server's engine."""
        return self.ctx.engine

    async def write(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn()`` on the server's single writer."""
        return await self.ctx.writer.call(fn)

    def session_opened(self, session_id: str) -> None:
        """Remember the session (the routes skip their existence check)."""
        self.ctx.known_sessions.add(session_id)

    def candidates_added(self, session_id: str) -> None:
        """Make the proxy serve the new candidates at once."""
        if self.ctx.proxy is not None:
            self.ctx.proxy.chooser.invalidate(session_id)

    def pin_rollout(self, session_id: str, rollout_id: str, candidate_id: str) -> None:
        """The proxy serves ``candidate_id`` for ``rollout_id``."""
        self.ctx.rollouts[rollout_id] = (session_id, candidate_id)

    def served_candidate(self, session_id: str, rollout_id: str) -> str | None:
        """The candidate the proxy served for ``rollout_id``, if remembered."""
        return ops.remembered_candidate(self.ctx, session_id, rollout_id)

    async def record_reward(
        self,
        session_id: str,
        *,
        value: float,
        rollout_id: str,
        candidate_id: str,
        idempotency_key: str,
        metadata: dict[str, Any],
    ) -> None:
        """Store the reward as the reward route does."""
        await ops.record_reward(
            self.ctx,
            session_id,
            value=value,
            rollout_id=rollout_id,
            candidate_id=candidate_id,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )


router = APIRouter(tags=["offline jobs"])
Ctx = Annotated[ServerContext, Depends(get_context)]


_PROXY_CALL = re.compile(
    r"^/api/v1/online/sessions/(?P<sid>[^/]+)/proxy/(?P<rid>[^/]+)(?:/v1)?/chat/completions$"
)


def job_rollout_call(ctx: ServerContext, scope: Mapping[str, Any]) -> bool:
    """Whether ``scope`` is a container's proxy call for a rollout a job has in flight.

    Such a call needs no server key: the container was handed the URL (its rollout
    id, 96 random bits, is the capability) and may hold only its model provider's
    key. Only ``POST .../proxy/{rollout_id}[/v1]/chat/completions``, only while the
    job waits for that rollout.
    """
    if scope.get("method") != "POST":
        return False
    m = _PROXY_CALL.match(str(scope.get("path") or ""))
    if m is None:
        return False
    manager: JobManager | None = ctx.extra.get(_EXTRA_KEY)
    return manager is not None and (m["sid"], m["rid"]) in manager.in_flight


def jobs_of(ctx: ServerContext) -> JobManager:
    """The server's :class:`JobManager` (created on first use)."""
    manager = ctx.extra.get(_EXTRA_KEY)
    if manager is None:
        manager = ctx.extra[_EXTRA_KEY] = JobManager(ServerJobHost(ctx))
    return manager


async def shutdown_jobs(ctx: ServerContext) -> None:
    """Cancel the server's running jobs (called by the app's lifespan at shutdown)."""
    manager = ctx.extra.get(_EXTRA_KEY)
    if manager is not None:
        await manager.shutdown()


def _view(job: Job | Mapping[str, Any]) -> dict[str, Any]:
    return job.public() if isinstance(job, Job) else {k: v for k, v in job.items() if k != "result"}


_CREATE_DOC = (
    'Create an offline job: ``{algorithm: "mipro"|"gepa", config_body: {container_url, '
    "container_api_key?, model?, initial_prompt?, train_size, val_size, rollout_budget, "
    "max_concurrent, minibatch_size, timeout_seconds, ...}, auto_start?}``."
)


def online_mode(body: Mapping[str, Any]) -> bool:
    """Whether a job request asks for *online* mode (``mipro.mode = "online"``, as the
    Banking77 walkthrough sends it, or ``mode = "online"`` at the top or in the config)."""
    if str(body.get("mode") or "").lower() == "online":
        return True
    try:
        flat = flat_config(body)
    except InvalidRequestError:
        return False
    for section in (flat, flat.get("mipro"), flat.get("gepa")):
        if isinstance(section, Mapping) and str(section.get("mode") or "").lower() == "online":
            return True
    return False


async def create_online_job(
    body: Mapping[str, Any], request: Request, ctx: ServerContext
) -> dict[str, Any]:
    """An online "job": an online session that the caller drives (its own rollout loop
    through the proxy, rewards on the status or reward route); nothing runs server-side.

    Answers the job with ``metadata.mipro_system_id`` / ``mipro_proxy_url`` (also
    ``system_id`` / ``proxy_url``, and ``gepa_*`` for GEPA), as the walkthrough reads them.
    """
    flat = flat_config(body)
    algo = str(body.get("algorithm") or flat.get("algorithm") or "mipro").lower()
    if algo not in ALGORITHMS:
        raise ApiError(422, "validation_error", 'algorithm must be "mipro" or "gepa"')
    kind = ALGORITHMS[algo]
    cfg = body.get("config_body")
    if cfg is None:
        cfg = body.get("config")
    if cfg is not None and not isinstance(cfg, Mapping):
        raise ApiError(422, "validation_error", "config_body must be an object")
    meta = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else {}
    try:
        req = CreateSessionRequest.model_validate(
            {
                "kind": kind,
                "config_body": dict(cfg or {}),
                "metadata": dict(meta or {}) or None,
                "session_id": body.get("session_id") or ops.new_id("job"),
                "system_name": flat.get("system_name") or flat.get("task_app_id"),
            }
        )
    except ValidationError as exc:
        raise ApiError(422, "validation_error", str(exc)[:2000]) from None
    created = await ops.create_session(ctx, request, req)
    if created.get("warnings"):  # an online job needs its prompt: never start one without
        raise ApiError(
            422, "missing_baseline", "no baseline prompt: set prompt_learning.initial_prompt"
        )
    sid = created["session_id"]
    urls = {"system_id": sid, "proxy_url": created["proxy_url"]}
    job_meta = {
        **dict(meta or {}),
        **urls,
        f"{algo}_system_id": sid,
        f"{algo}_proxy_url": created["proxy_url"],
        "online_url": created["online_url"],
    }
    record = {
        "job_id": sid,
        "id": sid,
        "session_id": sid,
        "algorithm": algo,
        "kind": kind,
        "mode": "online",
        "status": "running",
        "created_at": time.time(),
        "metadata": job_meta,
        **urls,
    }
    engine = ctx.engine
    await ctx.writer.call(lambda: engine.update_optimizer(sid, {"job": record}))
    return record


async def _create(body: dict[str, Any], request: Request, ctx: ServerContext) -> Response:
    if online_mode(body):
        return json_response(await create_online_job(body, request, ctx))
    job = await jobs_of(ctx).create(body, ctx.base_url(request))
    return json_response(job.public(), status=201)


async def _list(ctx: ServerContext) -> Response:
    return json_response({"items": [j.public() for j in jobs_of(ctx).jobs.values()]})


async def _status(job_id: str, ctx: ServerContext) -> Response:
    return json_response(_view(jobs_of(ctx).get(job_id)))


async def _result(job_id: str, ctx: ServerContext) -> Response:
    job = jobs_of(ctx).get(job_id)
    if isinstance(job, Job):
        view, result = job.public(), job.result
    else:
        view, result = _view(job), job.get("result")
    return json_response({**view, "result": result})


async def _start(job_id: str, ctx: ServerContext) -> Response:
    return json_response(jobs_of(ctx).start(job_id).public())


async def _cancel(job_id: str, ctx: ServerContext) -> Response:
    return json_response((await jobs_of(ctx).cancel(job_id)).public())


def _add_routes(prefix: str) -> None:
    async def create(
        request: Request, ctx: Ctx, body: Annotated[dict[str, Any], Body()]
    ) -> Response:
        return await _create(body, request, ctx)

    async def list_jobs(ctx: Ctx) -> Response:
        return await _list(ctx)

    async def status(job_id: str, ctx: Ctx) -> Response:
        return await _status(job_id, ctx)

    async def result(job_id: str, ctx: Ctx) -> Response:
        return await _result(job_id, ctx)

    async def start(job_id: str, ctx: Ctx) -> Response:
        return await _start(job_id, ctx)

    async def cancel(job_id: str, ctx: Ctx) -> Response:
        return await _cancel(job_id, ctx)

    create.__doc__ = _CREATE_DOC
    list_jobs.__doc__ = "The jobs of this server run."
    status.__doc__ = "A job's status, phase and progress."
    result.__doc__ = "A job's status and result (best prompt, best score, Pareto archive)."
    start.__doc__ = "Start a created job."
    cancel.__doc__ = "Cancel a job."
    router.add_api_route(prefix, create, methods=["POST"], status_code=201)
    router.add_api_route(prefix, list_jobs, methods=["GET"])
    router.add_api_route(prefix + "/{job_id}", status, methods=["GET"])
    router.add_api_route(prefix + "/{job_id}/status", status, methods=["GET"])
    router.add_api_route(prefix + "/{job_id}/result", result, methods=["GET"])
    router.add_api_route(prefix + "/{job_id}/start", start, methods=["POST"])
    router.add_api_route(prefix + "/{job_id}/cancel", cancel, methods=["POST"])


for _prefix in JOB_PREFIXES:
    _add_routes(_prefix)
