"""HttpBackend / AsyncHttpBackend against a real wire-API server on loopback."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
from _wire_server import ClosingHttpBackend as HttpBackend
from _wire_server import WireServer, close_backends

from synth_middleware.backends.base import Backend
from synth_middleware.backends.http import (
    AsyncHttpBackend,
    PartialDeliveryError,
    parse_retry_after,
)
from synth_middleware.errors import BackendError, InvalidRequestError, NotFoundError

KEY = "sk-test-0123456789abcdef"
SID = "http-sess"


@pytest.fixture(autouse=True)
def _close_backends() -> Iterator[None]:
    yield
    close_backends()


@pytest.fixture
def wire() -> Iterator[WireServer]:
    with WireServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def http(wire: WireServer) -> Iterator[HttpBackend]:
    backend = HttpBackend(wire.url, api_key=KEY, timeout=3.0)
    yield backend
    backend.close()


def _reward(i: int, session: str | None = SID, **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "idempotency_key": f"k-{i}-{os.urandom(4).hex()}",
        "rollout_id": f"ro-{i}-{os.urandom(4).hex()}",
        "session_id": session,
        "candidate_id": None,
        "value": (i % 5) / 4,
        "created_at": time.time(),
    }
    rec.update(extra)
    return rec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_is_a_backend_and_never_shows_the_key(http: HttpBackend, wire: WireServer, caplog) -> None:
    assert isinstance(http, Backend)
    assert KEY not in repr(http) and "***" in repr(http)
    http.ensure_session(SID, baseline="base")
    headers = wire.requests[-1]["headers"]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["x-api-key"] == KEY
    caplog.set_level(logging.DEBUG, logger="synth_middleware")
    wrong = HttpBackend(wire.url, api_key="sk-wrong-key-zzzz")
    with pytest.raises(InvalidRequestError) as info:
        wrong.get_state(SID)
    assert info.value.status == 401 and not info.value.retryable
    assert "missing or wrong API key" in str(info.value)
    assert "sk-wrong-key-zzzz" not in str(info.value) + caplog.text + repr(wrong)


def test_session_state_and_candidates_match_the_engine(http: HttpBackend, wire: WireServer) -> None:
    state = http.ensure_session(SID, baseline="You are the baseline.")
    expected = wire.engine.get_state(SID)
    assert {k: state[k] for k in expected} == expected  # plus the create fields
    for i in range(5):
        wire.engine.add_candidate(SID, f"candidate {i}")
    assert http.get_state(SID) == wire.engine.get_state(SID)
    # cursor paging, status filter, sort and include
    seen: list[str] = []
    cursor = None
    while True:
        page = http.list_candidates(
            SID, status="active", limit=2, cursor=cursor, sort="created_at:asc"
        )
        seen += [c["candidate_id"] for c in page["items"]]
        assert all("candidate_content" in c for c in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [c["candidate_id"] for c in wire.engine.get_state(SID)["candidates"]]
    bare = http.list_candidates(SID, include=())
    assert all("candidate_content" not in c for c in bare["items"])
    one = http.get_candidate(seen[1])
    assert one["candidate_content"] == "candidate 0"
    # a second ensure with a new baseline is a prompt change
    again = http.ensure_session(SID, baseline="You are the new baseline.")
    assert again["generation"] == 1
    with pytest.raises(NotFoundError):
        http.get_candidate("cand_missing")
    with pytest.raises(NotFoundError):
        http.get_state("no-such-session")
    assert "GET /api/prompt-learning/online/mipro/systems/no-such-session/state -> 404" not in (
        wire.paths()
    )  # a specific 404 is "missing", not "route missing": no fallback


def test_error_mapping_and_retry_after(http: HttpBackend, wire: WireServer) -> None:
    http.ensure_session(SID)
    wire.fail_next(500, message="database exploded")
    with pytest.raises(BackendError) as info:
        http.get_state(SID)
    assert info.value.status == 500 and info.value.retryable
    assert "database exploded" in str(info.value)
    wire.fail_next(429, retry_after=7)
    with pytest.raises(BackendError) as info:
        http.get_state(SID)
    assert info.value.retryable and info.value.retry_after == 7.0  # type: ignore[attr-defined]
    wire.fail_next(503, retry_after=formatdate(time.time() + 30, usegmt=True))
    with pytest.raises(BackendError) as info:
        http.get_state(SID)
    assert 25 <= info.value.retry_after <= 31  # type: ignore[attr-defined]
    wire.fail_next(422, message="limit: must be <= 1000")
    with pytest.raises(InvalidRequestError) as info:
        http.list_candidates(SID)
    assert not info.value.retryable and "limit: must be <= 1000" in str(info.value)
    refused = HttpBackend(f"http://127.0.0.1:{_free_port()}", timeout=1.0)
    with pytest.raises(BackendError) as info:
        refused.get_state(SID)
    assert info.value.status is None and info.value.retryable


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 12, usegmt=True), now=now) == pytest.approx(12, abs=1)
    assert parse_retry_after(formatdate(now - 12, usegmt=True), now=now) == 0.0


def test_rewards_in_batches_per_item_results(http: HttpBackend, wire: WireServer) -> None:
    http.ensure_session(SID)
    recs = [_reward(i) for i in range(20)]
    recs.insert(3, _reward(99, session=None))  # names only an unknown rollout
    recs.insert(7, _reward(98, value=float("nan")))  # never leaves the client
    res = http.record_rewards(recs)
    assert [r["status"] for r in res].count("accepted") == 20
    assert res[3]["status"] == "rejected" and "unknown rollout_id" in res[3]["error"]
    assert res[7]["status"] == "rejected" and "JSON" in res[7]["error"]
    assert [r["idempotency_key"] for r in res] == [r["idempotency_key"] for r in recs]
    assert http.uses_batch is True
    assert [p for p in wire.paths() if "rewards" in p] == ["POST /api/v1/rewards/batch -> 200"]
    again = http.record_rewards(recs[:3])
    assert [r["status"] for r in again] == ["duplicate"] * 3
    assert sorted(wire.reward_keys(SID)) == sorted(
        r["idempotency_key"] for i, r in enumerate(recs) if i not in (3, 7)
    )


def test_one_request_per_reward_when_no_batch_route(wire: WireServer) -> None:
    wire.batch = False
    http = HttpBackend(wire.url, api_key=KEY, batch_probe_interval=0.3, pool_size=4)
    http.ensure_session(SID)
    http.record_rollouts(
        [
            {
                "session_id": SID,
                "rollout_id": "ro-known",
                "candidate_id": None,
                "created_at": time.time(),
            }
        ]
    )  # a no-op that remembers the session
    recs = [_reward(i) for i in range(12)] + [_reward(50, session=None, rollout_id="ro-known")]
    res = http.record_rewards(recs)
    assert [r["status"] for r in res] == ["accepted"] * 13
    assert http.uses_batch is False
    reward_posts = [r for r in wire.requests if r["path"].endswith("/reward")]
    assert len(reward_posts) == 13
    # the Idempotency-Key header travels with each reward
    assert {r["headers"]["idempotency-key"] for r in reward_posts} == {
        r["idempotency_key"] for r in recs
    }
    assert sorted(wire.reward_keys(SID)) == sorted(r["idempotency_key"] for r in recs)
    probes = [p for p in wire.paths() if "/rewards/batch" in p]
    http.record_rewards([_reward(60)])
    assert [p for p in wire.paths() if "/rewards/batch" in p] == probes  # cached
    time.sleep(0.35)
    wire.batch = True  # the server was upgraded: found again after the probe interval
    http.record_rewards([_reward(61)])
    assert http.uses_batch is True
    # a 4xx for one reward is that reward's rejection, with the server's message
    wire.batch = False
    http2 = HttpBackend(wire.url, api_key=KEY)
    res = http2.record_rewards([_reward(70), _reward(71, session="no-such-session")])
    assert res[0]["status"] == "accepted"
    assert res[1]["status"] == "rejected" and "no-such-session" in res[1]["error"]


def test_partial_delivery_names_what_to_retry(wire: WireServer) -> None:
    wire.batch = False
    http = HttpBackend(wire.url, api_key=KEY, pool_size=1)  # one at a time: deterministic
    http.ensure_session(SID)
    http.record_rewards([_reward(0)])  # discovery done
    wire.fail_next(503, count=2, retry_after=1)
    recs = [_reward(i) for i in range(5)]
    with pytest.raises(PartialDeliveryError) as info:
        http.record_rewards(recs)
    partial = info.value.partial_results
    assert [r is None for r in partial] == [True, True, False, False, False]
    assert info.value.retryable and info.value.retry_after == 1.0
    wire.fail_next(500, count=5)
    with pytest.raises(BackendError) as err:  # none answered: a plain error
        http.record_rewards(recs[:2])
    assert not isinstance(err.value, PartialDeliveryError)


def test_older_routes_on_404(wire: WireServer) -> None:
    wire.engine.ensure_session(SID, baseline="base")
    wire.modern = False
    wire.batch = False
    http = HttpBackend(wire.url, api_key=KEY)
    state = http.get_state(SID)
    assert state["candidates"][0]["is_baseline"] is True
    assert (
        state["candidates"][0]["candidate_id"]
        == wire.engine.get_state(SID)["candidates"][0]["candidate_id"]
    )
    assert http.ensure_session(SID, baseline="base")["session_id"] == SID
    res = http.record_rewards([_reward(1), _reward(2)])
    assert [r["status"] for r in res] == ["accepted", "accepted"]
    posts = [p for p in wire.paths() if "/status" in p]
    assert len(posts) == 4  # a reward, then done, for each
    bodies = len(wire.reward_keys(SID))
    assert bodies == 2


def test_rollouts_batch(http: HttpBackend, wire: WireServer) -> None:
    http.ensure_session(SID)
    http.record_rollouts(
        [
            {
                "session_id": SID,
                "rollout_id": "ro-a",
                "candidate_id": None,
                "created_at": 1.0,
                "input": [{"role": "user", "content": "hi"}],
                "output": "hello",
            },
            {
                "session_id": SID,
                "rollout_id": "ro-b",
                "candidate_id": None,
                "created_at": 1.0,
                "output": object(),
            },  # not JSON: the field is dropped, the rollout kept
        ]
    )
    assert wire.engine.get_state(SID)["rollout_count"] == 2
    recs = wire.engine.rollout_records(SID)
    assert {r["rollout_id"] for r in recs} == {"ro-a", "ro-b"}


def test_keep_alive_reuses_connections(http: HttpBackend, wire: WireServer) -> None:
    http.ensure_session(SID)
    for _ in range(30):
        http.get_state(SID)
    clients = {r["client"] for r in wire.requests}
    assert len(clients) == 1


async def test_async_backend(wire: WireServer) -> None:
    async with AsyncHttpBackend(wire.url, api_key=KEY, pool_size=3) as backend:
        assert KEY not in repr(backend)
        state = await backend.ensure_session(SID, baseline="base")
        assert state["baseline_candidate_id"]
        page = await backend.list_candidates(SID)
        assert page["items"][0]["candidate_content"] == "base"
        res = await backend.record_rewards([_reward(i) for i in range(5)])
        assert [r["status"] for r in res] == ["accepted"] * 5
        wire.batch = False
        backend2 = AsyncHttpBackend(wire.url, api_key=KEY)
        res = await backend2.record_rewards([_reward(i) for i in range(6)])
        assert [r["status"] for r in res] == ["accepted"] * 6
        await backend2.aclose()
        assert len(wire.reward_keys(SID)) == 11
        with pytest.raises(NotFoundError):
            await backend.get_state("missing-session")


def test_remembered_rollout_sessions_are_bounded() -> None:
    """The backend remembers which session each rollout belongs to, for at most
    ``MAX_REMEMBERED_ROLLOUTS`` rollouts (the oldest forgotten first)."""
    from synth_middleware.backends import http as http_mod

    backend = http_mod.HttpBackend("http://127.0.0.1:9", api_key="k")
    try:
        n = http_mod.MAX_REMEMBERED_ROLLOUTS
        for i in range(n + 5):
            backend._remember(f"r{i}", f"s{i}")
        assert len(backend._sessions_of) == n
        assert "r0" not in backend._sessions_of and backend._sessions_of[f"r{n + 4}"] == f"s{n + 4}"
    finally:
        backend.close()
