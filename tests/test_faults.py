"""Faults under the app: a full or read-only database, clock jumps, corrupted
stored candidates. The app's calls keep working and the error is clear."""

from __future__ import annotations

import logging
import sqlite3
import time

import openai
import pytest
from helpers import BASELINE, CANDIDATE, messages, pick, seed, wait_until

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend


def _wrap(server, backend, session, **kw):  # type: ignore[no-untyped-def]
    return synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session=session,
        backend=backend,
        warm=True,
        **kw,
    )


def _close_reporter(client) -> None:  # type: ignore[no-untyped-def]
    """Drop this client's reporter so nothing it still holds (the backend is about
    to close, or the clock was faked) keeps ``synth.flush()`` busy for later tests."""
    client._self_cfg.runtime.reporter.close(1.0)


def _conn(backend: LocalBackend) -> sqlite3.Connection:
    return backend.engine._store._conn  # type: ignore[attr-defined]


def test_disk_full_database(server, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """PRAGMA max_page_count pinned to the current size: every new page fails
    with SQLITE_FULL ("database or disk is full"), as on a full disk."""
    backend = LocalBackend(str(tmp_path / "full.db"))
    (cid,) = seed(backend, "full", CANDIDATE)
    client = _wrap(server, backend, "full", selection=pick(cid))
    client.chat.completions.create(model="m", messages=messages())
    synth.flush(5)
    conn = _conn(backend)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {int(pages)}")
    big = "x" * 20_000  # each rollout's trace needs new pages
    caplog.set_level(logging.WARNING)
    for i in range(40):
        resp = client.chat.completions.create(model="m", messages=messages(user=f"{big} {i}"))
        synth.reward(resp, 1.0)
    assert server.system_prompts()[-1] == CANDIDATE  # still served from the cache
    synth.flush(3)
    # the write really fails (not silently stored)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        conn.execute(
            "INSERT INTO events (session_id, type, payload, created_at) VALUES (?, ?, ?, ?)",
            ("x", "probe", big * 50, 0.0),
        )
    if conn.in_transaction:
        conn.rollback()
    rep = client._self_cfg.runtime.reporter.stats()  # type: ignore[attr-defined]
    assert "full" in str(rep.last_error).lower(), f"the disk-full error is not clear: {rep}"
    # space comes back: delivery resumes
    conn.execute("PRAGMA max_page_count = 1073741823")
    resp = client.chat.completions.create(model="m", messages=messages())
    synth.reward(resp, 0.5)
    # nothing lost: all 41 rewards stored once space is back (retried with backoff)
    assert wait_until(lambda: _rewards(backend, "full") == 41, timeout=30), _rewards(
        backend, "full"
    )
    _close_reporter(client)
    backend.close()


def test_read_only_database(server, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The store opened read-only (``PRAGMA query_only``: chmod does not stop root)."""
    backend = LocalBackend(str(tmp_path / "ro.db"))
    (cid,) = seed(backend, "ro", CANDIDATE)
    client = _wrap(server, backend, "ro", selection=pick(cid))
    _conn(backend).execute("PRAGMA query_only = 1")
    caplog.set_level(logging.WARNING)
    for _ in range(20):
        resp = client.chat.completions.create(model="m", messages=messages())
        synth.reward(resp, 1.0)
    assert server.system_prompts()[-1] == CANDIDATE
    synth.flush(3)
    rep = client._self_cfg.runtime.reporter.stats()  # type: ignore[attr-defined]
    assert rep.sent < 20 or rep.retried > 0
    assert "readonly database" in str(rep.last_error), rep
    _conn(backend).execute("PRAGMA query_only = 0")
    assert wait_until(lambda: _rewards(backend, "ro") == 20, timeout=30), _rewards(backend, "ro")
    _close_reporter(client)
    backend.close()


# --------------------------------------------------------------------------- clocks


class _Clock:
    def __init__(self) -> None:
        self.mono = 0.0
        self.wall = 0.0
        self._m = time.monotonic
        self._w = time.time

    def monotonic(self) -> float:
        return self._m() + self.mono

    def time(self) -> float:
        return self._w() + self.wall


@pytest.mark.parametrize(
    ("mono", "wall"),
    # time.time jumps both ways (NTP, manual changes); time.monotonic only forward
    # (suspend/resume): the OS guarantees it never goes back.
    [(3600.0, 3600.0), (0.0, -3600.0), (3600.0, -86400.0)],
)
def test_clock_jumps_around_ttl_and_rewards(server, backend, monkeypatch, mono, wall) -> None:  # type: ignore[no-untyped-def]
    session = f"clk{int(mono)}_{int(abs(wall))}_{int(wall < 0)}"
    (cid,) = seed(backend, session, CANDIDATE)
    client = _wrap(server, backend, session, ttl=0.3, selection="best")
    clock = _Clock()
    monkeypatch.setattr(time, "monotonic", clock.monotonic)
    monkeypatch.setattr(time, "time", clock.time)
    for _ in range(5):
        resp = client.chat.completions.create(model="m", messages=messages())
        synth.reward(resp, 1.0)
    clock.mono += mono
    clock.wall += wall
    for _ in range(5):
        resp = client.chat.completions.create(model="m", messages=messages())
        synth.reward(resp, 1.0)
    assert wait_until(lambda: _rewards(backend, session) == 10, timeout=15), _rewards(
        backend, session
    )
    # the cache still refreshes after the jump: archiving the candidate takes effect
    backend.archive_candidate(session, cid)

    def baseline_back() -> bool:
        client.chat.completions.create(model="m", messages=messages())
        return server.system_prompts()[-1] == BASELINE

    assert wait_until(baseline_back, timeout=8, interval=0.1), (
        "after a clock jump the cache never refreshed (stale prompt forever)"
    )
    synth.flush(5)
    _close_reporter(client)  # it scheduled its timers on the faked clock


def _rewards(backend: LocalBackend, session: str) -> int:
    return int(backend.get_state(session).get("reward_count") or 0)


# --------------------------------------------------------------------------- corruption


def test_corrupted_candidate_row(server, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A candidate's stored payload overwritten with garbage: the app keeps
    calling (the baseline or the last good prompt) and one clear warning says why."""
    path = str(tmp_path / "corrupt.db")
    backend = LocalBackend(path)
    (cid,) = seed(backend, "cor", CANDIDATE)
    backend.close()
    conn = sqlite3.connect(path)
    n = conn.execute(
        "UPDATE events SET payload = ? WHERE payload LIKE ?", ('{"broken', f"%{cid}%")
    ).rowcount
    conn.execute("DELETE FROM snapshots")
    conn.commit()
    conn.close()
    assert n >= 1
    caplog.set_level(logging.WARNING)
    try:
        backend = LocalBackend(path)
    except Exception as exc:  # refusing to open is fine if the error is clear
        assert "corrupt" in str(exc).lower() or "json" in str(exc).lower() or "cor" in str(exc)
        backend = None
    if backend is not None:
        client = _wrap(server, backend, "cor", warm_timeout=1.0)
        for _ in range(10):
            r = client.chat.completions.create(model="m", messages=messages())
            assert r.choices
        assert set(server.system_prompts()) <= {BASELINE, CANDIDATE}
        warn = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert warn, "a corrupted store went unreported"
        _close_reporter(client)
        backend.close()
