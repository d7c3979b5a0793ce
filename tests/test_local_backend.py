"""LocalBackend: the Backend protocol over the engine, on real SQLite files and (tests
taking ``store_target``) on a real PostgreSQL schema too."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from synth_middleware.backends.base import Backend
from synth_middleware.backends.local import LocalBackend
from synth_middleware.engine import Engine, StorageError
from synth_middleware.errors import BackendError, InvalidRequestError, NotFoundError

SID = "app:support-bot"


def test_implements_the_backend_protocol(store_target: str) -> None:
    with LocalBackend(store_target) as backend:
        assert isinstance(backend, Backend)
        assert isinstance(backend.engine, Engine)


def test_default_path_creates_parent_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = LocalBackend()
    backend.ensure_session(SID, baseline="b")
    backend.close()
    backend.close()  # idempotent
    assert (tmp_path / ".synth" / "synth.db").is_file()
    with pytest.raises(StorageError):
        backend.get_state(SID)


def test_full_flow(tmp_path: Path, store_target: str) -> None:
    sqlite = "://" not in store_target
    backend = LocalBackend(tmp_path / "deep" / "dir" / "s.db" if sqlite else store_target)
    state = backend.ensure_session(SID, baseline="You are helpful.", kind="gepa_online")
    base = state["baseline_candidate_id"]
    assert state["kind"] == "gepa_online" and state["best_candidate_id"] == base
    cid = backend.add_candidate(SID, "You are concise.")
    backend.record_rollouts(
        [
            {"session_id": SID, "rollout_id": f"ro_{i}", "candidate_id": cid, "created_at": 1.0}
            for i in range(60)
        ]
    )
    results = backend.record_rewards(
        [
            {"idempotency_key": f"k{i}", "rollout_id": f"ro_{i}", "value": 1.0, "created_at": 2.0}
            for i in range(60)
        ]
    )
    assert [r["status"] for r in results] == ["accepted"] * 60
    # the baseline's own evidence (60 rewards of 0.0): the candidate clearly beats it
    backend.record_rewards(
        [
            {"idempotency_key": f"b{i}", "rollout_id": f"rb_{i}", "value": 0.0, "session_id": SID}
            for i in range(60)
        ]  # type: ignore[misc]
    )
    state = backend.get_state(SID)
    assert state["best_candidate_id"] == cid and state["best_reward"] == 1.0
    page = backend.list_candidates(SID, sort="objective:desc,created_at:desc")
    assert page["system_id"] == SID and page["next_cursor"] is None
    assert [c["candidate_id"] for c in page["items"]] == [cid, base]
    assert page["items"][0]["candidate_content"] == "You are concise."
    item = backend.get_candidate(cid)
    assert item["avg_reward"] == 1.0 and item["rollout_count"] == 60
    assert backend.archive_candidate(SID, cid) is True
    assert backend.get_state(SID)["best_candidate_id"] == base  # archived: no longer best
    with pytest.raises(NotFoundError):
        backend.get_candidate("cand_nothere0000")
    with pytest.raises(InvalidRequestError):
        backend.ensure_session("bad id")
    backend.close()


def test_two_backends_on_one_file_see_each_other(store_target: str) -> None:
    a = LocalBackend(store_target)
    b = LocalBackend(store_target)
    base = a.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    assert b.ensure_session(SID, baseline="b")["baseline_candidate_id"] == base
    cid = b.add_candidate(SID, "c")
    a.record_rollouts(
        [{"session_id": SID, "rollout_id": "r1", "candidate_id": cid, "created_at": 0}]
    )
    res = b.record_rewards(
        [{"idempotency_key": "k", "rollout_id": "r1", "value": 0.5, "created_at": 0}]
    )
    assert res[0]["status"] == "accepted"
    assert a.get_candidate(cid)["reward_count"] == 1
    assert a.get_state(SID) == b.get_state(SID)
    assert a.record_rewards([{"idempotency_key": "k", "rollout_id": "r1", "value": 0.5, "created_at": 0}])[0]["status"] == "duplicate"  # fmt: skip
    a.close()
    b.close()


def test_memory_database_with_threads() -> None:
    backend = LocalBackend(":memory:")
    backend.ensure_session(SID, baseline="b")

    def work(t: int) -> None:
        for b in range(10):
            ids = [f"{t}_{b}_{i}" for i in range(10)]
            backend.record_rollouts(
                [
                    {"session_id": SID, "rollout_id": r, "candidate_id": None, "created_at": 0}
                    for r in ids
                ]
            )
            backend.record_rewards(
                [
                    {"idempotency_key": r, "rollout_id": r, "value": 1.0, "created_at": 0}
                    for r in ids
                ]
            )

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = backend.get_state(SID)
    assert state["rollout_count"] == state["reward_count"] == 600
    backend.close()


def _forked_child(backend: LocalBackend) -> None:
    # Uses the connection-owning object inherited from the parent (gunicorn --preload).
    backend.record_rollouts(
        [{"session_id": SID, "rollout_id": "child", "candidate_id": None, "created_at": 0}]
    )
    res = backend.record_rewards(
        [{"idempotency_key": "child", "rollout_id": "child", "value": 1.0, "created_at": 0}]
    )
    assert res[0]["status"] == "accepted"


def test_backend_survives_fork(store_target: str) -> None:
    backend = LocalBackend(store_target)
    backend.ensure_session(SID, baseline="b")
    child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(backend,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    state = backend.get_state(SID)  # the parent's connection still works and sees the child's
    assert state["rollout_count"] == state["reward_count"] == 1
    backend.close()


def test_errors_are_backend_errors(store_target: str) -> None:
    with LocalBackend(store_target) as backend:
        for call in (
            lambda: backend.get_state("missing"),
            lambda: backend.get_candidate("cand_missing"),
            lambda: backend.list_candidates("missing"),
            lambda: backend.archive_candidate("missing", "cand_x"),
        ):
            with pytest.raises(BackendError) as info:
                call()
            assert info.value.status == 404 and not info.value.retryable


def test_reward_throughput_in_batches(
    store_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measured, not asserted: rewards/s recorded in batches of 500 (20,000 rewards)."""
    backend = LocalBackend(store_target)
    backend.ensure_session(SID, baseline="b")
    cid = backend.add_candidate(SID, "c")
    n, size = 20_000, 500
    ids = [f"ro_{os.urandom(12).hex()}" for _ in range(n)]
    for i in range(0, n, 1000):
        backend.record_rollouts(
            [
                {"session_id": SID, "rollout_id": r, "candidate_id": cid, "created_at": 1.0}
                for r in ids[i : i + 1000]
            ]
        )
    records: list[Any] = [
        {
            "idempotency_key": os.urandom(16).hex(),
            "rollout_id": r,
            "value": (i % 10) / 10,
            "created_at": 2.0,
            "feedback": "correct" if i % 2 else None,
        }
        for i, r in enumerate(ids)
    ]
    start = time.perf_counter()
    for i in range(0, n, size):
        backend.record_rewards(records[i : i + size])
    elapsed = time.perf_counter() - start
    assert backend.get_state(SID)["reward_count"] == n
    backend.close()
    with capsys.disabled():
        store = "postgresql" if "://" in store_target else "sqlite"
        print(f"\n[local backend, {store}] {n / elapsed:,.0f} rewards/s ({n} in batches of {size})")
