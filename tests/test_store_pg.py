"""The PostgreSQL store's own promises (the shared contract runs in test_engine.py and
test_local_backend.py): migrations, seq order == commit order for log tailers,
fencing of owner-only writes, bounded staleness, clear errors without secrets."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from synth_middleware.engine import Engine, SqliteStore, StorageError, open_store  # noqa: E402
from synth_middleware.engine.schema import MIGRATIONS, latest_version  # noqa: E402
from synth_middleware.engine.store_pg import (  # noqa: E402
    LeaseLostError,
    PostgresStore,
    fenced,
    redact_url,
)

SID = "pg-sess"


def _rollouts(sid: str, ids: list[str]) -> list[dict[str, Any]]:
    return [{"session_id": sid, "rollout_id": r, "candidate_id": None} for r in ids]


def test_migrations_run_once_and_record_the_version(pg_target: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(pg_target))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]  # replicas starting together
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(stores) == 4
    with stores[0].connection() as conn:
        rows = conn.execute("SELECT version FROM synth_schema_version").fetchall()
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (stores[0].schema,),
            )
        }
        conn.execute("UPDATE synth_schema_version SET version = 99")
    assert rows == [(latest_version("postgresql"),)] == [(2,)]
    assert {"events", "reward_keys", "session_leases", "replicas"} <= tables
    for s in stores:
        s.close()
    with pytest.raises(StorageError, match="schema version 99 is newer"):
        PostgresStore(pg_target)


def test_sqlite_keeps_its_version_scheme(tmp_path: Any) -> None:
    """SQLite files stay at PRAGMA user_version 1 (the PostgreSQL-only migration skips
    them), so earlier releases keep opening them."""
    import sqlite3

    path = tmp_path / "s.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1 == latest_version("sqlite")
    assert MIGRATIONS[1].sqlite is None
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="newer than this library"):
        SqliteStore(path)


def test_tailers_never_skip_an_event(pg_target: str) -> None:
    """Writers in several stores (as in several replicas) commit concurrently; a tailer
    reading ``seq > last`` sees every seq, in order, without a gap."""
    setup = Engine(open_store(pg_target))
    for k in range(4):
        setup.ensure_session(f"s{k}", baseline="b")
    setup.close()
    stop = threading.Event()
    seen: list[int] = []
    gaps: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        engine = Engine(open_store(pg_target))
        try:
            for b in range(15):
                engine.record_rollouts(
                    _rollouts(f"s{(w + b) % 4}", [f"w{w}-{b}-{i}" for i in range(5)])
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.close()

    def tailer() -> None:
        with psycopg.connect(pg_target, autocommit=True) as conn:
            last = 0
            while True:
                done = stop.is_set()
                rows = conn.execute("SELECT seq FROM events WHERE seq > %s ORDER BY seq", (last,))
                for (seq,) in rows:
                    if seq != last + 1:
                        gaps.append((last, seq))
                    seen.append(seq)
                    last = seq
                if done:
                    return

    tail = threading.Thread(target=tailer)
    tail.start()
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    tail.join()
    assert not errors, errors[0]
    with psycopg.connect(pg_target) as conn:
        (total,) = conn.execute("SELECT count(*) FROM events").fetchone()
    assert not gaps
    assert seen == list(range(1, total + 1))
    assert total == 4 * 2 + 4 * 15 * 5  # 4 sessions (created, baseline) + the rollouts


def test_owner_writes_are_fenced_by_the_lease(pg_target: str) -> None:
    store = PostgresStore(pg_target)
    engine = Engine(store)
    engine.ensure_session(SID, baseline="b")
    with store.connection() as conn:
        conn.execute(
            "INSERT INTO session_leases VALUES (%s, 'me', 3, EXTRACT(EPOCH FROM now()) + 60)",
            (SID,),
        )
    with fenced(SID, "me", 3):
        engine.add_candidate(SID, "kept")  # holds the lease: written
    for owner, epoch in (("me", 2), ("other", 3)):  # an old epoch, another owner
        with fenced(SID, owner, epoch), pytest.raises(LeaseLostError):
            engine.add_candidate(SID, "refused")
    with store.connection() as conn:
        conn.execute("UPDATE session_leases SET expires_at = 0")
    with fenced(SID, "me", 3), pytest.raises(LeaseLostError):  # expired
        engine.add_candidate(SID, "refused")
    engine.add_candidate(SID, "anyone")  # writes outside owner work are not fenced
    texts = [c["candidate_content"] for c in engine.list_candidates(SID)["items"]]
    assert texts == ["b", "kept", "anyone"]
    engine.close()


def test_bounded_staleness(pg_target: str) -> None:
    writer = Engine(open_store(pg_target))
    reader = Engine(open_store(pg_target, max_staleness=0.3))
    writer.ensure_session(SID, baseline="b")
    assert reader.get_state(SID)["rollout_count"] == 0
    writer.record_rollouts(_rollouts(SID, ["r1"]))
    assert reader.get_state(SID)["rollout_count"] == 0  # within 300 ms: may be stale
    time.sleep(0.35)
    assert reader.get_state(SID)["rollout_count"] == 1  # never older than the bound
    reader.record_rollouts(_rollouts(SID, ["r2"]))
    assert reader.get_state(SID)["rollout_count"] == 2  # its own writes: at once
    cid = writer.add_candidate(SID, "new")
    assert reader.get_candidate(cid)["candidate_id"] == cid  # a lookup by id catches up
    writer.close()
    reader.close()


def test_ids_with_nul_are_rejected_per_record(pg_target: str) -> None:
    engine = Engine(open_store(pg_target))
    engine.ensure_session(SID, baseline="b")
    engine.record_rollouts(_rollouts(SID, ["ok"]))
    results = engine.record_rewards(
        [
            {"idempotency_key": "k\x00", "rollout_id": "ok", "value": 1.0},
            {"idempotency_key": "k1", "rollout_id": "ok", "value": 1.0},
        ]
    )
    assert [r["status"] for r in results] == ["rejected", "accepted"]
    engine.close()


def test_errors_are_clear_and_never_show_the_password() -> None:
    url = "postgresql://synth:s3cret-pw@127.0.0.1:1/nowhere"
    assert redact_url(url) == "postgresql://synth:***@127.0.0.1:1/nowhere"
    assert redact_url("postgresql://h/db") == "postgresql://h/db"
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_store(url, connect_timeout=2)
    assert time.monotonic() - started < 10
    assert "s3cret-pw" not in str(info.value) and "***" in str(info.value)
    assert info.value.retryable
