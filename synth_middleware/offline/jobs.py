"""Offline optimization jobs: the backend drives a container through the proxy.

The job service; ``synth-middleware serve`` answers its routes
(:mod:`synth_middleware.server.routes.jobs`, each under both
``/api/prompt-learning/online/jobs`` and ``/api/v1/offline/jobs``):

* ``POST ""``: create ``{algorithm: "mipro"|"gepa", config_body: {container_url,
  container_api_key?, ...}, auto_start?, metadata?}`` (a flat body with the
  config keys at the top level is accepted too; so is the hosted client's
  ``{kind: "gepa_offline"|"mipro_offline", config: {...}}``) -> the job (201).
  With ``mipro.mode = "online"`` (the Banking77 walkthrough) nothing runs
  here: an online session is created and the answer (200) is a job record
  with ``metadata.mipro_system_id`` / ``mipro_proxy_url``, which the caller
  drives through the proxy and the status route;
* ``POST /{job_id}/start``, ``POST /{job_id}/cancel``;
* ``GET /{job_id}`` (status), ``GET /{job_id}/result``, ``GET ""`` (list);
* candidates: ``GET /api/v1/offline/jobs/{job_id}/candidates/{candidate_id}``
  (the job id is its session id, so the candidate routes answer for it).

A job is an engine session (``session_id == job_id``) plus a task on the
server's event loop that runs the phases of the reference architecture:

1. **validating**: ``GET /health`` and ``GET /task_info`` of the container
   (an unreachable container is retried with exponential backoff; after
   ``max_retries`` the job fails); the baseline is ``initial_prompt`` if the
   config gives one, else the system message of the container's
   ``prompt_template``; when both exist they must match (else the job fails
   with ``pattern_mismatch``).
2. **initializing**: the session is created with the baseline; the baseline
   is evaluated on a minibatch, then ``initial_population`` optimizer rounds
   add the first candidates.
3. **evaluating / proposing**: every candidate still short of
   ``minibatch_size`` rewards is evaluated on the next train seeds, with at
   most ``max_concurrent`` rollouts in flight. Each rollout is a
   ``POST /rollout`` whose ``inference_url`` is this server's proxy for a
   fresh rollout id pinned to the candidate: the proxy substitutes the
   candidate, so the container only ever sees its own baseline. Then the
   session's optimizer (MIPRO or GEPA, the engine's own) proposes the next
   candidates from the traces. Until ``rollout_budget`` train rollouts were
   started, or two rounds in a row propose nothing.
4. **finalizing**: the ``final_candidates`` best candidates by train mean and
   the baseline are evaluated on the validation seeds; the best score, the
   best prompt and the Pareto archive (candidates no other finalist beats on
   every validation seed) go into the job's result.

The container is called with ``X-API-Key`` (``container_api_key`` or
``ENVIRONMENT_API_KEY``) and, when ``SYNTH_CONTAINER_SIGNING_KEY`` is set, an
``X-Synth-Container-Authorization`` token (the vendor's containers require
one); a synth-containers app (known by its ``/health``) gets the request shape
its strict model takes. While a rollout is in flight its proxy URL needs no
server key (:attr:`JobManager.in_flight`, which the server's auth consults): the container may hold only its model
provider's key.

Failures of one rollout do not stop the job: the container's 502 (its model
call failed), an invalid answer, a 4xx and a rollout past ``timeout_seconds``
(cancelled) are counted as ``failed`` rollouts with the reason kept in
``errors``; ``max_consecutive_failures`` in a row fail the job. The job
record is kept in the session's optimizer state (``optimizer.job``), so it
survives a restart (a job that was running is then reported ``failed``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synth_middleware._origins import container_key_for
from synth_middleware.engine import Engine
from synth_middleware.engine.config import SessionConfig, parse_session_config
from synth_middleware.engine.optimizers import OPTIMIZERS
from synth_middleware.engine.optimizers.base import RoundContext, RoundResult, traces_from_records
from synth_middleware.engine.proposer import ProposerFactory, scrub_secrets
from synth_middleware.errors import InvalidRequestError, NotFoundError
from synth_middleware.offline.container._paseto import ENV_SIGNING_KEY, signer_from_env
from synth_middleware.offline.container.client import (
    AsyncContainerClient,
    ContainerUnreachable,
    InvalidRolloutResponse,
    RolloutFailed,
    RolloutTimeout,
    container_dialect,
    rollout_body,
)
from synth_middleware.wire.prompts import prompt_text

__all__ = [
    "ALGORITHMS",
    "Job",
    "JobConfig",
    "JobFailed",
    "JobHost",
    "JobManager",
    "flat_config",
]

logger = logging.getLogger("synth_middleware.offline.jobs")

ALGORITHMS = {"mipro": "mipro_online", "gepa": "gepa_online"}
"""A job's ``algorithm`` -> the kind of the engine session it runs."""
_MAX_ERRORS_KEPT = 20
_T = TypeVar("_T")


def _new_id(prefix: str) -> str:
    # os.urandom, not the cheap _ids generator: a rollout id in a proxy URL is the
    # container's capability (see JobManager.in_flight), so it must not be guessable
    return f"{prefix}_{os.urandom(12).hex()}"


def _invalid(message: str, *, status: int = 422, code: str = "validation_error") -> Exception:
    # a BackendError with a status and a code: the server answers it as it answered
    # its own ApiError, {"error": {"code", "message"}} with that status
    return InvalidRequestError(message, status=status, code=code)


# Job-level keys; every other config key goes to the session (optimizer) config.
_JOB_KEYS = frozenset(
    {
        "algorithm",
        "container_url",
        "container_api_key",
        "task_app_url",
        "task_app_api_key",
        "model",
        "policy_model",
        "initial_prompt",
        "train_seeds",
        "train_size",
        "val_seeds",
        "val_size",
        "env_config",
        "rollout_budget",
        "max_concurrent",
        "minibatch_size",
        "initial_population",
        "max_candidates",
        "timeout_seconds",
        "max_retries",
        "retry_backoff",
        "max_consecutive_failures",
        "final_candidates",
        "proxy_base_url",
        "seed",
        "policy",
        "prompt_learning",
    }
)


class JobConfig(BaseModel):
    """The job-level part of ``config_body`` (the rest configures the optimizer session).

    ``train_seeds``/``val_seeds`` default to ``0..train_size-1`` and the
    ``val_size`` seeds after them. ``container_api_key`` defaults to the
    server's ``ENVIRONMENT_API_KEY`` when ``container_url``'s origin is listed in
    ``SYNTH_CONTAINER_ALLOWED_ORIGINS`` (else no key is sent).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    container_url: str = Field(min_length=1, max_length=2000)
    container_api_key: str | None = Field(None, repr=False)
    model: str | None = Field(None, max_length=200)
    initial_prompt: str | None = None
    train_seeds: list[int] | None = None
    train_size: int = Field(20, ge=1, le=1_000_000)
    val_seeds: list[int] | None = None
    val_size: int = Field(0, ge=0, le=1_000_000)
    env_config: dict[str, Any] = Field(default_factory=dict)
    rollout_budget: int = Field(100, ge=1, le=1_000_000)
    max_concurrent: int = Field(4, ge=1, le=256)
    minibatch_size: int = Field(5, ge=1, le=10_000)
    initial_population: int = Field(2, ge=0, le=100)
    max_candidates: int = Field(10, ge=1, le=1000)
    timeout_seconds: float = Field(120.0, gt=0, le=3600)
    max_retries: int = Field(3, ge=0, le=20)
    retry_backoff: float = Field(0.5, ge=0, le=60)
    max_consecutive_failures: int = Field(20, ge=1, le=100_000)
    final_candidates: int = Field(3, ge=1, le=100)
    proxy_base_url: str | None = Field(None, max_length=2000)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        out.setdefault("container_url", out.get("task_app_url"))
        out.setdefault("container_api_key", out.get("task_app_api_key"))
        if out.get("model") is None:
            policy = out.get("policy")
            model = out.get("policy_model")
            if model is None and isinstance(policy, Mapping):
                model = policy.get("model")
            out["model"] = model
        if isinstance(out.get("initial_prompt"), Mapping | list):
            out["initial_prompt"] = prompt_text(out["initial_prompt"]) or None
        return out

    @model_validator(mode="after")
    def _urls(self) -> JobConfig:
        if not self.container_url.startswith(("http://", "https://")):
            raise ValueError("container_url must be an http(s) URL")
        return self

    def seeds(self) -> tuple[list[int], list[int]]:
        """``(train_seeds, val_seeds)``."""
        train = list(self.train_seeds) if self.train_seeds else list(range(self.train_size))
        if self.val_seeds is not None:
            val = list(self.val_seeds)
        else:
            start = max(train) + 1 if train else 0
            val = list(range(start, start + self.val_size))
        return train, val


def flat_config(body: Mapping[str, Any]) -> dict[str, Any]:
    """A job request's config: ``config_body`` (also the hosted client's ``config``, a
    nested ``prompt_learning``, and ``overrides`` on top), or a flat body's own keys.

    Raises :class:`~synth_middleware.errors.InvalidRequestError` (422) when the config
    is not an object."""
    cfg = body.get("config_body")
    if cfg is None:
        cfg = body.get("config")  # the hosted client's offline.create(config=...)
    if cfg is None:
        cfg = {k: v for k, v in body.items() if k not in ("auto_start", "metadata", "overrides")}
    if not isinstance(cfg, Mapping):
        raise _invalid("config_body must be an object")
    flat = dict(cfg)
    nested = flat.get("prompt_learning")
    if isinstance(nested, Mapping):
        flat = {**{k: v for k, v in nested.items() if not isinstance(v, Mapping)}, **flat}
        for key in ("mipro", "gepa"):
            if isinstance(nested.get(key), Mapping):
                flat.setdefault(key, nested[key])
    overrides = body.get("overrides")
    if isinstance(overrides, Mapping):
        flat.update(overrides)
    return flat


@dataclass
class Job:
    """One job's in-memory state."""

    job_id: str
    kind: str
    config: JobConfig
    session_config: dict[str, Any]
    public_base: str
    metadata: dict[str, Any]
    status: str = "created"
    phase: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    rollouts: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    rounds: int = 0
    baseline_prompt: str | None = None
    result: dict[str, Any] | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> cid -> mean
    next_train: int = 0
    task: asyncio.Task[None] | None = None
    dialect: str | None = None  # the container's: "synth" or "synth-containers"

    @property
    def algorithm(self) -> str:
        """``mipro`` or ``gepa``."""
        return self.kind.split("_", 1)[0]

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (no keys)."""
        cfg = self.config.model_dump(exclude={"container_api_key"})
        cfg["container_api_key"] = "***" if self.config.container_api_key else None
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "id": self.job_id,
            "session_id": self.job_id,
            "algorithm": self.algorithm,
            "kind": self.kind,
            "status": self.status,
            "phase": self.phase,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "errors": self.errors[-_MAX_ERRORS_KEPT:],
            "progress": {
                "rollouts": self.rollouts,
                "failed_rollouts": self.failed,
                "rollout_budget": self.config.rollout_budget,
                "rounds": self.rounds,
            },
            "config": cfg,
            "session_config": self.session_config,
            "metadata": self.metadata,
            "baseline_prompt": self.baseline_prompt,
        }
        if self.result is not None:
            out.update(
                best_candidate_id=self.result.get("best_candidate_id"),
                best_score=self.result.get("best_score"),
                baseline_score=self.result.get("baseline_score"),
            )
        return out


class JobFailed(Exception):
    """Ends a job as failed with this message."""


class JobHost(Protocol):
    """What a job needs from the server that runs it: the engine, its single writer, and
    the proxy's and the reward route's bookkeeping (the server implements it)."""

    @property
    def engine(self) -> Engine:
        """The engine the job's session lives in (read directly; written via :meth:`write`)."""
        ...

    async def write(self, fn: Callable[[], _T]) -> _T:
        """Run the engine write ``fn()`` on the server's single writer."""
        ...

    def session_opened(self, session_id: str) -> None:
        """The job created its session (the server may skip its existence checks)."""
        ...

    def candidates_added(self, session_id: str) -> None:
        """New candidates: the proxy should serve them at once."""
        ...

    def pin_rollout(self, session_id: str, rollout_id: str, candidate_id: str) -> None:
        """The proxy serves ``candidate_id`` for ``rollout_id``."""
        ...

    def served_candidate(self, session_id: str, rollout_id: str) -> str | None:
        """The candidate the proxy served for ``rollout_id``, if it remembers one."""
        ...

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
        """Store a rollout's reward as the reward route does."""
        ...


class JobManager:
    """The offline jobs of one server.

    ``in_flight`` holds ``(session_id, rollout_id)`` of the rollouts a job waits for:
    the container calls the proxy for them with no server key (see
    :func:`synth_middleware.server.routes.jobs.job_rollout_call`).
    """

    def __init__(self, host: JobHost) -> None:
        self.host = host
        self.jobs: dict[str, Job] = {}
        self.proposers = ProposerFactory()
        self.in_flight: set[tuple[str, str]] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def create(self, body: Mapping[str, Any], public_base: str) -> Job:
        """Validate a create request, create the job's session record, return the job."""
        flat = flat_config(body)
        algo = str(body.get("algorithm") or flat.get("algorithm") or "").lower()
        kind_name = body.get("kind")
        if not algo and isinstance(kind_name, str):  # the hosted client: kind="gepa_offline"
            algo = {"gepa_offline": "gepa", "mipro_offline": "mipro"}.get(kind_name.lower(), "")
            if not algo:
                raise _invalid(
                    f'kind must be "gepa_offline" or "mipro_offline", not {kind_name!r:.60}'
                )
        if algo not in ALGORITHMS:
            raise _invalid(
                'algorithm must be "mipro" or "gepa" (or kind "mipro_offline" | "gepa_offline")'
            )
        kind = ALGORITHMS[algo]
        try:
            cfg = JobConfig.model_validate(flat)
        except ValidationError as exc:
            problems = "; ".join(
                f"config_body.{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                for e in exc.errors()
            )
            raise _invalid(problems[:2000]) from None
        session_cfg = {k: v for k, v in flat.items() if k not in _JOB_KEYS}
        session_cfg.update(
            online_optimizer_enabled=False,  # this job runs the rounds, not the background runner
            online_rollouts_per_candidate=cfg.minibatch_size,
        )
        try:
            parse_session_config(session_cfg, kind)
        except InvalidRequestError as exc:
            raise _invalid(str(exc)) from None
        metadata = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else {}
        job = Job(
            job_id=_new_id("job"),
            kind=kind,
            config=cfg,
            session_config=session_cfg,
            public_base=(cfg.proxy_base_url or public_base).rstrip("/"),
            metadata=dict(metadata or {}),
        )
        self.jobs[job.job_id] = job
        if body.get("auto_start"):
            self.start(job.job_id)
        return job

    def get(self, job_id: str) -> Job | dict[str, Any]:
        """The job (in memory), or its stored record (a job of an earlier server run)."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        try:
            state = self.host.engine.get_state(job_id)
        except (NotFoundError, InvalidRequestError):
            raise NotFoundError(f"unknown offline job {job_id!r}", code="job_not_found") from None
        record = (state.get("optimizer") or {}).get("job")
        if not isinstance(record, Mapping):
            raise NotFoundError(f"unknown offline job {job_id!r}", code="job_not_found")
        out = dict(record)
        if out.get("mode") == "online":  # an online job lives as long as its session
            status = state.get("status")
            out["status"] = {"cancelled": "cancelled", "completed": "succeeded"}.get(
                str(status), "running"
            )
            out["session_status"] = status
            return out
        if out.get("status") in ("created", "queued", "running"):
            out["status"] = "failed"
            out["error"] = "interrupted: the server stopped while the job was running"
        return out

    def start(self, job_id: str) -> Job:
        """Start a created job (idempotent for a job already running)."""
        job = self.jobs.get(job_id)
        if job is None:
            self.get(job_id)  # 404, or a finished job of an earlier run
            raise _invalid(f"job {job_id!r} is not startable", status=409, code="job_not_startable")
        if job.status == "created":
            job.status = "running"
            job.started_at = time.time()
            job.task = asyncio.get_running_loop().create_task(self._run(job))
        elif job.status != "running":
            raise _invalid(
                f"job {job_id!r} is already {job.status}", status=409, code="job_finished"
            )
        return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job (a created job is cancelled at once; a running one stops its rollouts)."""
        job = self.jobs.get(job_id)
        if job is None:
            self.get(job_id)
            raise _invalid(f"job {job_id!r} is not running", status=409, code="job_finished")
        if job.status == "created":
            job.status = "cancelled"
            job.finished_at = time.time()
        elif job.task is not None and not job.task.done():
            job.task.cancel()
            try:
                await job.task
            except asyncio.CancelledError:
                pass
        return job

    async def shutdown(self) -> None:
        """Cancel running jobs (server shutdown)."""
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # -- the run ---------------------------------------------------------------------

    async def _persist(self, job: Job) -> None:
        record = job.public()
        if job.result is not None:
            record["result"] = job.result
        try:
            await self.host.write(
                lambda: self.host.engine.update_optimizer(job.job_id, {"job": record})
            )
        except NotFoundError:
            pass  # the session does not exist yet (failed during validation)
        except Exception as exc:  # storage trouble: the in-memory job is still right
            logger.warning("offline job %s: could not store its record: %s", job.job_id, exc)

    async def _run(self, job: Job) -> None:
        cfg = job.config
        key = cfg.container_api_key or container_key_for(cfg.container_url)
        try:  # SYNTH_CONTAINER_SIGNING_KEY: the vendor's containers require its tokens
            signer = signer_from_env()
        except (ValueError, RuntimeError) as exc:
            job.status, job.error = "failed", f"{ENV_SIGNING_KEY}: {exc}"
            job.finished_at = time.time()
            await self._persist(job)
            return
        client = AsyncContainerClient(
            cfg.container_url,
            key,
            timeout=cfg.timeout_seconds + 5.0,
            retries=cfg.max_retries,
            backoff=cfg.retry_backoff,
            token_signer=signer,
        )
        try:
            await self._phases(job, client)
            job.status = "succeeded"
        except asyncio.CancelledError:
            job.status = "cancelled"
            job.finished_at = time.time()
            await asyncio.shield(self._persist(job))
            raise
        except ContainerUnreachable as exc:
            job.status, job.error = "failed", str(exc)
        except JobFailed as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:
            logger.exception("offline job %s failed", job.job_id)
            job.status = "failed"
            job.error = scrub_secrets(f"{type(exc).__name__}: {exc}")[:500]
        finally:
            await client.aclose()
        job.finished_at = time.time()
        job.phase = None
        await self._persist(job)

    async def _phases(self, job: Job, client: AsyncContainerClient) -> None:
        cfg = job.config
        host = self.host
        engine = host.engine
        rng = random.Random(cfg.seed)

        # 1. pattern validation
        job.phase = "validating"
        health = await client.health()
        if job.dialect is None:
            job.dialect = container_dialect(health)
        info = await client.task_info()
        train, val = cfg.seeds()
        _check_seeds(info, cfg, train, val)
        job.baseline_prompt = _baseline(cfg.initial_prompt, info)

        # 2. population initialisation
        job.phase = "initializing"
        sid = job.job_id
        await host.write(
            lambda: engine.ensure_session(
                sid, baseline=job.baseline_prompt, kind=job.kind, config=job.session_config
            )
        )
        host.session_opened(sid)
        await self._persist(job)
        base_id = engine.get_state(sid)["baseline_candidate_id"]
        assert base_id is not None
        await self._evaluate(job, client, [base_id], train)
        for _ in range(cfg.initial_population):
            if not await self._round(job, rng):
                break

        # 3. evaluation, selection and mutation
        idle = 0
        while job.rollouts < cfg.rollout_budget:
            job.phase = "evaluating"
            pending = self._pending(job)
            if pending:
                await self._evaluate(job, client, pending, train)
                idle = 0
                await self._persist(job)
                continue
            if self._candidate_count(job) >= cfg.max_candidates:
                break
            job.phase = "proposing"
            if await self._round(job, rng):
                idle = 0
            else:
                idle += 1
                if idle >= 2:
                    break

        # 4. completion
        job.phase = "finalizing"
        job.result = await self._finalize(job, client, val)

    # -- helpers ---------------------------------------------------------------------

    def _candidates(self, job: Job) -> list[Mapping[str, Any]]:
        return list(self.host.engine.get_state(job.job_id)["candidates"])

    def _candidate_count(self, job: Job) -> int:
        return sum(1 for c in self._candidates(job) if not c.get("is_baseline"))

    def _pending(self, job: Job) -> list[str]:
        n = job.config.minibatch_size
        return [
            c["candidate_id"]
            for c in self._candidates(job)
            if c.get("status", "active") == "active" and int(c.get("reward_count") or 0) < n
        ]

    async def _round(self, job: Job, rng: random.Random) -> bool:
        """One optimizer round; True when it added a candidate."""
        engine, sid = self.host.engine, job.job_id
        job.rounds += 1
        proposers = self.proposers

        def propose() -> tuple[RoundResult, SessionConfig]:
            st = engine.session_state(sid)
            scfg = parse_session_config(st.config, st.kind)
            records = engine.rollout_records(sid, limit=min(scfg.online_history_rollouts, 10_000))
            rctx = RoundContext(
                state=st,
                config=scfg,
                decision=st.policy(),
                traces=traces_from_records(records),
                proposer=proposers.for_config(scfg),
                rng=rng,
                pool=st.optimizer.get("pool") or {},
            )
            return OPTIMIZERS[job.kind]().propose(rctx), scfg

        result, _ = await asyncio.to_thread(propose)
        if result.error is not None:
            job.errors.append(
                scrub_secrets(f"proposer: {type(result.error).__name__}: {result.error}")[:300]
            )
        added = False
        for p in result.proposals:
            await self.host.write(
                functools.partial(
                    engine.add_candidate,
                    sid,
                    p.content,
                    payload=p.payload,
                    parent_id=p.parent_id,
                    metadata=p.metadata,
                )
            )
            added = True
        if added:
            self.host.candidates_added(sid)  # serve the new candidates at once
        if result.pool is not None:
            pool = result.pool
            await self.host.write(lambda: engine.update_optimizer(sid, {"pool": pool}))
        return added

    async def _evaluate(
        self,
        job: Job,
        client: AsyncContainerClient,
        candidate_ids: Sequence[str],
        train: Sequence[int],
    ) -> None:
        """Bring each candidate to ``minibatch_size`` rewards on the next train seeds."""
        cfg = job.config
        state = {c["candidate_id"]: c for c in self._candidates(job)}
        work: list[tuple[str, int]] = []
        for cid in candidate_ids:
            have = int((state.get(cid) or {}).get("reward_count") or 0)
            for _ in range(max(0, cfg.minibatch_size - have)):
                if job.rollouts + len(work) >= cfg.rollout_budget:
                    break
                work.append((cid, train[job.next_train % len(train)]))
                job.next_train += 1
        await self._run_rollouts(job, client, work, split="train")

    async def _run_rollouts(
        self,
        job: Job,
        client: AsyncContainerClient,
        work: Sequence[tuple[str, int]],
        *,
        split: str,
        count: bool = True,
    ) -> dict[tuple[str, int], float]:
        sem = asyncio.Semaphore(job.config.max_concurrent)
        out: dict[tuple[str, int], float] = {}

        async def one(cid: str, seed: int) -> None:
            async with sem:
                reward = await self._rollout(job, client, cid, seed, split)
            if reward is not None:
                out[(cid, seed)] = reward

        if count:
            job.rollouts += len(work)
        tasks = [asyncio.create_task(one(cid, seed)) for cid, seed in work]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return out

    async def _rollout(
        self, job: Job, client: AsyncContainerClient, cid: str, seed: int, split: str
    ) -> float | None:
        """One rollout through the proxy pinned to ``cid``; the reward, or None if it failed."""
        sid = job.job_id
        rid = _new_id("ro")
        self.host.pin_rollout(sid, rid, cid)  # the proxy serves this candidate for this rollout
        in_flight = self.in_flight
        in_flight.add((sid, rid))  # the container may call the proxy for it without our key
        try:
            return await self._rollout_in_flight(job, client, cid, seed, split, rid)
        finally:
            in_flight.discard((sid, rid))

    async def _rollout_in_flight(
        self, job: Job, client: AsyncContainerClient, cid: str, seed: int, split: str, rid: str
    ) -> float | None:
        cfg, host, sid = job.config, self.host, job.job_id
        env_config = dict(cfg.env_config)  # val seeds are seeds of the same container split
        body = rollout_body(
            seed=seed,
            inference_url=f"{job.public_base}/api/v1/online/sessions/{sid}/proxy/{rid}",
            model=cfg.model,
            trace_correlation_id=rid,
            env_config=env_config,
            timeout_seconds=cfg.timeout_seconds,
            policy_id=cid,
            dialect=job.dialect or "synth",
        )
        try:
            result = await asyncio.wait_for(client.rollout(body), cfg.timeout_seconds)
        except (RolloutFailed, RolloutTimeout, InvalidRolloutResponse, TimeoutError) as exc:
            self._failure(job, seed, exc)
            return None
        job.consecutive_failures = 0
        served = host.served_candidate(sid, rid)
        if served is not None and served != cid:  # the proxy could not serve the pinned one
            job.errors.append(f"seed {seed}: rollout {rid} was served {served}, not {cid}")
            cid = served
        meta: dict[str, Any] = {"split": split, "seed": seed, "job_id": sid}
        for key in ("expected", "predicted", "correct"):
            if key in result.details:
                meta[key] = result.details[key]
        await host.record_reward(
            sid,
            value=result.reward,
            rollout_id=rid,
            candidate_id=cid,
            idempotency_key=f"{rid}:reward",
            metadata=meta,
        )
        return result.reward

    def _failure(self, job: Job, seed: int, exc: BaseException) -> None:
        job.failed += 1
        job.consecutive_failures += 1
        if isinstance(exc, TimeoutError):
            reason = f"rollout timed out after {job.config.timeout_seconds:g}s (cancelled)"
        else:
            reason = str(exc) or type(exc).__name__
        job.errors.append(f"seed {seed}: {type(exc).__name__}: {reason}"[:300])
        del job.errors[:-_MAX_ERRORS_KEPT]
        if job.consecutive_failures >= job.config.max_consecutive_failures:
            raise JobFailed(
                f"{job.consecutive_failures} rollouts failed in a row; the last: {reason}"[:500]
            )

    async def _finalize(
        self, job: Job, client: AsyncContainerClient, val: Sequence[int]
    ) -> dict[str, Any]:
        cfg, engine, sid = job.config, self.host.engine, job.job_id
        state = engine.get_state(sid)
        base_id = state["baseline_candidate_id"]
        cands = [c for c in self._candidates(job) if int(c.get("reward_count") or 0) > 0]
        ranked = sorted(
            cands, key=lambda c: (-(c.get("avg_reward") or 0.0), not c.get("is_baseline"))
        )
        finalists = [c["candidate_id"] for c in ranked[: cfg.final_candidates]]
        if base_id is not None and base_id not in finalists:
            finalists.append(base_id)
        train_means = {c["candidate_id"]: c.get("avg_reward") for c in cands}
        instance: dict[str, dict[int, float]] = {cid: {} for cid in finalists}
        if val:
            work = [(cid, seed) for cid in finalists for seed in val]
            got = await self._run_rollouts(job, client, work, split="val", count=False)
            for (cid, seed), reward in got.items():
                instance[cid][seed] = reward
        if val:
            scores = {
                cid: (math.fsum(v.values()) / len(v) if v else None) for cid, v in instance.items()
            }
        else:
            scores = {cid: train_means.get(cid) for cid in finalists}
        scored = [cid for cid in finalists if scores.get(cid) is not None]
        if not scored:
            raise JobFailed("no candidate has a score (every evaluation rollout failed)")
        best = max(scored, key=lambda cid: (scores[cid], cid == base_id))
        front = _pareto(scored, instance, val) if val else [best]
        archive = []
        for cid in scored:
            item = engine.get_candidate(cid)
            archive.append(
                {
                    "candidate_id": cid,
                    "score": scores[cid],
                    "train_score": train_means.get(cid),
                    "is_baseline": cid == base_id,
                    "on_front": cid in front,
                    "instance_scores": {str(s): r for s, r in sorted(instance[cid].items())},
                    "prompt": item.get("candidate_content"),
                    "payload": item.get("artifact_payload"),
                }
            )
        best_item = engine.get_candidate(best)
        return {
            "best_candidate_id": best,
            "best_score": scores[best],
            "baseline_candidate_id": base_id,
            "baseline_score": scores.get(base_id) if base_id else None,
            "best_prompt": best_item.get("candidate_content"),
            "best_payload": best_item.get("artifact_payload"),
            "score_split": "val" if val else "train",
            "pareto_archive": [a for a in archive if a["on_front"]],
            "finalists": archive,
            "candidates": [
                {
                    "candidate_id": c["candidate_id"],
                    "avg_reward": c.get("avg_reward"),
                    "rollout_count": c.get("reward_count"),
                    "status": c.get("status"),
                    "is_baseline": bool(c.get("is_baseline")),
                }
                for c in self._candidates(job)
            ],
        }


def _pareto(
    cids: Sequence[str], instance: Mapping[str, Mapping[int, float]], seeds: Sequence[int]
) -> list[str]:
    """Candidates no other candidate matches or beats on every seed and beats on one."""
    front = []
    for a in cids:
        dominated = False
        for b in cids:
            if a == b:
                continue
            common = [s for s in seeds if s in instance[a] and s in instance[b]]
            if not common:
                continue
            ge = all(instance[b][s] >= instance[a][s] for s in common)
            gt = any(instance[b][s] > instance[a][s] for s in common)
            if ge and gt:
                dominated = True
                break
        if not dominated:
            front.append(a)
    return front


def _template_system(info: Any) -> str | None:
    if not isinstance(info, Mapping):
        return None
    template = info.get("prompt_template") or info.get("baseline_messages")
    if isinstance(template, list):
        template = {"messages": template}
    return prompt_text(template) if isinstance(template, Mapping) else None


def _baseline(initial: str | None, info: Any) -> str:
    """The baseline prompt; ``pattern_mismatch`` when the config and the container disagree."""
    theirs = _template_system(info)
    if initial is not None and theirs is not None:
        if " ".join(initial.split()) != " ".join(theirs.split()):
            raise JobFailed(
                "pattern_mismatch: the config's initial_prompt is not the container's baseline "
                "system prompt (GET /task_info prompt_template), so the proxy could not "
                "substitute candidates for it"
            )
        return initial
    if initial is not None:
        return initial
    if theirs is not None:
        return theirs
    raise JobFailed(
        "no baseline prompt: set config_body.initial_prompt, or serve prompt_template in the "
        "container's /task_info"
    )


def _check_seeds(info: Any, cfg: JobConfig, train: Sequence[int], val: Sequence[int]) -> None:
    dataset = info.get("dataset") if isinstance(info, Mapping) else None
    sizes = dataset.get("sizes") if isinstance(dataset, Mapping) else None
    split = str(cfg.env_config.get("split") or (dataset or {}).get("default_split") or "train")
    size = sizes.get(split) if isinstance(sizes, Mapping) else None
    if not isinstance(size, int):
        return
    bad = [s for s in (*train, *val) if not 0 <= s < size]
    if bad:
        raise JobFailed(
            f"seeds {bad[:5]} are outside the container's {split!r} split (0..{size - 1}); "
            "lower train_size/val_size or pass train_seeds/val_seeds"
        )
