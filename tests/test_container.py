"""The container (task app) contract: routes, auth, bad requests, timeouts, LLM failures,
both reward shapes, the in-process runner and the backend-side client."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from synth_middleware.offline.container import (
    ENV_API_KEY,
    ContainerClient,
    ContainerUnreachable,
    InProcessContainer,
    InvalidRolloutResponse,
    LLMError,
    Outcome,
    RolloutContext,
    RolloutFailed,
    RolloutTimeout,
    TaskDefinition,
    chat_completions_url,
    create_container_app,
    ensure_environment_api_key,
    parse_rollout_response,
    rollout_body,
)
from synth_middleware.testing import FakeOpenAIServer

KEY = "test-env-key"
ROWS = [("2+2?", "4"), ("capital of France?", "Paris"), ("slow", "slow")]


async def _rollout(ctx: RolloutContext) -> Outcome:
    question, answer = ctx.instance
    if question == "slow":
        await asyncio.sleep(5)
    data = await ctx.chat(
        [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": question},
        ]
    )
    said = data["choices"][0]["message"]["content"] or ""
    reward = 1.0 if said.strip() == answer else 0.0
    return Outcome(reward=reward, obs={"q": question}, info={"expected": answer, "predicted": said})


def _task() -> TaskDefinition:
    return TaskDefinition(
        name="toy",
        splits={"train": ROWS, "test": ROWS[:1]},
        rollout=_rollout,
        prompt_template={"messages": [{"role": "system", "pattern": "Answer in one word."}]},
        instance_info=lambda split, seed, row: {"question": row[0]},
    )


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAIServer]:
    answers = {"2+2?": "4", "capital of France?": "Lyon"}

    def reply(body: dict[str, Any]) -> str:
        return answers.get(body["messages"][-1]["content"], "?")

    with FakeOpenAIServer(reply=reply) as srv:
        yield srv


@pytest.fixture(scope="module")
def container() -> Iterator[InProcessContainer]:
    app = create_container_app(_task(), api_key=KEY, rollout_timeout=0.5)
    with InProcessContainer(app) as c:
        yield c


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"x-api-key": KEY} if headers is None else headers
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/rollout", content=content, headers=h, timeout=10)


def test_health_needs_no_key(container: InProcessContainer) -> None:
    r = httpx.get(f"{container.url}/health")
    assert r.status_code == 200
    assert r.json()["healthy"] is True


def test_task_info_and_seeds(container: InProcessContainer) -> None:
    h = {"x-api-key": KEY}
    info = httpx.get(f"{container.url}/task_info", headers=h).json()
    assert info["task"]["id"] == "toy"
    assert info["dataset"]["sizes"] == {"train": 3, "test": 1}
    assert info["prompt_template"]["messages"][0]["pattern"] == "Answer in one word."
    one = httpx.get(f"{container.url}/task_info?seed=1", headers=h).json()
    assert one["task_metadata"] == {"seed": 1, "split": "train", "question": "capital of France?"}
    many = httpx.get(f"{container.url}/task_info?seeds=0&seeds=2", headers=h).json()
    assert [m["task_metadata"]["seed"] for m in many] == [0, 2]
    comma = httpx.get(f"{container.url}/task_info?seeds=0,1", headers=h).json()
    assert len(comma) == 2
    bad = httpx.get(f"{container.url}/task_info?seed=9", headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "seed_out_of_range"
    assert httpx.get(f"{container.url}/task_info").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": KEY},
        {"x-api-keys": f"other, {KEY}"},
        {"authorization": f"Bearer {KEY}"},
    ],
)
def test_key_forms_accepted(
    container: InProcessContainer, model: FakeOpenAIServer, headers: dict[str, str]
) -> None:
    r = _post(container.url, rollout_body(seed=0, inference_url=model.url), headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Basic x"}])
def test_bad_or_missing_key_is_401(container: InProcessContainer, headers: dict[str, str]) -> None:
    r = _post(container.url, rollout_body(seed=0, inference_url="http://127.0.0.1:1"), headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert KEY not in r.text


def test_rollout_answers_both_reward_shapes(
    container: InProcessContainer, model: FakeOpenAIServer
) -> None:
    body = rollout_body(seed=0, inference_url=model.url, model="m", trace_correlation_id="tc-1")
    data = _post(container.url, body).json()
    assert data["trace_correlation_id"] == "tc-1"
    assert data["reward_info"]["outcome_reward"] == 1.0
    assert "metrics" not in data  # the vendor client refuses an answer with both
    assert data["reward_info"]["episode_rewards"] == [1.0]
    assert data["reward_info"]["details"]["expected"] == "4"
    traj = data["trajectories"][0]
    assert traj["env_id"] == "toy::train::0" and traj["length"] == 1
    assert traj["steps"][0]["info"] == {"expected": "4", "predicted": "4"}
    assert data["aborted"] is False and data["ops_executed"] == 1
    wrong = _post(container.url, rollout_body(seed=1, inference_url=model.url)).json()
    assert wrong["reward_info"]["outcome_reward"] == 0.0


def test_bad_requests_are_4xx_json(container: InProcessContainer) -> None:
    url = container.url
    r = _post(url, b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = _post(url, {"env": {"seed": 0}, "policy": {"config": {"inference_url": "http://x"}}})
    assert r.status_code == 422 and "trace_correlation_id" in r.json()["error"]["message"]
    body = rollout_body(seed=0, inference_url="ftp://nope")
    r = _post(url, body)
    assert r.status_code == 422 and "inference_url" in r.json()["error"]["message"]
    body = rollout_body(seed=0, inference_url="http://x")
    body["env"]["seed"] = -1
    assert _post(url, body).status_code == 422
    r = _post(url, rollout_body(seed=99, inference_url="http://x"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "seed_out_of_range"
    r = _post(url, rollout_body(seed=0, inference_url="http://x", env_config={"split": "dev"}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_split"
    r = _post(url, b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413
    r = httpx.get(f"{url}/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_llm_failure_is_502(container: InProcessContainer, model: FakeOpenAIServer) -> None:
    model.fail_next(500, count=1)
    r = _post(container.url, rollout_body(seed=0, inference_url=model.url))
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "llm_error" and err["llm_status"] == 500
    # nothing listening at all: also 502
    r = _post(container.url, rollout_body(seed=0, inference_url="http://127.0.0.1:9"))
    assert r.status_code == 502 and r.json()["error"]["code"] == "llm_error"


def test_rollout_timeout_is_504(container: InProcessContainer, model: FakeOpenAIServer) -> None:
    r = _post(container.url, rollout_body(seed=2, inference_url=model.url))
    assert r.status_code == 504 and r.json()["error"]["code"] == "rollout_timeout"
    body = rollout_body(seed=0, inference_url=model.url, timeout_seconds=0.001)
    model.delay = 0.2
    try:
        assert _post(container.url, body).status_code == 504
    finally:
        model.delay = 0.0


def test_client_maps_failures(container: InProcessContainer, model: FakeOpenAIServer) -> None:
    with ContainerClient(container.url, KEY) as client:
        assert client.health()["healthy"]
        assert client.rollout(seed=0, inference_url=model.url).reward == 1.0
        model.fail_next(503, count=1)
        with pytest.raises(RolloutFailed) as info:
            client.rollout(seed=0, inference_url=model.url)
        assert info.value.status == 502 and info.value.code == "llm_error"
        with pytest.raises(RolloutTimeout):
            client.rollout(seed=2, inference_url=model.url)
    with ContainerClient(container.url, "wrong") as client, pytest.raises(RolloutFailed) as info:
        client.task_info()
    assert info.value.status == 401
    with (
        ContainerClient("http://127.0.0.1:9", KEY, retries=2, backoff=0.01) as client,
        pytest.raises(ContainerUnreachable, match="3 attempt"),
    ):
        client.health()


def test_parse_rollout_response_accepts_both_shapes() -> None:
    legacy = {"trace_correlation_id": "t", "trajectories": [], "metrics": {"outcome_score": 0.5}}
    assert parse_rollout_response(legacy).reward == 0.5
    newer = {"reward_info": {"outcome_reward": 1, "details": {"expected": "a"}}}
    parsed = parse_rollout_response(newer)
    assert parsed.reward == 1.0 and parsed.details == {"expected": "a"}
    episodes = {"metrics": {"episode_rewards": [1.0, 0.0]}}
    assert parse_rollout_response(episodes).reward == 0.5
    steps = {
        "metrics": {"outcome_reward": 1.0},
        "trajectories": [{"steps": [{"info": {"expected": "x"}}]}],
    }
    assert parse_rollout_response(steps).details == {"expected": "x"}
    for bad in (
        [],
        {},
        {"metrics": "nope"},
        {"metrics": {"outcome_reward": "high"}},
        {"reward_info": {"outcome_reward": float("nan")}},
        {"metrics": {"outcome_reward": 1.0}, "trajectories": "x"},
    ):
        with pytest.raises(InvalidRolloutResponse):
            parse_rollout_response(bad)


def test_rollout_errors_inside_the_task_are_500_json(model: FakeOpenAIServer) -> None:
    async def broken(ctx: RolloutContext) -> Outcome:
        raise KeyError("oops")

    async def not_outcome(ctx: RolloutContext) -> Any:
        return {"reward": 1}

    async def raises_llm(ctx: RolloutContext) -> Outcome:
        raise LLMError("model said no", status=429)

    for fn, status in ((broken, 500), (not_outcome, 500), (raises_llm, 502)):
        task = TaskDefinition(name="t", splits={"train": [1]}, rollout=fn)
        with InProcessContainer(create_container_app(task, api_key=KEY)) as c:
            r = _post(c.url, rollout_body(seed=0, inference_url=model.url))
            assert r.status_code == status
            assert "error" in r.json()


def test_generated_key_is_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_API_KEY, "placeholder")  # so the environment is restored afterwards
    monkeypatch.delenv(ENV_API_KEY)
    key = ensure_environment_api_key()
    assert key and os.environ[ENV_API_KEY] == key
    assert ensure_environment_api_key() == key
    app = create_container_app(_task())
    assert app.state.api_key == key
    monkeypatch.setenv("ENVIRONMENT_API_KEY_ALIASES", "alias-1")
    with InProcessContainer(create_container_app(_task())) as c:
        assert c.api_key == key
        r = httpx.get(f"{c.url}/task_info", headers={"x-api-key": "alias-1"})
        assert r.status_code == 200


def test_chat_completions_url() -> None:
    assert chat_completions_url("http://h/v1") == "http://h/v1/chat/completions"
    assert chat_completions_url("http://h/p/ro_1/") == "http://h/p/ro_1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    assert chat_completions_url("http://h/x?cid=1") == "http://h/x/chat/completions?cid=1"


def test_task_definition_validates_splits() -> None:
    with pytest.raises(ValueError):
        TaskDefinition(name="t", splits={}, rollout=_rollout)
    with pytest.raises(ValueError):
        TaskDefinition(name="t", splits={"a": [1]}, rollout=_rollout, default_split="b")


def test_parse_rollout_response_reads_synth_containers_answers() -> None:
    """synth-containers 0.4.6: ``{status, summary}`` with a ``reward_info.outcome_reward``
    that is null when the runtime reports its reward in ``summary``."""
    answer = {
        "rollout_id": "r1",
        "status": "completed",
        "reward_info": {"outcome_reward": None, "event_rewards": []},
        "summary": {"reward": 0.75, "task_id": "t"},
    }
    parsed = parse_rollout_response(answer)
    assert parsed.reward == 0.75 and not parsed.aborted
    assert parse_rollout_response({"status": "completed", "summary": {"outcome_reward": 1}}).reward == 1.0
    failed = {"status": "failed", "status_detail": "boom", "reward_info": {"outcome_reward": None}}
    with pytest.raises(InvalidRolloutResponse, match="failed: boom"):
        parse_rollout_response(failed)
    assert parse_rollout_response({"status": "failed", "summary": {"reward": 0}}).aborted
    with pytest.raises(InvalidRolloutResponse):
        parse_rollout_response({"status": "completed", "summary": {"reward": "lots"}})
