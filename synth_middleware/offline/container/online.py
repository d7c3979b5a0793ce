"""Drive a container online against a session (Pattern A): the walkthrough's loop.

For each seed: a fresh rollout id, ``POST /rollout`` to the container with
``inference_url = {proxy_url}/{rollout_id}`` (the session's proxy picks a
candidate for that rollout and substitutes it, so the container only sees its
own baseline prompt), then the rollout's reward goes to the session with the
container's ``expected``/``predicted`` details as metadata; the session's
optimizer proposes new candidates from those rewards as they arrive::

    session = SynthClient().optimization.online.create(kind="mipro_online", ...)
    runner = OnlineRunner(AsyncContainerClient(url, key), session, model="gpt-4.1-nano")
    results = await runner.run(range(100), concurrency=4, on_result=print)

Works against ``synth-middleware serve`` and the hosted API alike (only the
SDK client's URL changes).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from synth_middleware.offline.container.client import (
    AsyncContainerClient,
    ContainerError,
    InvalidRolloutResponse,
    rollout_body,
)

__all__ = ["OnlineRolloutResult", "OnlineRunner"]


@dataclass(slots=True)
class OnlineRolloutResult:
    """One online rollout: its reward (``None`` when it failed, with ``error``)."""

    seed: int
    rollout_id: str
    reward: float | None
    candidate_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


class OnlineRunner:
    """Rollouts of one container through one online session's proxy.

    ``session`` is an SDK :class:`~synth_middleware.offline.sdk.OnlineSession` (it
    provides ``proxy_url`` and ``update_reward_async``). ``env_config`` goes
    to every rollout (e.g. ``{"split": "train"}``).
    """

    def __init__(
        self,
        container: AsyncContainerClient,
        session: Any,
        *,
        model: str | None = None,
        env_config: dict[str, Any] | None = None,
        proxy_url: str | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        url = proxy_url or getattr(session, "proxy_url", None)
        if not url:
            raise ValueError("the session has no proxy_url; pass proxy_url=")
        self.container = container
        self.session = session
        self.model = model
        self.env_config = dict(env_config or {})
        self.proxy_url = url.rstrip("/")
        self.timeout_seconds = timeout_seconds

    async def run_one(self, seed: int) -> OnlineRolloutResult:
        """One rollout and its reward."""
        rid = f"ro_{os.urandom(12).hex()}"
        started = time.perf_counter()
        body = rollout_body(
            seed=seed,
            inference_url=f"{self.proxy_url}/{rid}",
            model=self.model,
            trace_correlation_id=rid,
            env_config=self.env_config,
            timeout_seconds=self.timeout_seconds,
        )
        try:
            result = await self.container.rollout(body)
        except (ContainerError, InvalidRolloutResponse) as exc:
            return OnlineRolloutResult(
                seed,
                rid,
                None,
                error=f"{type(exc).__name__}: {exc}",
                seconds=time.perf_counter() - started,
            )
        meta: dict[str, Any] = {
            k: result.details[k] for k in ("expected", "predicted") if k in result.details
        }
        meta["seed"] = seed
        ack = await self.session.update_reward_async(
            reward_info={"score": result.reward},
            rollout_id=rid,
            metadata=meta,
            idempotency_key=f"{rid}:reward",
        )
        return OnlineRolloutResult(
            seed,
            rid,
            result.reward,
            candidate_id=(ack or {}).get("candidate_id"),
            details=result.details,
            seconds=time.perf_counter() - started,
        )

    async def run(
        self,
        seeds: Iterable[int],
        *,
        concurrency: int = 1,
        on_result: Callable[[OnlineRolloutResult], Any] | None = None,
    ) -> list[OnlineRolloutResult]:
        """Run ``seeds`` with at most ``concurrency`` rollouts in flight; ``on_result`` is
        called (in completion order) after each one. Results come back in seed order."""
        sem = asyncio.Semaphore(max(1, concurrency))
        seeds = list(seeds)

        async def one(seed: int) -> OnlineRolloutResult:
            async with sem:
                res = await self.run_one(seed)
            if on_result is not None:
                on_result(res)
            return res

        return list(await asyncio.gather(*(one(s) for s in seeds)))
