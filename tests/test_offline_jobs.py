"""Offline jobs end to end on a small task: the server drives a container through its proxy,
with an unreachable container, a container that answers garbage, model failures, timeouts
and a wrong baseline; plus the online loop (Pattern A). The container never sees a candidate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from synth_middleware.engine import Engine, SqliteStore
from synth_middleware.offline.container import (
    AsyncContainerClient,
    InProcessContainer,
    InProcessServer,
    OnlineRunner,
    Outcome,
    RolloutContext,
    TaskDefinition,
    create_container_app,
)
from synth_middleware.offline.sdk import AsyncSynthClient, SynthClient
from synth_middleware.server import create_app
from synth_middleware.testing import FakeOpenAIServer

BASELINE = "Answer in one word."
SECRET = "You are an EXPERT. Answer in one word."
KEY = "job-test-key"
ROWS = [(f"q{i}", f"a{i}") for i in range(8)] + [("fail-me", "x"), ("slow", "y")]


def _reply(body: dict[str, Any]) -> str:
    msgs = body["messages"]
    system = next((m["content"] for m in msgs if m["role"] == "system"), None)
    if system is None:  # a proposer request
        return f"Here is a better one:\n```\n{SECRET}\n```"
    question = msgs[-1]["content"]
    if question == "fail-me":
        raise RuntimeError("the model is down for this one")
    return question.replace("q", "a") if "EXPERT" in system else "dunno"


class Recorder:
    """What the container received and what it sent to the model."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.sent: list[str] = []


def _task(rec: Recorder) -> TaskDefinition:
    async def rollout(ctx: RolloutContext) -> Outcome:
        rec.bodies.append(ctx.request.model_dump_json())
        question, answer = ctx.instance
        if question == "slow":
            await asyncio.sleep(3)
        messages = [{"role": "system", "content": BASELINE}, {"role": "user", "content": question}]
        rec.sent.append(json.dumps(messages))
        data = await ctx.chat(messages)
        said = (data["choices"][0]["message"]["content"] or "").strip()
        reward = 1.0 if said == answer else 0.0
        return Outcome(reward=reward, info={"expected": answer, "predicted": said})

    return TaskDefinition(
        name="toy",
        splits={"train": ROWS},
        rollout=rollout,
        prompt_template={"messages": [{"role": "system", "pattern": BASELINE}]},
    )


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply=_reply) as srv:
        yield srv


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def container(recorder: Recorder) -> Iterator[InProcessContainer]:
    app = create_container_app(_task(recorder), api_key=KEY, rollout_timeout=10)
    with InProcessContainer(app) as c:
        yield c


@pytest.fixture(scope="module")
def backend(
    tmp_path_factory: pytest.TempPathFactory, model: FakeOpenAIServer
) -> Iterator[InProcessServer]:
    db: Path = tmp_path_factory.mktemp("jobs") / "synth.db"
    engine = Engine(SqliteStore(str(db)))
    app = create_app(engine, upstream_url=model.url, upstream_api_key="upstream-key")
    with InProcessServer(app, lifespan="on", name="backend") as srv:
        yield srv
    engine.close()


def _config(container_url: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "container_url": container_url,
        "container_api_key": KEY,
        "model": "fake-model",
        "train_seeds": [0, 1, 2, 3, 4, 5],
        "val_seeds": [6, 7],
        "minibatch_size": 3,
        "rollout_budget": 20,
        "max_concurrent": 3,
        "initial_population": 1,
        "proposer_model": "fake-proposer",
        "timeout_seconds": 5,
    }
    cfg.update(extra)
    return cfg


def _run(client: SynthClient, algorithm: str, cfg: dict[str, Any]) -> dict[str, Any]:
    job = client.create_job(config={"algorithm": algorithm, **cfg})
    assert job["status"] == "created" and job["config"]["container_api_key"] == "***"
    client.start_job(job["id"])
    final = client.wait_for_job(job["id"], timeout=60, poll=0.05)
    return {**final, "result": client.get_job_result(job["id"])["result"]}


@pytest.mark.parametrize("algorithm", ["gepa", "mipro"])
def test_job_finds_the_better_prompt(
    backend: InProcessServer,
    container: InProcessContainer,
    model: FakeOpenAIServer,
    recorder: Recorder,
    algorithm: str,
) -> None:
    proposer_url = model.url
    with SynthClient(base_url=backend.url) as client:
        done = _run(client, algorithm, _config(container.url, proposer_url=proposer_url))
        assert done["status"] == "succeeded", done
        result = done["result"]
        assert result["best_prompt"] is not None and "EXPERT" in result["best_prompt"]
        assert result["best_score"] == 1.0 and result["baseline_score"] == 0.0
        assert result["score_split"] == "val"
        front = result["pareto_archive"]
        assert result["best_candidate_id"] in [a["candidate_id"] for a in front]
        assert all(a["instance_scores"] == {"6": 1.0, "7": 1.0} for a in front)
        assert not any(a["is_baseline"] for a in front)
        assert done["progress"]["rollouts"] <= 20
        # the candidate routes answer for the job (its id is the session id)
        cid = result["best_candidate_id"]
        item = httpx.get(f"{backend.url}/api/v1/offline/jobs/{done['id']}/candidates/{cid}")
        assert item.status_code == 200 and "EXPERT" in item.json()["candidate_content"]
        alias = httpx.get(f"{backend.url}/api/v1/offline/jobs/{done['id']}")
        assert alias.json()["status"] == "succeeded"
    # the container only ever held the baseline; the model saw the candidate
    assert recorder.sent and not any("EXPERT" in s for s in recorder.sent + recorder.bodies)
    assert any(
        m["content"] == SECRET
        for r in model.requests
        for m in r["messages"]
        if m["role"] == "system"
    )
    assert not any("upstream-key" in b or KEY in b for b in recorder.bodies)


def test_model_failures_and_timeouts_fail_rollouts_not_the_job(
    backend: InProcessServer, container: InProcessContainer, model: FakeOpenAIServer
) -> None:
    cfg = _config(
        container.url,
        proposer_url=model.url,
        train_seeds=[0, 8, 9, 1],  # 8: the model fails (502); 9: the rollout is too slow
        val_seeds=[2],
        timeout_seconds=1,
        minibatch_size=2,
        rollout_budget=8,
    )
    with SynthClient(base_url=backend.url) as client:
        done = _run(client, "gepa", cfg)
    assert done["status"] == "succeeded", done
    assert done["progress"]["failed_rollouts"] >= 2
    errors = " ".join(done["errors"])
    assert "502" in errors and "llm_error" in errors
    assert "timed out" in errors


def test_unreachable_container_fails_the_job_after_retries(backend: InProcessServer) -> None:
    cfg = _config("http://127.0.0.1:9", max_retries=2, retry_backoff=0.01)
    with SynthClient(base_url=backend.url) as client:
        done = _run(client, "mipro", cfg)
    assert done["status"] == "failed"
    assert "cannot reach the container" in done["error"] and "3 attempt" in done["error"]


@pytest.fixture(scope="module")
def garbage() -> Iterator[InProcessServer]:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"healthy": True})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(
            {"prompt_template": {"messages": [{"role": "system", "pattern": BASELINE}]}}
        )

    async def rollout(request: Request) -> JSONResponse:
        return JSONResponse({"trajectories": "lots", "score": "great"})

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/task_info", info),
            Route("/rollout", rollout, methods=["POST"]),
        ]
    )
    with InProcessServer(app) as srv:
        yield srv


def test_garbage_answers_are_failed_rollouts(
    backend: InProcessServer, garbage: InProcessServer
) -> None:
    cfg = _config(garbage.url, max_consecutive_failures=4)
    with SynthClient(base_url=backend.url) as client:
        done = _run(client, "gepa", cfg)
    assert done["status"] == "failed"
    assert "4 rollouts failed in a row" in done["error"]
    assert "no outcome reward" in done["error"]


def test_wrong_baseline_is_a_pattern_mismatch(
    backend: InProcessServer, container: InProcessContainer
) -> None:
    cfg = _config(container.url, initial_prompt="Something else entirely.")
    with SynthClient(base_url=backend.url) as client:
        done = _run(client, "mipro", cfg)
    assert done["status"] == "failed" and "pattern_mismatch" in done["error"]


def test_bad_job_requests(backend: InProcessServer, container: InProcessContainer) -> None:
    url = f"{backend.url}/api/prompt-learning/online/jobs"
    r = httpx.post(url, json={"algorithm": "simulated-annealing", "config_body": {}})
    assert r.status_code == 422
    r = httpx.post(url, json={"algorithm": "gepa", "config_body": {"container_url": "nope"}})
    assert r.status_code == 422 and "container_url" in r.json()["error"]["message"]
    r = httpx.post(
        url, json={"algorithm": "gepa", "config_body": _config(container.url, minibatch_size=0)}
    )
    assert r.status_code == 422
    assert httpx.get(f"{url}/job_nope").status_code == 404
    assert httpx.post(f"{url}/job_nope/start").status_code == 404
    with SynthClient(base_url=backend.url) as client:
        with pytest.raises(ValueError):
            client.create_job(config={"container_url": "http://x"})
        job = client.create_job(config={"algorithm": "gepa", **_config(container.url)})
        assert client.cancel_job(job["id"])["status"] == "cancelled"
        assert httpx.post(f"{url}/{job['id']}/start").status_code == 409


async def test_async_sdk_and_cancel(
    backend: InProcessServer, container: InProcessContainer, model: FakeOpenAIServer
) -> None:
    async with AsyncSynthClient(base_url=backend.url) as client:
        cfg = _config(container.url, proposer_url=model.url, train_seeds=[9], rollout_budget=50)
        job = await client.create_job(algorithm="mipro", config_body=cfg, auto_start=True)
        assert (await client.get_job(job["id"]))["status"] == "running"
        cancelled = await client.cancel_job(job["id"])
        assert cancelled["status"] == "cancelled"
        final = await client.wait_for_job(job["id"], timeout=5, poll=0.05)
        assert final["status"] == "cancelled"


async def test_online_loop_through_the_proxy(
    backend: InProcessServer,
    container: InProcessContainer,
    model: FakeOpenAIServer,
    recorder: Recorder,
) -> None:
    async with AsyncSynthClient(base_url=backend.url) as client:
        session = await client.optimization.online.create(kind="mipro_online", baseline=BASELINE)
        await session.add_candidate_async(SECRET)
        runner = OnlineRunner(AsyncContainerClient(container.url, KEY), session, model="m")
        seen: list[float | None] = []
        results = await runner.run(
            range(8), concurrency=4, on_result=lambda r: seen.append(r.reward)
        )
        assert len(seen) == 8 and all(r.error is None for r in results)
        state = await session.get_status_async()
        assert state["reward_count"] == 8
        by_cid = {c["candidate_id"]: c for c in state["candidates"]}
        for r in results:
            assert r.candidate_id in by_cid
            expect = 0.0 if by_cid[r.candidate_id]["is_baseline"] else 1.0
            assert r.reward == expect
        failed = await runner.run_one(8)  # the model fails: no reward, an error
        assert failed.reward is None and failed.error and "502" in failed.error
    assert not any("EXPERT" in s for s in recorder.sent + recorder.bodies)


def test_container_with_only_its_provider_key_reaches_the_proxy(
    tmp_path: Path, model: FakeOpenAIServer, recorder: Recorder
) -> None:
    """The server has a key; the container holds only its model provider's key and
    sends it to the proxy URL it was handed: its rollouts go through (issue #22),
    while the same call for a rollout no job has in flight is refused."""
    app = create_container_app(
        _task(recorder), api_key=KEY, inference_api_key="sk-provider-only", rollout_timeout=10
    )
    engine = Engine(SqliteStore(str(tmp_path / "k.db")))
    server_app = create_app(
        engine, api_key="server-key", upstream_url=model.url, upstream_api_key="upstream-key"
    )
    with (
        InProcessContainer(app) as container,
        InProcessServer(server_app, lifespan="on", name="keyed") as srv,
        SynthClient(api_key="server-key", base_url=srv.url) as client,
    ):
        cfg = _config(container.url, proposer_url=model.url, rollout_budget=8, val_seeds=[6])
        done = _run(client, "gepa", cfg)
        assert done["status"] == "succeeded", done
        assert done["progress"]["failed_rollouts"] == 0, done["errors"]
        stray = httpx.post(
            f"{srv.url}/api/v1/online/sessions/{done['id']}/proxy/ro_guess/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-provider-only"},
        )
        assert stray.status_code == 401
    engine.close()
