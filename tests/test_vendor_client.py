"""The hosted API's own published client (synth-ai 0.9.11), unmodified, against ``serve``.

synth-ai pins dependencies of its own (``click<8.2``, numpy, datasets, ...), so
it is not in the dev extra: ``.ci/run`` installs it with this package into a
separate venv (``scripts/vendor_client_test.sh``) and runs this module there
with ``SYNTH_VENDOR_CLIENT_TEST=1``, which makes a missing client a failure
instead of a skip. Everything is real: ``synth-middleware serve`` in a
subprocess on loopback with a SQLite file, the vendor's Rust-core HTTP client,
and a local OpenAI-compatible model behind the proxy.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

if os.environ.get("SYNTH_VENDOR_CLIENT_TEST") == "1":
    import synth_ai  # noqa: F401  (required: fail loudly)
else:
    pytest.importorskip("synth_ai", reason="synth-ai (the vendor client) is not installed")

from synth_ai import SynthClient
from synth_ai.sdk.optimization.policy.gepa_online_session import GepaOnlineSession
from synth_ai.sdk.optimization.policy.mipro_online_session import MiproOnlineSession

from synth_middleware.testing import FakeOpenAIServer

KEY = "vendor-test-key"
BASELINE = "You classify banking requests into one intent."
CONFIG: dict[str, Any] = {
    "prompt_learning": {
        "algorithm": "mipro",
        "initial_prompt": {
            "messages": [
                {"role": "system", "order": 0, "pattern": BASELINE},
                {"role": "user", "order": 1, "pattern": "Customer Query: {query}"},
            ]
        },
    }
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("configs")
    (d / "mipro.toml").write_text(
        '[prompt_learning]\nalgorithm = "mipro"\ninitial_prompt = "From a TOML file."\n'
    )
    (d / "empty.toml").write_text('[prompt_learning]\nalgorithm = "mipro"\n')
    return d


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, model: FakeOpenAIServer, config_dir: Path
) -> Iterator[str]:
    port = _free_port()
    db = tmp_path_factory.mktemp("serve") / "synth.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTH_", "OPENAI_"))}
    env["SYNTH_API_KEY"] = KEY
    env["SYNTH_UPSTREAM_API_KEY"] = "upstream-key"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "synth_middleware.cli", "serve",
            "--port", str(port), "--db", str(db),
            "--upstream-url", model.url,
            "--config-dir", str(config_dir),
            "--no-optimizer", "--log-level", "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("serve did not start")
        time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _baseline_text(item: dict[str, Any]) -> str | None:
    return item.get("candidate_content")


def test_mipro_online_session_every_call(serve: str, model: FakeOpenAIServer) -> None:
    s = MiproOnlineSession.create(backend_url=serve, api_key=KEY, config_body=CONFIG)
    assert s.session_id and s.online_url and s.chat_completions_url
    status = s.status()
    assert status["session_id"] == s.session_id and status["status"] == "running"
    urls = s.get_prompt_urls(correlation_id="corr-1")
    assert urls["online_url"] == s.online_url and "corr-1" in urls["chat_completions_url"]
    assert MiproOnlineSession.get_online_url(s.session_id, backend_url=serve, api_key=KEY)

    # one call through the proxy, as an app would make it with the online URL
    import openai

    client = openai.OpenAI(base_url=s.online_url, api_key=KEY, max_retries=0)
    resp = client.chat.completions.create(
        model="gpt-4.1-nano",
        messages=[{"role": "system", "content": BASELINE}, {"role": "user", "content": "hi"}],
    )
    assert resp.choices[0].message.content

    ack = s.update_reward(reward_info={"score": 0.75}, rollout_id="ro-vendor-1")
    assert ack["status"] == "accepted"
    page = s.list_candidates()
    ids = [i["candidate_id"] for i in page["items"]]
    assert status["baseline_candidate_id"] in ids
    # the docs' snippet: get_candidate(best_candidate_id or "baseline")
    best = s.get_candidate(status["best_candidate_id"])
    assert best["candidate_id"] == status["best_candidate_id"]
    assert _baseline_text(best) == BASELINE
    alias = s.get_candidate("baseline")
    assert alias["alias_of"] == status["baseline_candidate_id"]
    assert _baseline_text(alias) == BASELINE
    # and the async twins (the same routes)
    import asyncio

    assert asyncio.run(s.list_candidates_async())["items"]
    assert asyncio.run(s.get_candidate_async("baseline"))["alias_of"] == alias["alias_of"]

    assert s.pause()["status"] == "paused"
    assert s.resume()["status"] == "running"
    assert s.cancel()["status"] == "cancelled"


def test_create_reads_config_and_config_path(serve: str, config_dir: Path) -> None:
    by_key = MiproOnlineSession.create(backend_url=serve, api_key=KEY, config=CONFIG)
    items = by_key.list_candidates()["items"]
    assert next(i["candidate_content"] for i in items if i.get("is_baseline")) == BASELINE

    by_path = MiproOnlineSession.create(
        backend_url=serve, api_key=KEY, config_path=config_dir / "mipro.toml"
    )
    items = by_path.list_candidates()["items"]
    assert "From a TOML file." in [i["candidate_content"] for i in items]


def test_refused_configs_say_why(serve: str, config_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.toml"
    outside.write_text('[prompt_learning]\ninitial_prompt = "x"\n')
    with pytest.raises(Exception) as err:
        MiproOnlineSession.create(backend_url=serve, api_key=KEY, config_path=outside)
    assert "422" in str(err.value) and "config_path" in str(err.value)
    with pytest.raises(Exception) as err:
        MiproOnlineSession.create(
            backend_url=serve, api_key=KEY, config_path=config_dir / "empty.toml"
        )
    assert "422" in str(err.value) and "baseline" in str(err.value)


def test_gepa_online_session_every_call(serve: str) -> None:
    g = GepaOnlineSession.create(backend_url=serve, api_key=KEY, config_body=CONFIG)
    assert g.session_id and g.online_url
    st = g.get_status()
    assert st["kind"] == "gepa_online"
    assert g.update_reward(reward_info={"score": 1.0}, rollout_id="ro-g")["status"] == "accepted"
    assert g.get_prompt_urls()["online_url"]
    page = g.list_candidates()
    assert st["baseline_candidate_id"] in [i["candidate_id"] for i in page["items"]]
    assert g.get_candidate(st["baseline_candidate_id"])["candidate_content"] == BASELINE
    assert g.pause()["status"] == "paused"
    assert g.resume()["status"] == "running"
    assert g.cancel()["status"] == "cancelled"


def test_synth_client_online_and_offline(serve: str) -> None:
    client = SynthClient(api_key=KEY, base_url=serve)
    on = client.optimization.online.create(kind="mipro_online", system_name="bank", config=CONFIG)
    assert on.system_name == "bank"
    st = on.status()
    assert st["baseline_candidate_id"]
    assert on.update_reward(reward_info={"score": 0.5})["status"] == "accepted"
    events = on.events(since_seq=0, limit=500)
    assert events["events"] and {"seq", "type", "data"} <= set(events["events"][0])
    later = on.events(since_seq=events["next_seq"], limit=500)
    assert later["events"] == []
    assert on.pause()["status"] == "paused"
    listed = client.optimization.online.list()
    assert on.session_id in [i["session_id"] for i in listed["items"]]

    job = client.optimization.offline.create(
        kind="gepa_offline",
        system_name="bank-offline",
        config={"container_url": "http://127.0.0.1:9", "initial_prompt": BASELINE},
        auto_start=False,
    )
    assert job.job_id
    assert job.status()["status"] == "created"
