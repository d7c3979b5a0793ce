"""One definition of the wire contract: every side accepts and refuses the same inputs.

The limits and checks live in ``synth_middleware.wire``; these tests hold the
client's ``reward()``, the engine's ingest, the HTTP server (its pydantic
models and routes), the HTTP backend and the SDK to them at the boundaries, so
a copy that drifts (say, a limit counted in characters on one side and in
bytes on the other) fails here.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from helpers import CANDIDATE, messages, pick, seed

import synth_middleware as synth
from synth_middleware.backends.http import HttpBackend
from synth_middleware.errors import BackendError
from synth_middleware.offline.sdk._transport import Call, Transport, resolve_base_url
from synth_middleware.settings import Settings
from synth_middleware.wire import (
    MAX_BATCH_RECORDS,
    MAX_FEEDBACK_BYTES,
    MAX_ID_CHARS,
    MAX_SESSION_ID_CHARS,
    feedback_error,
    is_id,
    is_session_id,
)
from synth_middleware.wire.dialect import URL_VARS, url_from_env
from synth_middleware.wire.records import parse_reward

PACKAGE = Path(synth.__file__).parent

# Feedback exactly at the limit and one byte over it, both of 2- and 3-byte characters:
# the over-long one is far under the limit in characters, so a check that counts
# characters instead of UTF-8 bytes accepts it (a bug this library once had).
AT_LIMIT = "é" * (MAX_FEEDBACK_BYTES // 2)
ONE_OVER = "é" * (MAX_FEEDBACK_BYTES // 2 - 1) + "€"
assert len(AT_LIMIT.encode()) == MAX_FEEDBACK_BYTES
assert len(ONE_OVER.encode()) == MAX_FEEDBACK_BYTES + 1 and len(ONE_OVER) < MAX_FEEDBACK_BYTES


# -- layering ---------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_wire_imports_nothing_above_it() -> None:
    allowed = ("synth_middleware.wire", "synth_middleware.errors", "synth_middleware._version")
    for path in sorted((PACKAGE / "wire").glob("*.py")):
        ours = {n for n in _imports(path) if n.split(".")[0] == "synth_middleware"}
        above = {n for n in ours if not n.startswith(allowed)}
        assert not above, f"{path.name} imports {above}"


def test_engine_imports_wire_not_backends() -> None:
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        backends = {n for n in _imports(path) if n.startswith("synth_middleware.backends")}
        assert not backends, f"{path.relative_to(PACKAGE)} imports {backends}"


# -- feedback: one byte limit for the client, the engine and the server ------------------


def _record(key: str, feedback: str, **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "rollout_id": f"ro-{key}",
        "value": 1.0,
        "created_at": time.time(),
        "feedback": feedback,
        **extra,
    }


def test_the_check_itself() -> None:
    assert feedback_error(AT_LIMIT) is None
    assert "bytes" in (feedback_error(ONE_OVER) or "")


def test_feedback_and_key_limits_in_the_client_reward(server: Any, backend: Any) -> None:
    (cid,) = seed(backend, "wire-fb", CANDIDATE)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="wire-fb",
        backend=backend,
        warm=True,
        selection=pick(cid),
    )
    resp = client.chat.completions.create(model="m", messages=messages())
    with pytest.raises(ValueError, match="bytes"):
        synth.reward(resp, 1.0, feedback=ONE_OVER)
    with pytest.raises(ValueError, match="idempotency_key"):
        synth.reward(resp, 1.0, idempotency_key="k" * (MAX_ID_CHARS + 1))
    key = "k" * MAX_ID_CHARS
    synth.reward(resp, 1.0, feedback=AT_LIMIT, idempotency_key=key)
    assert synth.flush(5.0)
    (row,) = backend.engine.rollout_records("wire-fb")
    # delivered and stored, not refused later in the background
    assert [(r["feedback"], r["idempotency_key"]) for r in row["rewards"]] == [(AT_LIMIT, key)]


def test_feedback_limit_in_the_engine_ingest(backend: Any) -> None:
    (cid,) = seed(backend, "wire-eng", CANDIDATE)
    extra = {"session_id": "wire-eng", "candidate_id": cid}
    results = backend.engine.record_rewards(
        [_record("at", AT_LIMIT, **extra), _record("over", ONE_OVER, **extra)]
    )
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert "bytes" in results[1]["error"]


@pytest.fixture(scope="module")
def wire_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    pytest.importorskip("fastapi")
    from synth_middleware.server.background import BackgroundServer

    db = tmp_path_factory.mktemp("wire") / "synth.db"
    with (
        BackgroundServer(db_path=db, proxy_refresh_interval=0.0) as srv,
        httpx.Client(base_url=srv.url, timeout=10.0) as http,
    ):
        yield http


def _new_session(http: httpx.Client, sid: str) -> None:
    r = http.post("/api/v1/online/sessions", json={"session_id": sid, "baseline": "B"})
    assert r.status_code == 200, r.text


def test_feedback_limit_on_the_server_batch_route(wire_server: httpx.Client) -> None:
    _new_session(wire_server, "wire-srv-batch")
    extra = {"session_id": "wire-srv-batch"}
    r = wire_server.post(
        "/api/v1/rewards/batch",
        json={"rewards": [_record("at", AT_LIMIT, **extra), _record("over", ONE_OVER, **extra)]},
    )
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected"]


def test_feedback_limit_on_the_server_reward_route(wire_server: httpx.Client) -> None:
    _new_session(wire_server, "wire-srv-one")

    def post(feedback: str, key: str) -> httpx.Response:
        body = {"reward_info": {"score": 1.0, "feedback": feedback}, "idempotency_key": key}
        return wire_server.post("/api/v1/online/sessions/wire-srv-one/reward", json=body)

    assert post(AT_LIMIT, "at").status_code == 200
    over = post(ONE_OVER, "over")
    assert over.status_code == 400 and "bytes" in over.json()["error"]["message"]


# -- ids, session ids and batches: the server's models and the engine agree -------------


@pytest.mark.parametrize("size", [MAX_ID_CHARS, MAX_ID_CHARS + 1])
def test_id_length_in_the_models_and_the_engine(size: int) -> None:
    pytest.importorskip("fastapi")
    from pydantic import ValidationError

    from synth_middleware.server.models import MiproStatusRequest, RewardRequest

    rid = "r" * size
    fits = size <= MAX_ID_CHARS
    assert is_id(rid) is fits
    engine = parse_reward(0, {"idempotency_key": "k", "rollout_id": rid, "value": 1.0}, 0.0)
    assert (not isinstance(engine, dict)) is fits
    for model in (
        lambda: RewardRequest(rollout_id=rid, idempotency_key=rid),
        lambda: MiproStatusRequest(rollout_id=rid, status="reward"),
    ):
        if fits:
            model()
        else:
            with pytest.raises(ValidationError):
                model()


@pytest.mark.parametrize("size", [MAX_SESSION_ID_CHARS, MAX_SESSION_ID_CHARS + 1])
def test_session_id_length_in_the_models_and_the_engine(size: int) -> None:
    pytest.importorskip("fastapi")
    from pydantic import ValidationError

    from synth_middleware.server.models import CreateSessionRequest

    sid = "s" * size
    fits = size <= MAX_SESSION_ID_CHARS
    assert is_session_id(sid) is fits
    rec = {"idempotency_key": "k", "rollout_id": "r", "value": 1.0, "session_id": sid}
    assert (not isinstance(parse_reward(0, rec, 0.0), dict)) is fits
    if fits:
        CreateSessionRequest(session_id=sid)
    else:
        with pytest.raises(ValidationError):
            CreateSessionRequest(session_id=sid)


def test_batch_size_in_the_models() -> None:
    pytest.importorskip("fastapi")
    from pydantic import ValidationError

    from synth_middleware.server.models import RewardBatchRequest, RolloutBatchRequest

    for model, name in ((RewardBatchRequest, "rewards"), (RolloutBatchRequest, "rollouts")):
        model(**{name: [{}] * MAX_BATCH_RECORDS})
        with pytest.raises(ValidationError):
            model(**{name: [{}] * (MAX_BATCH_RECORDS + 1)})


# -- HTTP: the backend and the SDK map statuses and send headers alike ---------------


STATUSES = [400, 401, 403, 404, 405, 408, 409, 413, 422, 429, 500, 502, 503, 504]


def _answering(status: int, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        body = {"error": {"code": f"code_{status}", "message": f"boom {status}"}}
        return httpx.Response(status, json=body, headers={"Retry-After": "7"})

    return httpx.MockTransport(handle)


def _backend_error(status: int) -> BackendError:
    with HttpBackend("http://wire.test", api_key="k", transport=_answering(status)) as backend:
        with pytest.raises(BackendError) as info:
            backend.get_candidate("c1")
    return info.value


def _sdk_error(status: int) -> BackendError:
    transport = Transport(
        "http://wire.test", "k", client=httpx.Client(transport=_answering(status))
    )
    try:
        with pytest.raises(BackendError) as info:
            transport.request(Call("GET", "/api/v1/candidates/c1"))
    finally:
        transport.client.close()  # type: ignore[union-attr]
    return info.value


@pytest.mark.parametrize("status", STATUSES)
def test_backend_and_sdk_map_a_status_to_the_same_error(status: int) -> None:
    ours, sdk = _backend_error(status), _sdk_error(status)
    assert type(ours) is type(sdk)
    assert (ours.status, ours.code, ours.retryable) == (sdk.status, sdk.code, sdk.retryable)
    assert ours.retry_after == sdk.retry_after == 7.0  # type: ignore[attr-defined]
    assert ours.retryable is (status in (408, 429) or status >= 500)


@pytest.mark.parametrize("status", [408, 429])
def test_timeout_and_too_many_requests_are_retryable_on_both(status: int) -> None:
    for exc in (_backend_error(status), _sdk_error(status)):
        assert type(exc) is BackendError and exc.retryable


def test_backend_and_sdk_send_the_same_headers() -> None:
    seen: list[httpx.Request] = []
    with HttpBackend("http://wire.test", api_key="k", transport=_answering(200, seen)) as b:
        b.get_candidate("c1")
    client = httpx.Client(transport=_answering(200, seen))
    Transport("http://wire.test", "k", client=client).request(Call("GET", "/x"))
    client.close()
    names = ("accept", "user-agent", "authorization", "x-api-key")
    ours, sdk = ({n: r.headers.get(n) for n in names} for r in seen)
    assert ours == sdk
    assert ours["authorization"] == "Bearer k" and ours["x-api-key"] == "k"
    assert ours["user-agent"] == f"synth-middleware/{synth.__version__}"


@pytest.mark.parametrize("var", URL_VARS)
def test_settings_and_sdk_read_the_same_url_variables(
    monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    for name in URL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, "http://from-env.test:9")
    assert (
        url_from_env() == Settings().backend_url == resolve_base_url() == "http://from-env.test:9"
    )
