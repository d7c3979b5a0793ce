"""Offline jobs in the SDK: ``create_job``, ``start_job``, status, result (sync and async).

::

    client = SynthClient()
    job = client.create_job(config={"algorithm": "gepa",
                                    "container_url": "http://127.0.0.1:8102",
                                    "container_api_key": os.environ["ENVIRONMENT_API_KEY"]})
    client.start_job(job["id"])
    final = client.wait_for_job(job["id"], timeout=600)
    client.get_job_result(job["id"])["result"]["best_prompt"]

Routes: ``/api/prompt-learning/online/jobs`` (``POST``, ``GET /{id}``,
``POST /{id}/start``, ``POST /{id}/cancel``, ``GET /{id}/result``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from synth_middleware.errors import BackendError
from synth_middleware.offline.sdk._transport import Call, Transport

__all__ = ["TERMINAL_STATUSES", "AsyncJobsMixin", "JobsMixin"]

JOBS = "/api/prompt-learning/online/jobs"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _create_call(
    config: dict[str, Any] | None,
    algorithm: str | None,
    config_body: dict[str, Any] | None,
    auto_start: bool,
    metadata: dict[str, Any] | None,
) -> Call:
    if config is not None and config_body is not None:
        raise ValueError("pass config or config_body, not both")
    body_cfg = dict(config if config is not None else config_body or {})
    algo = algorithm or body_cfg.pop("algorithm", None)
    body_cfg.pop("algorithm", None)
    if algo not in ("gepa", "mipro"):
        raise ValueError('algorithm must be "gepa" or "mipro" (argument or config["algorithm"])')
    if not body_cfg.get("container_url") and not body_cfg.get("task_app_url"):
        raise ValueError("the config needs container_url")
    body: dict[str, Any] = {"algorithm": algo, "config_body": body_cfg}
    if auto_start:
        body["auto_start"] = True
    if metadata is not None:
        body["metadata"] = metadata
    return Call("POST", JOBS, json=body)


def _job_call(job_id: str, suffix: str = "", method: str = "GET") -> Call:
    return Call(method, f"{JOBS}/{quote(job_id, safe='')}{suffix}")


class JobsMixin:
    """Offline-job methods of :class:`~synth_middleware.offline.sdk.SynthClient`."""

    _transport: Transport

    def create_job(
        self,
        config: dict[str, Any] | None = None,
        *,
        algorithm: str | None = None,
        config_body: dict[str, Any] | None = None,
        auto_start: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a job from ``config`` (flat, with ``algorithm``) or ``algorithm`` +
        ``config_body``; returns the job (``id``, ``status: "created"``)."""
        call = _create_call(config, algorithm, config_body, auto_start, metadata)
        return self._transport.request(call)  # type: ignore[no-any-return]

    def start_job(self, job_id: str) -> dict[str, Any]:
        """Start a created job."""
        return self._transport.request(_job_call(job_id, "/start", "POST"))  # type: ignore[no-any-return]

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job's status, phase and progress."""
        return self._transport.request(_job_call(job_id))  # type: ignore[no-any-return]

    def get_job_result(self, job_id: str) -> dict[str, Any]:
        """The job with its ``result`` (best prompt, best score, Pareto archive)."""
        return self._transport.request(_job_call(job_id, "/result"))  # type: ignore[no-any-return]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        return self._transport.request(_job_call(job_id, "/cancel", "POST"))  # type: ignore[no-any-return]

    def wait_for_job(
        self, job_id: str, *, timeout: float = 600.0, poll: float = 0.5
    ) -> dict[str, Any]:
        """Poll until the job succeeded, failed or was cancelled; ``BackendError`` at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.get("status") in TERMINAL_STATUSES:
                return job
            if time.monotonic() >= deadline:
                raise BackendError(f"job {job_id} still {job.get('status')} after {timeout:g}s")
            time.sleep(poll)


class AsyncJobsMixin:
    """Offline-job methods of :class:`~synth_middleware.offline.sdk.AsyncSynthClient`."""

    _transport: Transport

    async def create_job(
        self,
        config: dict[str, Any] | None = None,
        *,
        algorithm: str | None = None,
        config_body: dict[str, Any] | None = None,
        auto_start: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Async :meth:`JobsMixin.create_job`."""
        call = _create_call(config, algorithm, config_body, auto_start, metadata)
        return await self._transport.arequest(call)  # type: ignore[no-any-return]

    async def start_job(self, job_id: str) -> dict[str, Any]:
        """Async :meth:`JobsMixin.start_job`."""
        return await self._transport.arequest(_job_call(job_id, "/start", "POST"))  # type: ignore[no-any-return]

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """Async :meth:`JobsMixin.get_job`."""
        return await self._transport.arequest(_job_call(job_id))  # type: ignore[no-any-return]

    async def get_job_result(self, job_id: str) -> dict[str, Any]:
        """Async :meth:`JobsMixin.get_job_result`."""
        return await self._transport.arequest(_job_call(job_id, "/result"))  # type: ignore[no-any-return]

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Async :meth:`JobsMixin.cancel_job`."""
        return await self._transport.arequest(_job_call(job_id, "/cancel", "POST"))  # type: ignore[no-any-return]

    async def wait_for_job(
        self, job_id: str, *, timeout: float = 600.0, poll: float = 0.5
    ) -> dict[str, Any]:
        """Async :meth:`JobsMixin.wait_for_job`."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if job.get("status") in TERMINAL_STATUSES:
                return job
            if time.monotonic() >= deadline:
                raise BackendError(f"job {job_id} still {job.get('status')} after {timeout:g}s")
            await asyncio.sleep(poll)
