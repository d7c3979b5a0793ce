"""The durable outbox: rows before delivery, deleted after confirmation, leftovers
resent, and a worker killed with SIGKILL loses nothing it had accepted."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _wire_server import ClosingHttpBackend as HttpBackend
from _wire_server import WireServer, close_backends
from helpers import reward_record, wait_until

from synth_middleware.client._outbox import Outbox, owner_token
from synth_middleware.client.reporter import RewardReporter

SID = "outbox-sess"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_backends() -> Iterator[None]:
    yield
    close_backends()


def _reward(i: int, **extra: Any) -> dict[str, Any]:
    return reward_record(i, SID, **extra)


def _send(rep: RewardReporter, n: int, start: int = 0) -> list[str]:
    keys = []
    for i in range(start, start + n):
        rec = _reward(i)
        assert rep.add_reward(rec)  # type: ignore[arg-type]
        keys.append(rec["idempotency_key"])
    return keys


def _exactly_once(wire: WireServer, keys: list[str]) -> None:
    stored = wire.reward_keys(SID)
    assert len(stored) == len(set(stored)), "a reward was stored twice"
    assert sorted(stored) == sorted(keys)


@pytest.mark.parametrize("sync", [False, True], ids=["group-commit", "sync"])
def test_rows_exist_until_the_backend_confirms(wire, make_reporter, tmp_path, sync):
    path = tmp_path / "outbox.db"
    rep = make_reporter(HttpBackend(wire.url, timeout=1.0), outbox=path, outbox_sync=sync)
    wire.refuse()
    keys = _send(rep, 40)
    assert rep.wait_persisted(5)
    assert rep.stats().persisted == 40
    rows = sqlite3.connect(path).execute("SELECT idempotency_key FROM synth_outbox").fetchall()
    assert sorted(k for (k,) in rows) == sorted(keys)
    wire.resume()
    assert rep.flush(10)
    _exactly_once(wire, keys)
    assert rep.outbox is not None and rep.outbox.count() == 0


def test_rejected_rewards_leave_the_outbox(wire, make_reporter, tmp_path):
    rep = make_reporter(HttpBackend(wire.url, timeout=1.0), outbox=tmp_path / "o.db")
    good = _send(rep, 3)
    rep.add_reward(_reward(9, session_id="no-such-session"))  # type: ignore[arg-type]
    assert not rep.flush(10)
    s = rep.stats()
    assert s.sent == 3 and s.rejected == 1
    _exactly_once(wire, good)
    assert rep.outbox is not None and rep.outbox.count() == 0


def test_given_up_rewards_stay_in_the_outbox_and_are_retried(wire, make_reporter, tmp_path):
    rep = make_reporter(
        HttpBackend(wire.url, timeout=1.0),
        outbox=tmp_path / "o.db",
        max_retries=1,
        max_backoff=60.0,  # a deferred row waits this long unless a flush asks for it
    )
    wire.refuse()
    keys = _send(rep, 30)
    assert wait_until(lambda: rep.stats().deferred == 30, 10)
    s = rep.stats()
    assert s.failed == 0 and s.queued == 30  # not lost: waiting in the outbox
    assert rep.outbox is not None and rep.outbox.count() == 30
    assert not rep.flush(0.2)
    wire.resume()
    assert rep.flush(10)  # a flush takes deferred rows now
    _exactly_once(wire, keys)
    assert rep.outbox.count() == 0 and rep.stats().queued == 0


def test_full_memory_queue_spills_to_the_outbox(wire, make_reporter, tmp_path):
    rep = make_reporter(
        HttpBackend(wire.url, timeout=1.0),
        outbox=tmp_path / "o.db",
        max_queue=10,
        batch_size=5,
    )
    wire.refuse()
    keys = _send(rep, 200)
    assert rep.wait_persisted(5)
    s = rep.stats()
    assert s.dropped == 0 and s.persisted == 200 and s.queued == 200
    wire.resume()
    # flush() makes rows deferred during the outage due at once, not after
    # their retry delay (max_backoff, far longer than this test may take).
    t0 = time.monotonic()
    assert rep.flush(30), rep.stats()
    assert time.monotonic() - t0 < 10, "deferred rows waited out their retry delay"
    _exactly_once(wire, keys)


def test_flush_sends_rows_deferred_by_an_outage_at_once(wire, make_reporter, tmp_path):
    # Few retries and a long retry delay: during the outage most rows are tried,
    # given up on and deferred by 20 s; one flush() after recovery must not wait
    # that out, however many claims the small memory queue needs.
    rep = make_reporter(
        HttpBackend(wire.url, timeout=1.0),
        outbox=tmp_path / "o.db",
        max_queue=10,
        batch_size=5,
        max_retries=1,
        backoff=0.01,
        max_backoff=20.0,
    )
    wire.refuse()
    keys = _send(rep, 60)
    deadline = time.monotonic() + 20
    while rep.stats().deferred < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rep.stats().deferred >= 20, rep.stats()
    wire.resume()
    t0 = time.monotonic()
    assert rep.flush(15), rep.stats()
    assert time.monotonic() - t0 < 10
    _exactly_once(wire, keys)


def test_adoption_rules(tmp_path):
    path = tmp_path / "o.db"
    ob = Outbox(path, dest="d", lease=0.5)
    conn = sqlite3.connect(path, isolation_level=None)

    def plant(owner: str, pid: int, lease_until: float, n: int) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO synth_outbox_owners VALUES (?, ?, ?)",
            (owner, pid, lease_until),
        )
        for i in range(n):
            conn.execute(
                "INSERT INTO synth_outbox (dest, idempotency_key, body, created_at, owner, "
                "queued) VALUES ('d', ?, ?, 0, ?, 1)",
                (f"{owner}-{i}", f'{{"idempotency_key": "{owner}-{i}"}}', owner),
            )

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        plant(f"{live.pid}:live", live.pid, time.time() + 60, 3)  # alive, leased: not ours
        plant("999999:gone", 999_999, time.time() + 60, 2)  # no such pid: adopt
        plant(f"{os.getpid()}:old", os.getpid(), time.time() + 60, 1)  # our pid, old run
        plant(f"{os.getppid()}:stale", os.getppid(), time.time() - 1, 4)  # lease ran out
        plant("1:other-dest", 1, 0, 0)
        conn.execute(
            "INSERT INTO synth_outbox (dest, idempotency_key, body, created_at, owner) "
            "VALUES ('elsewhere', 'x', '{}', 0, '999998:gone')"
        )
        assert ob.adopt() == 7
        assert ob.adopt() == 0
        claimed = ob.claim(100)
        assert sorted(rec["idempotency_key"] for _, rec in claimed) == sorted(
            [f"999999:gone-{i}" for i in range(2)]
            + [f"{os.getpid()}:old-0"]
            + [f"{os.getppid()}:stale-{i}" for i in range(4)]
        )
        live.kill()
        live.wait()
        assert ob.adopt() == 3  # its owner died
    finally:
        live.kill()
        live.wait()
    assert ob.count(mine=True) == 10 and ob.count() == 10
    ids = [rid for rid, _ in claimed]
    ob.defer(ids[:2], 30)
    assert ob.waiting() == 5  # 3 newly adopted + 2 deferred
    assert len(ob.claim(100)) == 3  # the deferred ones are not due yet
    assert len(ob.claim(100, ignore_not_before=True)) == 2
    ob.delete(ids)
    assert ob.count() == 3
    assert owner_token().startswith(f"{os.getpid()}:")
    ob.close()


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    import openai
    import synth_middleware as synth
    from synth_middleware.backends.http import HttpBackend
    from synth_middleware.client.reporter import all_reporters

    url, outbox, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    backend = HttpBackend(url, timeout=0.3)
    synth.wrap(openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1"),
               session={sid!r}, backend=backend, outbox=outbox, batch_size=20,
               flush_interval=0.01)
    (rep,) = all_reporters()
    rep.backoff, rep.max_backoff = 0.05, 0.2
    if mode == "drain":
        print("FLUSHED", synth.flush(20), flush=True)
        print("LEFT", rep.outbox.count(), flush=True)
        sys.exit(0)
    keys = []
    for i in range(n):
        key = synth.reward(synth.Rollout({sid!r}, f"ro-{{os.getpid()}}-{{i}}"), 1.0)
        keys.append(key)
        if mode == "sync":
            print("KEY", key, flush=True)  # reward() returned: committed
            time.sleep(0.002)
    if mode == "group":
        assert rep.wait_persisted(10)  # accepted == committed (see the reporter docs)
        for key in keys:
            print("KEY", key, flush=True)
    print("READY", flush=True)
    time.sleep(60)
    """
)


def _worker(tmp_path: Path, url: str, outbox: Path, n: int, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=str(ROOT), sid=SID))
    env = dict(os.environ)
    env["SYNTH_OUTBOX_SYNC"] = "1" if mode == "sync" else "0"
    env.pop("SYNTH_OUTBOX", None)
    return subprocess.Popen(
        [sys.executable, str(script), url, str(outbox), str(n), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tmp_path),
    )


@pytest.mark.parametrize("mode", ["group", "sync"])
def test_sigkill_mid_flight_then_restart_delivers_everything_once(wire, tmp_path, mode):
    outbox = tmp_path / "outbox.db"
    # the server stores what it gets but answers after the client's 0.3 s timeout,
    # so the worker's first batch lands, is never confirmed, and everything waits
    wire.delay = 1.0
    proc = _worker(tmp_path, wire.url, outbox, 400 if mode == "group" else 5000, mode)
    keys: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("KEY "):
                keys.append(line.split()[1])
            if mode == "group" and line.startswith("READY"):
                break
            if mode == "sync" and len(keys) >= 150 and wire.received:
                break  # mid-production and mid-flight
        assert wait_until(lambda: len(wire.received) >= 1, 10)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes the pipe
    assert proc.returncode == -signal.SIGKILL
    stored_before = set(wire.reward_keys(SID))
    assert 0 < len(stored_before) < len(keys)
    wire.delay = 0.0
    drain = _worker(tmp_path, wire.url, outbox, 0, "drain")
    out, _ = drain.communicate(timeout=60)
    assert "FLUSHED True" in out and "LEFT 0" in out, out
    stored = wire.reward_keys(SID)
    assert len(stored) == len(set(stored)), "a reward was stored twice"
    missing = set(keys) - set(stored)
    assert not missing, f"{len(missing)} accepted reward(s) lost"
    # in sync mode the process may have committed one more reward than it printed
    assert len(stored) - len(keys) <= (1 if mode == "sync" else 0)
    assert max(wire.received_counts().values()) >= 2  # resent after the kill; deduplicated
