"""The Backend contract: one suite, run against every backend.

``LocalBackend`` (the engine in-process on a real SQLite file) and ``HttpBackend``
(the wire API) talking to our own server (``create_app`` served by uvicorn on
loopback, which is what ``synth-middleware serve`` runs) must answer the same
calls the same way: the client middleware cannot tell them apart. Each test runs
once per backend; :func:`test_backends_agree_on_one_script` also replays one
script on both and compares the answers field by field, so a drift in either
(a new key, a different status, another error type) fails here.

Differences the contract allows, and only these: an ``HttpBackend`` error
message carries the request (``GET session 'x': HTTP 404: ...``), input the
server's schema refuses is a 422 where the engine says 400 (both
:class:`InvalidRequestError`), and candidate items from the server also name
their ``system_id``/``session_id``.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from synth_middleware.backends.base import (
    Backend,
    CandidateItem,
    CandidateStats,
    RewardRecord,
    RolloutRecord,
    SessionState,
)
from synth_middleware.backends.http import HttpBackend
from synth_middleware.backends.local import LocalBackend
from synth_middleware.errors import BackendError, InvalidRequestError, NotFoundError
from synth_middleware.server.background import BackgroundServer

KEY = "sk-contract-0123456789"
BASE = "You are a helpful assistant."

# The keys of a session state, of its per-candidate statistics and of a candidate
# item, as the protocol declares them (base.py): both backends answer every one.
STATE_KEYS = set(SessionState.__annotations__)
STATS_KEYS = set(CandidateStats.__annotations__)
ITEM_KEYS = set(CandidateItem.__annotations__)
# what the server adds to a candidate item (the wire reference's item has score/objective)
SERVER_ITEM_EXTRAS = {"system_id", "session_id", "score", "objective"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """Our server, as ``synth-middleware serve`` runs it, with a key (one per module:
    every test uses its own session ids)."""
    db = tmp_path_factory.mktemp("contract") / "server.db"
    with BackgroundServer(db_path=str(db), api_key=KEY) as srv:
        yield srv


def _local(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "local.db")


def _http(srv: BackgroundServer) -> HttpBackend:
    return HttpBackend(srv.url, api_key=KEY, timeout=10.0)


@pytest.fixture(params=["local", "http"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn, fresh."""
    b: Backend
    if request.param == "local":
        b = _local(tmp_path)
    else:
        b = _http(request.getfixturevalue("server"))
    yield b
    b.close()


@pytest.fixture
def sid() -> str:
    """A session id of this test alone (the server is shared by the module)."""
    return f"contract:{os.urandom(6).hex()}"


def _rollout(sid: str, rid: str, cid: str | None, **extra: Any) -> RolloutRecord:
    """A rollout record; ``rid`` is made unique to the session (rollout ids are global)."""
    rec: dict[str, Any] = {
        "session_id": sid,
        "rollout_id": f"{sid}/{rid}",
        "candidate_id": cid,
        "created_at": time.time(),
    }
    rec.update(extra)
    return rec  # type: ignore[return-value]  # a dict built field by field


def _reward(
    sid: str, key: str, rid: str, value: Any, *, named: bool = True, **extra: Any
) -> RewardRecord:
    """A reward record for rollout ``rid`` of ``sid`` (naming the session when ``named``);
    the key is made unique to the session (idempotency keys are global)."""
    rec: dict[str, Any] = {
        "idempotency_key": f"{sid}/{key}",
        "rollout_id": f"{sid}/{rid}",
        "value": value,
        "created_at": time.time(),
    }
    if named:
        rec["session_id"] = sid
    rec.update(extra)
    return rec  # type: ignore[return-value]


def _state(answer: Any) -> dict[str, Any]:
    """The protocol's part of a state answer, which has every key of it.

    ``ensure_session`` over HTTP also carries the create answer's fields
    (``proxy_url``, ``correlation_id``, ...): extra keys are allowed, missing ones not.
    """
    assert STATE_KEYS <= set(answer), STATE_KEYS - set(answer)
    for stats in answer["candidates"]:
        assert set(stats) == STATS_KEYS
    return {k: answer[k] for k in STATE_KEYS}


def _stats(state: Any, cid: str) -> dict[str, Any]:
    (found,) = [c for c in state["candidates"] if c["candidate_id"] == cid]
    return dict(found)


# ------------------------------------------------------------------ sessions
def test_is_a_backend(backend: Backend) -> None:
    assert isinstance(backend, Backend)


def test_ensure_session_creates_once(backend: Backend, sid: str) -> None:
    state = _state(backend.ensure_session(sid, baseline=BASE))
    assert state["session_id"] == sid and state["kind"] == "mipro_online"
    assert state["status"] == "running" and state["generation"] == 0
    assert state["rollout_count"] == state["reward_count"] == 0
    base = state["baseline_candidate_id"]
    assert base and state["best_candidate_id"] == base
    assert state["best_reward"] is None
    (stats,) = state["candidates"]
    assert set(stats) == STATS_KEYS
    assert stats == {
        "candidate_id": base,
        "avg_reward": None,
        "rollout_count": 0,
        "reward_count": 0,
        "reward_m2": 0.0,
        "is_baseline": True,
        "status": "active",
        "parent_id": None,
    }
    # ensure is idempotent: the same call changes nothing
    again = backend.ensure_session(sid, baseline=BASE)
    assert _state(again) == state
    assert _state(backend.get_state(sid)) == state


def test_ensure_session_keeps_its_kind(backend: Backend, sid: str) -> None:
    state = backend.ensure_session(sid, baseline=BASE, kind="gepa_online")
    assert state["kind"] == "gepa_online"
    assert backend.get_state(sid)["kind"] == "gepa_online"


def test_a_changed_baseline_is_a_new_generation(backend: Backend, sid: str) -> None:
    first = backend.ensure_session(sid, baseline=BASE)
    old = first["baseline_candidate_id"]
    changed = backend.ensure_session(sid, baseline="You are terse.")
    new = changed["baseline_candidate_id"]
    assert changed["generation"] == 1 and new != old
    assert changed["best_candidate_id"] == new
    assert _stats(changed, old)["status"] == "archived"
    assert _stats(changed, new)["is_baseline"] and _stats(changed, new)["status"] == "active"
    assert backend.get_candidate(new)["candidate_content"] == "You are terse."
    # the old prompt's candidate is archived, not lost
    assert backend.get_candidate(old)["candidate_content"] == BASE


def test_unknown_session_is_not_found(backend: Backend, sid: str) -> None:
    for call in (
        lambda: backend.get_state(sid),
        lambda: backend.list_candidates(sid),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.status == 404 and info.value.code == "session_not_found"
        assert f"unknown session '{sid}'" in str(info.value)
        assert not info.value.retryable


@pytest.mark.parametrize(
    ("session_id", "kind"),
    [("", "mipro_online"), ("bad id with spaces/and slashes", "mipro_online"), (None, "nope")],
    ids=["empty-id", "bad-id", "bad-kind"],
)
def test_bad_session_input_is_refused_and_loses_nothing(
    backend: Backend, sid: str, session_id: str | None, kind: str
) -> None:
    before = _state(backend.ensure_session(sid, baseline=BASE))
    with pytest.raises(InvalidRequestError) as info:
        target = sid if session_id is None else session_id
        backend.ensure_session(target, baseline="other", kind=kind)  # type: ignore[arg-type]
    # 400 from the engine, 422 from the server's schema: a client error either way
    assert info.value.status in (400, 422) and not info.value.retryable
    assert ("kind" if kind == "nope" else "session_id") in str(info.value)
    assert _state(backend.get_state(sid)) == before


# ------------------------------------------------------------------ candidates
def test_list_and_get_candidates(backend: Backend, sid: str) -> None:
    backend.ensure_session(sid, baseline="p0")
    backend.ensure_session(sid, baseline="p1")
    state = backend.ensure_session(sid, baseline="p2")
    base = state["baseline_candidate_id"]
    page = backend.list_candidates(sid)
    assert page["next_cursor"] is None and page["system_id"] == sid
    items = page["items"]
    assert len(items) == 3
    extras = {k for item in items for k in item} - ITEM_KEYS
    assert extras <= SERVER_ITEM_EXTRAS
    assert all(ITEM_KEYS <= set(item) for item in items)
    assert sorted(i["candidate_content"] for i in items) == ["p0", "p1", "p2"]
    assert {i["candidate_id"] for i in items} == {c["candidate_id"] for c in state["candidates"]}

    active = backend.list_candidates(sid, status="active")["items"]
    assert [i["candidate_id"] for i in active] == [base]
    archived = backend.list_candidates(sid, status="archived")["items"]
    assert sorted(i["candidate_content"] for i in archived) == ["p0", "p1"]

    # pages of one, by cursor, cover every candidate once
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        page = backend.list_candidates(sid, limit=1, cursor=cursor)
        seen += [i["candidate_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(i["candidate_id"] for i in items)

    one = backend.get_candidate(base)
    assert one["candidate_id"] == base and one["candidate_content"] == "p2"
    assert one["is_baseline"] and one["status"] == "active" and one["generation"] == 2
    assert {k: one[k] for k in ITEM_KEYS} == {  # type: ignore[literal-required]
        k: next(i for i in items if i["candidate_id"] == base)[k] for k in ITEM_KEYS
    }


def test_unknown_candidate_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFoundError) as info:
        backend.get_candidate("cand_does_not_exist")
    assert info.value.status == 404 and info.value.code == "candidate_not_found"
    assert "unknown candidate 'cand_does_not_exist'" in str(info.value)


# ------------------------------------------------------------------ rollouts and rewards
def test_rollouts_are_idempotent(backend: Backend, sid: str) -> None:
    base = backend.ensure_session(sid, baseline=BASE)["baseline_candidate_id"]
    batch = [_rollout(sid, f"ro-{i}", base) for i in range(5)]
    backend.record_rollouts(batch)
    backend.record_rollouts(batch)  # redelivery (a retry after a timeout)
    backend.record_rollouts(batch[:2])
    state = backend.get_state(sid)
    assert state["rollout_count"] == 5
    assert _stats(state, base)["rollout_count"] == 5


def test_bad_rollouts_are_skipped_and_the_rest_stored(
    backend: Backend, sid: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = backend.ensure_session(sid, baseline=BASE)["baseline_candidate_id"]
    caplog.set_level(logging.WARNING, logger="synth_middleware")
    backend.record_rollouts(
        [
            _rollout(sid, "good-1", base),
            _rollout(f"{sid}-unknown", "bad-session", base),  # a session never made
            _rollout(sid, "good-2", base),
        ]
    )
    state = backend.get_state(sid)
    assert state["rollout_count"] == 2
    assert "skipped 1" in caplog.text and "unknown session" in caplog.text  # said, once
    # the skipped rollout left no trace: a reward for it names no known rollout
    (res,) = backend.record_rewards(
        [_reward(f"{sid}-unknown", "k-bad", "bad-session", 1.0, named=False)]
    )
    assert res["status"] == "rejected" and "unknown rollout_id" in str(res.get("error"))


def test_reward_batch_answers_each_item_in_order(backend: Backend, sid: str) -> None:
    base = backend.ensure_session(sid, baseline=BASE)["baseline_candidate_id"]
    backend.record_rollouts([_rollout(sid, f"ro-{i}", base) for i in range(4)])
    batch = [
        _reward(sid, "k-0", "ro-0", 1.0),
        _reward(sid, "k-nan", "ro-1", math.nan),
        _reward(sid, "k-1", "ro-1", 0.0, named=False),  # the session comes from the rollout
        _reward(sid, "k-inf", "ro-2", math.inf),
        _reward(sid, "k-text", "ro-2", "high"),
        _reward(sid, "k-unknown", "ro-missing", 0.5, named=False),  # no rollout, no session
        _reward(sid, "k-0", "ro-0", 0.25),  # a key reused for another reward: refused
        _reward(sid, "k-0", "ro-0", 1.0),  # the same reward again: a duplicate
        _reward(sid, "k-2", "ro-2", 0.5, feedback="fine", metadata={"why": "ok"}),
    ]
    results = backend.record_rewards(batch)
    assert [r["idempotency_key"] for r in results] == [r["idempotency_key"] for r in batch]
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "duplicate",
        "accepted",
    ]
    errors = [str(r.get("error")) for r in results]
    for r in results:
        assert (r["status"] == "rejected") == (r.get("error") is not None), r
    assert "finite real number, not 'high'" in errors[4]
    assert f"unknown rollout_id '{sid}/ro-missing'" in errors[5]
    assert "idempotency_key conflict" in errors[6]
    # the rejected ones changed nothing; the accepted ones are in the statistics
    state = backend.get_state(sid)
    assert state["reward_count"] == 3
    stats = _stats(state, base)
    assert stats["reward_count"] == 3
    assert stats["avg_reward"] == pytest.approx(0.5)
    assert stats["reward_m2"] == pytest.approx(0.5)  # (1-.5)^2 + (0-.5)^2 + 0
    assert state["best_reward"] == pytest.approx(0.5)


def test_rewards_are_idempotent_across_calls(backend: Backend, sid: str) -> None:
    base = backend.ensure_session(sid, baseline=BASE)["baseline_candidate_id"]
    backend.record_rollouts([_rollout(sid, "ro-a", base)])
    first = backend.record_rewards([_reward(sid, "key-a", "ro-a", 1.0)])
    assert [r["status"] for r in first] == ["accepted"]
    # a redelivery is a duplicate; the key reused for another value is refused (a key
    # names one reward): either way the first one stands
    again = backend.record_rewards(
        [_reward(sid, "key-a", "ro-a", 1.0), _reward(sid, "key-a", "ro-a", 0.0)]
    )
    assert [r["status"] for r in again] == ["duplicate", "rejected"]
    assert "idempotency_key conflict" in str(again[1].get("error"))
    stats = _stats(backend.get_state(sid), base)
    assert stats["reward_count"] == 1 and stats["avg_reward"] == 1.0


def test_a_reward_may_come_before_its_rollout_when_it_names_the_session(
    backend: Backend, sid: str
) -> None:
    base = backend.ensure_session(sid, baseline=BASE)["baseline_candidate_id"]
    (res,) = backend.record_rewards([_reward(sid, "early", "ro-late", 0.75, candidate_id=base)])
    assert res["status"] == "accepted"
    backend.record_rollouts([_rollout(sid, "ro-late", base)])
    state = backend.get_state(sid)
    assert state["rollout_count"] == 1 and state["reward_count"] == 1
    assert _stats(state, base)["avg_reward"] == 0.75


def test_empty_batches_are_fine(backend: Backend, sid: str) -> None:
    before = _state(backend.ensure_session(sid, baseline=BASE))
    backend.record_rollouts([])
    assert backend.record_rewards([]) == []
    assert _state(backend.get_state(sid)) == before


def test_errors_are_backend_errors(backend: Backend) -> None:
    # the reporter and the cache catch BackendError alone: every failure must be one
    assert issubclass(NotFoundError, BackendError) and issubclass(InvalidRequestError, BackendError)
    with pytest.raises(BackendError):
        backend.get_state("contract:never-made")


# ------------------------------------------------------------------ both at once
def _script(b: Backend, sid: str) -> list[Any]:
    """A short life of a session; returns every answer, with ids made symbolic."""
    out: list[Any] = []
    names: dict[str, str] = {}
    versions: dict[str, int] = {}

    def sym(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("cand_"):
            return names.setdefault(value, f"<cand {len(names)}>")
        return value

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {
                sym(k): clean(v, k)
                for k, v in sorted(value.items())
                if k not in SERVER_ITEM_EXTRAS and k != "created_at"
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        if key == "version":  # the store's counter, shared by its sessions: compare steps
            return value - versions.setdefault("first", value)
        if key == "error" and ("NaN/inf" in value or "finite real number, not nan" in value):
            # HttpBackend refuses NaN before sending (JSON has none): its own words
            return "<not a finite number>"
        return sym(value)

    def step(name: str, fn: Callable[[], Any]) -> None:
        try:
            out.append((name, clean(fn())))
        except BackendError as exc:
            out.append((name, type(exc).__name__, exc.status if exc.status == 404 else "4xx"))

    step("create", lambda: _state(b.ensure_session(sid, baseline=BASE, kind="gepa_online")))
    base = b.get_state(sid)["baseline_candidate_id"]
    assert base is not None
    step("rollouts", lambda: b.record_rollouts([_rollout(sid, f"r{i}", base) for i in range(6)]))
    step(
        "rewards",
        lambda: b.record_rewards(
            [_reward(sid, f"k{i}", f"r{i}", i / 5, named=bool(i % 2)) for i in range(6)]
            + [_reward(sid, "k0", "r0", 0.0), _reward(sid, "bad", "r9", math.nan)]
        ),
    )
    step("state", lambda: b.get_state(sid))
    step("change", lambda: _state(b.ensure_session(sid, baseline="New prompt.")))
    step("list", lambda: b.list_candidates(sid, sort="created_at:asc"))
    step("get", lambda: b.get_candidate(base))
    step("unknown", lambda: b.get_state(f"{sid}-x"))
    step("bad kind", lambda: b.ensure_session(sid, kind="other"))  # type: ignore[arg-type]
    step("state again", lambda: b.get_state(sid))
    return out


def test_backends_agree_on_one_script(tmp_path: Path, server: BackgroundServer) -> None:
    local, http = _local(tmp_path), _http(server)
    try:
        sid = f"contract:{os.urandom(6).hex()}"
        here, there = _script(local, sid), _script(http, sid)
    finally:
        local.close()
        http.close()
    assert [s[0] for s in here] == [s[0] for s in there]
    for a, b in zip(here, there, strict=True):
        if a != b:
            diff = difflib.unified_diff(
                _lines(a), _lines(b), "LocalBackend", "HttpBackend", lineterm=""
            )
            pytest.fail(f"the backends differ at step {a[0]!r}:\n" + "\n".join(diff))


def _lines(value: Any) -> list[str]:
    return json.dumps(value, indent=1, sort_keys=True, default=repr).splitlines()
