"""Containers, both ways, with the vendors' own code unmodified (issue #22).

* the hosted SDK's ``ContainerClient.rollout`` (synth-ai 0.9.11) reads our
  container's answer (it refused one carrying both ``metrics`` and ``reward_info``);
* our runner's client reads a real synth-containers 0.4.6 app's answer
  (``{status, summary}``, a ``reward_info.outcome_reward`` that may be null);
* our ``X-Synth-Container-Authorization`` tokens (PASETO v4.public) pass the
  vendor's verifier, inside a real synth-ai container that requires them.

Runs where the vendor packages are installed (``scripts/vendor_client_test.sh``);
``SYNTH_VENDOR_CLIENT_TEST=1`` turns a missing package into a failure.
"""

from __future__ import annotations

import asyncio
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
    import synth_ai  # noqa: F401
    import synth_containers  # noqa: F401
else:
    pytest.importorskip("synth_ai", reason="synth-ai (the vendor client) is not installed")
    pytest.importorskip("synth_containers", reason="synth-containers is not installed")

import synth_ai_py
from synth_ai.sdk.container._impl.client import ContainerClient as VendorContainerClient
from synth_ai.sdk.container._impl.contracts import RolloutMetrics as VendorMetrics
from synth_ai.sdk.container._impl.contracts import RolloutRequest as VendorRolloutRequest
from synth_ai.sdk.container._impl.contracts import RolloutResponse as VendorRolloutResponse
from synth_ai.sdk.container._impl.server import ContainerConfig, create_container
from synth_containers import create_reference_app
from synth_containers.reference_runtime import ReferenceManagedRuntime

from synth_middleware.offline.container import (
    AsyncContainerClient,
    InProcessServer,
    RolloutFailed,
)
from synth_middleware.offline.container._paseto import ContainerTokenSigner
from synth_middleware.offline.container.client import container_dialect, rollout_body
from synth_middleware.testing import FakeOpenAIServer

KEY = "env-key"


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply=lambda body: "4") as srv:
        yield srv


@pytest.fixture(scope="module")
def ours() -> Iterator[str]:
    """Our container, in its own process (the vendor's Rust client holds the GIL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = Path(__file__).resolve().parent
    proc = subprocess.Popen([sys.executable, str(here / "_toy_container.py"), str(port), KEY])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "container did not start"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_vendor_container_client_reads_our_answer(ours: str) -> None:
    request = VendorRolloutRequest.model_validate(
        {
            "trace_correlation_id": "tc-vendor-1",
            "env": {"seed": 0, "config": {}},
            "policy": {"config": {"model": "m", "inference_url": "http://127.0.0.1:9/v1"}},
        }
    )
    # synth-ai 0.9.11's ContainerClient.__init__ touches its Rust client before making it
    # (AttributeError), so make it the way its own constructor means to and call rollout()
    client = object.__new__(VendorContainerClient)
    client.base_url, client.api_key, client.timeout, client.retries = ours, KEY, 30.0, 1
    client._rust_client = synth_ai_py.ContainerClient(ours, KEY, 30)
    resp = asyncio.run(client.rollout(request))
    assert isinstance(resp, VendorRolloutResponse)
    assert resp.reward_info.outcome_reward == 1.0
    assert resp.reward_info.details["expected"] == "4"
    assert resp.trace_correlation_id == "tc-vendor-1"


@pytest.fixture(scope="module")
def synth_containers_app() -> Iterator[InProcessServer]:
    with InProcessServer(create_reference_app(ReferenceManagedRuntime.counter_default()), name="synth-containers") as srv:
        yield srv


def test_our_runner_reads_a_synth_containers_answer(synth_containers_app: Any) -> None:
    async def go() -> Any:
        client = AsyncContainerClient(synth_containers_app.url, None, timeout=30)
        try:
            dialect = container_dialect(await client.health())
            assert dialect == "synth-containers"
            body = rollout_body(
                seed=0,
                inference_url="http://127.0.0.1:9/v1",
                model="gpt-4.1-nano",
                trace_correlation_id="tc-sc-1",
                policy_id="cand_x",
                timeout_seconds=30,
                dialect=dialect,
            )
            return await client.rollout(body)
        finally:
            await client.aclose()

    result = asyncio.run(go())
    assert result.raw["status"] == "completed" and "summary" in result.raw
    assert result.reward == 1.0 and not result.aborted  # the counter reached its target


# -- PASETO: X-Synth-Container-Authorization -------------------------------------


@pytest.fixture
def signer(monkeypatch: pytest.MonkeyPatch) -> ContainerTokenSigner:
    s = ContainerTokenSigner.generate(kid="k1")
    monkeypatch.setenv("SYNTH_CONTAINER_TRUSTED_PUBKEYS", s.public_key_b64())
    monkeypatch.delenv("SYNTH_CONTAINER_AUTH_ISSUER", raising=False)
    return s


def test_our_tokens_pass_the_vendor_verifier(signer: ContainerTokenSigner) -> None:
    synth_ai_py.container_verify_paseto_header(signer.header_value(), required_scope="rollout")
    synth_ai_py.container_verify_paseto_header(signer.header_value(), required_scope="task_info")
    stranger = ContainerTokenSigner.generate(kid="k1")
    with pytest.raises(Exception, match="verification failed"):
        synth_ai_py.container_verify_paseto_header(stranger.header_value(), required_scope="rollout")
    narrow = "Bearer " + signer.token(scopes=("task_info",))
    with pytest.raises(Exception, match="scope"):
        synth_ai_py.container_verify_paseto_header(narrow, required_scope="rollout")


def test_a_vendor_container_that_requires_tokens_takes_ours(
    signer: ContainerTokenSigner, monkeypatch: pytest.MonkeyPatch, model: FakeOpenAIServer
) -> None:
    monkeypatch.setenv("SYNTH_CONTAINER_AUTH_MODE", "required")
    monkeypatch.setenv("ENVIRONMENT_API_KEY", KEY)

    def rollout(request: Any, fastapi_request: Any) -> VendorRolloutResponse:
        return VendorRolloutResponse(
            trace_correlation_id=request.trace_correlation_id,
            reward_info=VendorMetrics(outcome_reward=0.5),
        )

    app = create_container(
        ContainerConfig(
            app_id="toy",
            name="Toy",
            description="a vendor container",
            provide_taskset_description=lambda: {"splits": ["train"]},
            provide_task_instances=lambda seeds: [],
            rollout=rollout,
        )
    )
    body = rollout_body(seed=0, inference_url=model.url, model="m", trace_correlation_id="tc-p")

    async def call(token: ContainerTokenSigner | None) -> Any:
        with InProcessServer(app, name="vendor-container") as srv:
            client = AsyncContainerClient(srv.url, KEY, timeout=30, token_signer=token)
            try:
                return await client.rollout(body)
            finally:
                await client.aclose()

    with pytest.raises(RolloutFailed) as err:
        asyncio.run(call(None))
    assert err.value.status == 401
    result = asyncio.run(call(signer))
    assert result.reward == 0.5
