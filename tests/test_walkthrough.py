"""The hosted Banking77 MIPRO-online walkthrough's flow, end to end against ``serve``.

The calls are the ones ``demos/mipro_banking77/run_online_demo.py`` (synth-ai)
makes, in its order and shapes, with only the URL changed (issue #22):

1. ``POST /api/prompt-learning/online/jobs`` with ``{"algorithm": "mipro",
   "config_body": {"prompt_learning": {..., "mipro": {"mode": "online", ...}}}}``
   (the script stops unless it gets 200 and a ``job_id``);
2. ``GET /api/prompt-learning/online/jobs/{job_id}?include_metadata=true``:
   the script stops unless ``metadata`` has ``mipro_system_id`` and
   ``mipro_proxy_url``;
3. per seed, ``POST {task_app}/rollout`` with ``inference_url =
   {proxy_url}/{rollout_id}``: the task app calls the proxy with its baseline;
4. ``POST .../mipro/systems/{system_id}/status`` ``{"status": "reward"}`` (the
   answer must carry ``candidate_id``), then ``{"status": "done"}``;
5. ``GET .../mipro/systems/{system_id}/state``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from synth_middleware.offline.container import (
    InProcessContainer,
    Outcome,
    RolloutContext,
    TaskDefinition,
    create_container_app,
)
from synth_middleware.server.background import BackgroundServer
from synth_middleware.testing import FakeOpenAIServer

SYNTH_KEY = "sk_live_walkthrough"
ENV_KEY = "env-walkthrough"
SYSTEM_PROMPT = "You are an expert banking assistant. Classify the customer query."
ROWS = [("I lost my card", "lost_or_stolen_card"), ("Where is my money?", "balance")] * 5


def _reply(body: dict[str, Any]) -> str:
    return "lost_or_stolen_card"


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply=_reply) as srv:
        yield srv


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, model: FakeOpenAIServer) -> Iterator[str]:
    db: Path = tmp_path_factory.mktemp("walkthrough") / "synth.db"
    with BackgroundServer(
        db_path=str(db), api_key=SYNTH_KEY, upstream_url=model.url, upstream_api_key="up"
    ) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def task_app() -> Iterator[str]:
    async def rollout(ctx: RolloutContext) -> Outcome:
        query, intent = ctx.instance
        data = await ctx.chat(
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Customer Query: {query}"},
            ]
        )
        said = (data["choices"][0]["message"]["content"] or "").strip()
        return Outcome(reward=1.0 if said == intent else 0.0, info={"expected": intent})

    task = TaskDefinition(name="banking77", splits={"train": ROWS}, rollout=rollout)
    # the task app calls the backend's proxy with the Synth key (its "inference" key)
    app = create_container_app(task, api_key=ENV_KEY, inference_api_key=SYNTH_KEY)
    with InProcessContainer(app) as c:
        yield c.url


def _config(task_app_url: str, train: list[int], val: list[int]) -> dict[str, Any]:
    """``build_mipro_online_config`` of the walkthrough script."""
    return {
        "prompt_learning": {
            "algorithm": "mipro",
            "task_app_id": "banking77",
            "task_app_url": task_app_url,
            "initial_prompt": {
                "id": "banking77_pattern",
                "name": "Banking77 Classification",
                "messages": [
                    {"role": "system", "order": 0, "pattern": SYSTEM_PROMPT},
                    {"role": "user", "order": 1, "pattern": "Customer Query: {query}"},
                ],
                "wildcards": {"query": "REQUIRED", "available_intents": "OPTIONAL"},
            },
            "policy": {
                "model": "gpt-4.1-nano",
                "provider": "openai",
                "inference_mode": "synth_hosted",
                "temperature": 0.0,
                "max_completion_tokens": 256,
            },
            "mipro": {
                "mode": "online",
                "bootstrap_train_seeds": train,
                "val_seeds": val,
                "online_pool": train,
                "online_proposer_mode": "inline",
                "online_proposer_min_rollouts": 20,
                "online_rollouts_per_candidate": 10,
                "proposer": {
                    "mode": "instruction_only",
                    "model": "gpt-4.1-mini",
                    "provider": "openai",
                    "temperature": 0.7,
                    "max_tokens": 512,
                    "generate_at_iterations": [0, 1, 2],
                    "instructions_per_batch": 2,
                },
            },
        }
    }


def test_the_walkthrough_runs_end_to_end(backend: str, task_app: str) -> None:
    headers = {"Authorization": f"Bearer {SYNTH_KEY}"}
    train, val = list(range(8)), [8, 9]

    # 1. create_job
    r = httpx.post(
        f"{backend}/api/prompt-learning/online/jobs",
        json={"algorithm": "mipro", "config_body": _config(task_app, train, val)},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200, r.text  # the script prints an error on anything else
    job_id = r.json()["job_id"]

    # 2. get_job_detail
    r = httpx.get(
        f"{backend}/api/prompt-learning/online/jobs/{job_id}",
        params={"include_events": False, "include_snapshot": False, "include_metadata": True},
        headers=headers,
    )
    r.raise_for_status()
    metadata = r.json().get("metadata", {})
    system_id, proxy_url = metadata.get("mipro_system_id"), metadata.get("mipro_proxy_url")
    assert system_id and proxy_url, metadata
    assert r.json()["status"] == "running"

    # 3-4. rollouts through the task app, rewards on the status route
    served: list[str] = []
    for seed in train:
        rollout_id = f"trace_rollout_{seed}_{uuid.uuid4().hex[:6]}"
        payload = {
            "trace_correlation_id": rollout_id,
            "env": {"seed": seed, "config": {"seed": seed, "split": "train"}},
            "policy": {
                "config": {"model": "gpt-4.1-nano", "inference_url": f"{proxy_url}/{rollout_id}"}
            },
        }
        resp = httpx.post(
            f"{task_app}/rollout", json=payload, headers={"X-API-Key": ENV_KEY}, timeout=120
        )
        resp.raise_for_status()
        body = resp.json()
        reward = (body.get("reward_info") or {}).get("outcome_reward")
        if reward is None:
            reward = (body.get("metrics") or {}).get("outcome_reward")
        status_url = f"{backend}/api/prompt-learning/online/mipro/systems/{system_id}/status"
        r = httpx.post(
            status_url,
            json={"rollout_id": rollout_id, "status": "reward", "reward": float(reward or 0.0)},
            headers=headers,
        )
        r.raise_for_status()
        candidate_id = r.json().get("candidate_id")
        assert candidate_id, "Backend must return candidate_id for MIPRO rollouts."
        served.append(candidate_id)
        r = httpx.post(status_url, json={"rollout_id": rollout_id, "status": "done"}, headers=headers)
        r.raise_for_status()

    # 5. get_system_state
    r = httpx.get(
        f"{backend}/api/prompt-learning/online/mipro/systems/{system_id}/state", headers=headers
    )
    r.raise_for_status()
    state = r.json()
    assert state["reward_count"] == len(train) and state["rollout_count"] == len(train)
    assert set(served) <= set(state["candidates"])
    assert state["best_candidate_id"] in state["candidates"]
