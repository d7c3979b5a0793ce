"""The session SDK (SynthClient / AsyncSynthClient) against a real server, and its TOML configs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

import synth_middleware
from synth_middleware.errors import BackendError, InvalidRequestError, NotFoundError
from synth_middleware.offline.sdk import (
    AsyncSynthClient,
    ConfigError,
    GepaOnlineSession,
    MiproOnlineSession,
    SynthClient,
    load_config,
)
from synth_middleware.server.background import BackgroundServer

KEY = "sdk-key"

GEPA_TOML = """
[prompt_learning]
algorithm = "gepa"
system_name = "banking77"

[prompt_learning.initial_prompt]
messages = [
  { role = "system", pattern = "You are a banking assistant. Classify the intent." },
  { role = "user", pattern = "{query}" },
]

[prompt_learning.policy]
model = "gpt-4.1-nano"

[prompt_learning.gepa]
min_rollouts_for_best = 3
min_proposal_rollouts = 10
proposer = { model = "gpt-4.1-mini", temperature = 0.5 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    with BackgroundServer(db_path=tmp_path_factory.mktemp("sdk") / "s.db", api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client(server: BackgroundServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SynthClient]:
    monkeypatch.setenv("SYNTH_URL", server.url + "/api")  # a trailing /api is tolerated
    monkeypatch.setenv("SYNTH_API_KEY", KEY)
    with SynthClient() as c:
        yield c


@pytest.fixture
def gepa_toml(tmp_path: Path) -> Path:
    path = tmp_path / "gepa.toml"
    path.write_text(GEPA_TOML)
    return path


def test_lazy_export_and_light_import() -> None:
    assert synth_middleware.SynthClient is SynthClient
    assert synth_middleware.AsyncSynthClient is AsyncSynthClient
    code = (
        "import sys, synth_middleware; "
        "bad = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pattern_b_sync(client: SynthClient, gepa_toml: Path) -> None:
    session = client.optimization.online.create(
        kind="gepa_online", config_path=gepa_toml, session_id="sdk-sync"
    )
    assert isinstance(session, GepaOnlineSession) and session.session_id == "sdk-sync"
    assert session.chat_completions_url and session.proxy_url
    urls = session.get_prompt_urls(correlation_id="trace-1")
    assert urls["chat_completions_url"].endswith("/proxy/trace-1/chat/completions")
    state = session.get_status()
    assert state["kind"] == "gepa_online"
    best_id = state.get("best_candidate_id") or "baseline"
    candidate = session.get_candidate(best_id)
    assert candidate["candidate_content"] == "You are a banking assistant. Classify the intent."
    added = session.add_candidate("Answer with one intent label.")
    assert added["candidate_id"].startswith("cand_")
    page = session.list_candidates(limit=1)
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = session.list_candidates(limit=10, cursor=page["next_cursor"], include=["prompt_text"])
    assert len(rest["items"]) == 1
    ack = session.update_reward(
        reward_info={"score": 0.9}, rollout_id="my_rollout_123", candidate_id=added["candidate_id"]
    )
    assert ack["status"] == "accepted" and ack["candidate_id"] == added["candidate_id"]
    again = session.update_reward(
        reward_info={"score": 0.9},
        rollout_id="my_rollout_123",
        idempotency_key=ack["idempotency_key"],
    )
    assert again["status"] == "duplicate"
    v = session.get_status()["version"]
    assert session.wait_for_update(v, timeout=0.1)["version"] == v
    assert session.pause()["status"] == "paused"
    assert session.resume()["status"] == "running"
    assert session.archive_candidate(added["candidate_id"])["changed"] is True
    assert session.cancel()["status"] == "cancelled"
    # the stored config is the engine's dialect: min_rollouts_for_best reached the policy
    same = client.optimization.online.get("sdk-sync")
    assert same.kind == "gepa_online" and same.proxy_url == session.proxy_url
    assert "sdk-sync" in [s["session_id"] for s in client.optimization.online.list()]


async def test_async_client_and_async_twins(server: BackgroundServer, gepa_toml: Path) -> None:
    async with AsyncSynthClient(api_key=KEY, base_url=server.url) as client:
        session = await client.optimization.online.create(
            kind="mipro_online",
            baseline="You classify.",
            session_id="sdk-async",
            system_name="bank",
        )
        assert isinstance(session, MiproOnlineSession)
        state = await session.get_status_async()
        assert state["kind"] == "mipro_online"
        base = await session.get_candidate_async(state["baseline_candidate_id"])
        assert base["candidate_content"] == "You classify."
        cand = await session.add_candidate_async(
            payload={"object": "transformation", "text_replacements": []}
        )
        page = await session.list_candidates_async(status="active")
        assert {i["candidate_id"] for i in page["items"]} >= {cand["candidate_id"]}
        ack = await session.update_reward_async(reward_info={"score": 1.0}, rollout_id="a1")
        assert ack["status"] == "accepted"
        assert (await session.get_prompt_urls_async())["proxy_url"] == session.proxy_url
        assert (await session.wait_for_update_async(0, timeout=1))["version"] > 0
        assert (await session.pause_async())["status"] == "paused"
        assert (await session.resume_async())["status"] == "running"
        assert (await session.archive_candidate_async(cand["candidate_id"]))["changed"]
        assert (await session.cancel_async())["status"] == "cancelled"
        again = await client.optimization.online.get("sdk-async")
        assert again.kind == "mipro_online"
        with pytest.raises(NotFoundError):
            await session.get_candidate_async("cand_nope")


async def test_sync_client_sessions_have_async_twins(client: SynthClient) -> None:
    session = client.optimization.online.create(kind="gepa_online", baseline="B")
    assert (await session.status_async())["session_id"] == session.session_id
    assert session.status()["session_id"] == session.session_id


def test_errors(server: BackgroundServer, client: SynthClient) -> None:
    with pytest.raises(NotFoundError) as info:
        client.optimization.online.get("no-such-session")
    assert info.value.code == "session_not_found"
    with SynthClient(api_key="wrong", base_url=server.url) as bad:
        with pytest.raises(InvalidRequestError) as err:
            bad.optimization.online.list()
        assert err.value.status == 401 and "wrong" not in str(err.value)
        assert "wrong" not in repr(bad)
    with SynthClient(api_key=KEY, base_url="http://127.0.0.1:9") as down:
        with pytest.raises(BackendError) as exc:
            down.optimization.online.list()
        assert exc.value.retryable
    session = client.optimization.online.create(kind="gepa_online", baseline="B")
    with pytest.raises(InvalidRequestError) as err:
        session.update_reward(reward_info={"score": "great"})
    assert err.value.code == "invalid_reward"
    with pytest.raises(ValueError, match="algorithm"):
        client.optimization.online.create(
            kind="mipro_online", config={"prompt_learning": {"algorithm": "gepa"}}
        )
    with pytest.raises(ValueError, match="kind"):
        client.optimization.online.create()


def test_config_errors_name_the_key(tmp_path: Path, client: SynthClient) -> None:
    bad = tmp_path / "gepa.toml"
    bad.write_text(
        textwrap.dedent("""
        [prompt_learning]
        algorithm = "gepa"
        sytem_name = "typo"

        [prompt_learning.initial_prompt]
        messages = [{ role = "system" }]

        [prompt_learning.gepa]
        min_rollouts_for_bets = 3
        reflection_minibatch_size = "three"
        proposer_api_key = "sk-do-not-echo"
    """)
    )
    with pytest.raises(ConfigError) as info:
        client.optimization.online.create(config_path=bad)
    text = str(info.value)
    assert "prompt_learning.sytem_name: unknown key (did you mean 'system_name'?)" in text
    assert "prompt_learning.initial_prompt.messages[0]" in text
    bad.write_text(
        textwrap.dedent("""
        [prompt_learning]
        algorithm = "gepa"

        [prompt_learning.gepa]
        min_rollouts_for_bets = 3
        reflection_minibatch_size = "three"
        proposer_api_key = "sk-do-not-echo"
    """)
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    text = str(info.value)
    assert (
        "prompt_learning.gepa.min_rollouts_for_bets: unknown key (did you mean 'min_rollouts_for_best'?)"
        in text
    )
    assert "prompt_learning.gepa.reflection_minibatch_size" in text and "'three'" in text
    assert "prompt_learning.gepa.proposer_api_key" in text and "sk-do-not-echo" not in text
    bad.write_text("[prompt_learning\nalgorithm = 'gepa'")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"\[prompt_learning.mipro\] is set"):
        client.optimization.online.create(
            config={"prompt_learning": {"algorithm": "gepa", "mipro": {}}}
        )


def test_config_reaches_the_engine(
    client: SynthClient, gepa_toml: Path, server: BackgroundServer
) -> None:
    session = client.optimization.online.create(config_path=gepa_toml, session_id="sdk-cfg")
    assert session.kind == "gepa_online"
    engine = server.app.state.synth.engine
    cfg = engine.session_state("sdk-cfg").config
    assert cfg["prompt_learning"]["gepa"]["min_rollouts_for_best"] == 3
    assert cfg["system_name"] == "banking77"
    assert engine.session_state("sdk-cfg").min_rewards_for_best == 3


def test_own_http_client(server: BackgroundServer) -> None:
    import httpx

    with httpx.Client() as own:
        client = SynthClient(api_key=KEY, base_url=server.url, http_client=own)
        assert isinstance(client.optimization.online.list(), list)
        client.close()
        assert not own.is_closed  # the caller's client stays the caller's


def test_sdk_maps_statuses_like_the_http_backend() -> None:
    """408 and 429 are retryable (with Retry-After), not 'invalid request': the SDK and
    the HTTP backend share one mapping (the SDK once called 429 InvalidRequestError)."""
    import httpx

    from synth_middleware.errors import BackendError, InvalidRequestError, NotFoundError
    from synth_middleware.offline.sdk._transport import Call, Transport

    def answer(request: httpx.Request) -> httpx.Response:
        status = int(request.url.path.rsplit("/", 1)[-1])
        return httpx.Response(
            status, json={"error": {"message": "slow down", "code": "x"}}, headers={"retry-after": "7"}
        )

    t = Transport("http://backend.test", client=httpx.Client(transport=httpx.MockTransport(answer)))
    for status, cls, retryable in (
        (429, BackendError, True),
        (408, BackendError, True),
        (503, BackendError, True),
        (422, InvalidRequestError, False),
        (404, NotFoundError, False),
    ):
        with pytest.raises(BackendError) as info:
            t.request(Call("GET", f"/s/{status}"))
        assert type(info.value) is cls and info.value.retryable is retryable, status
        assert info.value.retry_after == 7.0  # type: ignore[attr-defined]
