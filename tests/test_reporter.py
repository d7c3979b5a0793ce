"""Reward delivery through a server that fails on purpose: every reward arrives once.

The server is a real HTTP server on loopback over a real engine
(``_wire_server.WireServer``); the client is ``HttpBackend`` with the reporter.
"Exactly once" is checked in the engine (each idempotency key stored once,
the count equal to what was sent), while the server's log shows the retries
that made it necessary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from _wire_server import ClosingHttpBackend as HttpBackend
from _wire_server import WireServer, close_backends
from helpers import messages, reward_record, wait_until

import synth_middleware as synth
from synth_middleware.client.reporter import RewardReporter
from synth_middleware.errors import BackendError

SID = "rep-sess"


@pytest.fixture(autouse=True)
def _close_backends() -> Iterator[None]:
    yield
    close_backends()


def _reward(i: int, **extra: Any) -> dict[str, Any]:
    return reward_record(i, SID, **{"value": (i % 3) / 2, **extra})


def _send(rep: RewardReporter, n: int, start: int = 0) -> list[str]:
    keys = []
    for i in range(start, start + n):
        rec = _reward(i)
        assert rep.add_reward(rec)
        keys.append(rec["idempotency_key"])
    return keys


def _exactly_once(wire: WireServer, keys: list[str]) -> None:
    stored = wire.reward_keys(SID)
    assert len(stored) == len(set(stored)), "a reward was stored twice"
    assert sorted(stored) == sorted(keys), "a reward is missing (or unexpected)"
    assert wire.engine.get_state(SID)["reward_count"] == len(keys)


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_refused_connections_then_recovery(wire, make_reporter, batch):
    wire.batch = batch
    rep = make_reporter(HttpBackend(wire.url, timeout=1.0))
    wire.refuse()
    keys = _send(rep, 120)
    assert wait_until(lambda: rep.stats().retried >= 2, 5)
    assert wire.reward_keys(SID) == []
    assert (
        "ConnectError" in (rep.stats().last_error or "")
        or "connect" in (rep.stats().last_error or "").lower()
    )
    assert not rep.flush(0.2)  # not delivered yet, and the flush did not hang
    wire.resume()
    keys += _send(rep, 30, start=1000)
    assert rep.flush(15)
    _exactly_once(wire, keys)
    s = rep.stats()
    assert s.sent == len(keys) and s.failed == s.dropped == s.rejected == 0 and s.queued == 0


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_server_errors_then_recovery(wire, make_reporter, batch):
    wire.batch = batch
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0))
    wire.fail_next(500, count=6, message="the database is on fire")
    wire.fail_next(502, count=2)
    keys = _send(rep, 200)
    assert rep.flush(15)
    _exactly_once(wire, keys)
    s = rep.stats()
    assert s.retried >= 1 and s.sent == 200 and s.failed == 0
    statuses = [r["status"] for r in wire.requests]
    assert statuses.count(500) == 6 and statuses.count(502) == 2


def test_429_retry_after_is_honoured(wire, make_reporter):
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0), max_backoff=5.0)
    wire.fail_next(429, retry_after=1, message="slow down")
    keys = _send(rep, 40)
    assert rep.flush(10)
    _exactly_once(wire, keys)
    posts = [r for r in wire.requests if r["path"] == "/api/v1/rewards/batch"]
    assert posts[0]["status"] == 429
    waited = posts[1]["at"] - posts[0]["at"]
    assert waited >= 0.95, f"retried after {waited:.2f}s despite Retry-After: 1"
    assert "slow down" in (rep.stats().last_error or "")


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_slow_answers_time_out_and_retries_are_deduplicated(wire, make_reporter, batch):
    wire.batch = batch
    rep = make_reporter(HttpBackend(wire.url, timeout=0.25))
    keys = _send(rep, 1, start=-1)
    assert rep.flush(5)  # batch support discovered before the server slows down
    wire.delay = 0.6  # stores, then answers after the client gave up
    keys += _send(rep, 60)
    assert wait_until(lambda: len(wire.received) >= 1 and rep.stats().retried >= 1, 10)
    wire.delay = 0.0
    assert rep.flush(15)
    _exactly_once(wire, keys)
    counts = wire.received_counts()
    assert max(counts.values()) >= 2, "expected a retry of already stored rewards"
    s = rep.stats()
    assert s.sent + s.duplicates == len(keys) and s.duplicates >= 1


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_connection_dropped_mid_response(wire, make_reporter, batch):
    wire.batch = batch
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0))
    rep.add_reward(_reward(-1))  # discovery (batch or not) done before the drops
    assert rep.flush(5)
    wire.drop_next(3)
    keys = _send(rep, 90)
    assert rep.flush(15)
    _exactly_once(wire, keys + [k for k in wire.reward_keys(SID) if k.startswith("key--1-")])
    assert max(wire.received_counts().values()) >= 2  # stored, answer lost, sent again
    assert rep.stats().duplicates >= 1


def test_permanent_errors_are_not_retried(wire, make_reporter):
    seen: list[tuple[str, Any]] = []
    rep = make_reporter(
        HttpBackend(wire.url, timeout=2.0), on_error=lambda what, item: seen.append((what, item))
    )
    wire.fail_next(403, count=100, message="this key may not write rewards")
    keys = _send(rep, 10)
    assert not rep.flush(5)
    s = rep.stats()
    assert s.failed == 10 and s.retried == 0
    assert "this key may not write rewards" in (s.last_error or "")
    assert [w for w, _ in seen] == ["failed"] * 10
    assert {item["idempotency_key"] for _, item in seen} == set(keys)
    posts = [r for r in wire.requests if r["path"].endswith("/batch")]
    assert 1 <= len(posts) <= 3 and {r["status"] for r in posts} == {403}  # one per batch


def test_oversized_batch_is_split_and_nothing_is_lost(wire, make_reporter):
    wire.max_batch = 7  # the server refuses bigger batches with 413
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0), batch_size=50)
    keys = _send(rep, 50)
    assert rep.flush(10)
    _exactly_once(wire, keys)
    assert rep.stats().failed == rep.stats().rejected == 0


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_bad_input_in_a_batch_is_rejected_alone(wire, make_reporter, batch):
    wire.batch = batch
    rejected: list[Any] = []
    rep = make_reporter(
        HttpBackend(wire.url, timeout=2.0),
        batch_size=100,
        interval=0.2,
        on_error=lambda what, item: rejected.append((what, item)),
    )
    good = [_reward(i) for i in range(6)]
    bad = [
        _reward(100, session_id=None),  # names no session and an unknown rollout
        _reward(101, feedback="é" * 40_000),  # 80 KB of UTF-8: over the 64 KiB limit
        _reward(102, value=float("nan")),  # cannot even be encoded as JSON
        _reward(103, value="0.5"),  # a string
        _reward(104, session_id="no-such-session"),
        _reward(105, metadata={"x": float("inf")}),
    ]
    batch_items = good[:3] + bad + good[3:]
    for rec in batch_items:
        rep.add_reward(rec)  # type: ignore[arg-type]
    assert not rep.flush(10)  # False: some were rejected
    _exactly_once(wire, [r["idempotency_key"] for r in good])
    s = rep.stats()
    assert s.sent == 6 and s.rejected == 6 and s.failed == 0
    assert [w for w, _ in rejected] == ["rejected"] * 6
    assert {item["idempotency_key"] for _, item in rejected} == {r["idempotency_key"] for r in bad}
    if batch:  # the first reward after idle goes at once; the rest gather into one batch
        assert len([r for r in wire.requests if r["path"] == "/api/v1/rewards/batch"]) <= 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_flush_restarts_a_dead_worker(wire, make_reporter):
    class DiesOnce:
        """A backend whose first delivery kills the worker thread (BaseException)."""

        def __init__(self, inner: HttpBackend) -> None:
            self.inner = inner
            self.died = False
            self.go = threading.Event()

        def record_rewards(self, rewards: Any) -> Any:
            if not self.died:
                self.go.wait(5)  # die only once every reward is queued
                self.died = True
                raise SystemExit("worker killed")
            return self.inner.record_rewards(rewards)

        def record_rollouts(self, rollouts: Any) -> None:
            self.inner.record_rollouts(rollouts)

    backend = DiesOnce(HttpBackend(wire.url, timeout=2.0))
    rep = make_reporter(backend)
    keys = _send(rep, 20)
    backend.go.set()
    assert wait_until(lambda: backend.died, 5)
    assert wait_until(lambda: rep._thread is None or not rep._thread.is_alive(), 5)
    t0 = time.monotonic()
    assert rep.flush(5)  # restarts the worker; the batch it held was kept
    assert time.monotonic() - t0 < 5
    _exactly_once(wire, keys)


def test_flush_times_out_when_the_server_hangs(wire, make_reporter):
    rep = make_reporter(HttpBackend(wire.url, timeout=5.0))
    wire.delay = 3.0
    _send(rep, 5)
    t0 = time.monotonic()
    assert not rep.flush(0.3)
    assert time.monotonic() - t0 < 0.8
    assert rep.stats().queued == 5


def test_full_queue_drops_are_counted(wire, make_reporter):
    dropped: list[Any] = []
    rep = make_reporter(
        HttpBackend(wire.url, timeout=1.0),
        max_queue=10,
        batch_size=5,
        on_error=lambda what, item: dropped.append(what),
    )
    wire.refuse()
    accepted = sum(rep.add_reward(_reward(i)) for i in range(40))
    assert rep.stats().dropped == 40 - accepted >= 20
    assert dropped == ["dropped"] * (40 - accepted)
    wire.resume()
    assert not rep.flush(10)  # False: some were dropped
    assert len(wire.reward_keys(SID)) == accepted


def test_idempotency_key_travels_end_to_end(wire, server):
    """reward() -> reporter -> HttpBackend (body and header) -> server -> engine."""
    wire.batch = False
    backend = HttpBackend(wire.url, timeout=2.0)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session=SID,
        backend=backend,
        warm=True,
    )
    resp = client.chat.completions.create(model="m", messages=messages())
    keys = [synth.reward(resp, 1.0, feedback="spot on", metadata={"tier": "gold"})]
    keys.append(synth.reward(synth.rollout_of(resp), 0.5))
    assert synth.flush(10)
    assert sorted(wire.reward_keys(SID)) == sorted(keys)
    posts = [r for r in wire.requests if r["path"].endswith("/reward")]
    assert sorted(r["headers"]["idempotency-key"] for r in posts) == sorted(keys)
    rec = wire.engine.rollout_records(SID)[0]
    assert rec["rollout_id"] == resp.synth.rollout_id
    assert {r["idempotency_key"] for r in rec["rewards"]} == set(keys)
    assert any(
        r["feedback"] == "spot on" and r["metadata"] == {"tier": "gold"} for r in rec["rewards"]
    )


def test_concurrent_producers_lose_nothing(wire, make_reporter):
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0), batch_size=200)
    keys: list[list[str]] = [[] for _ in range(4)]

    def produce(t: int) -> None:
        keys[t] = _send(rep, 250, start=t * 1000)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rep.flush(15)
    _exactly_once(wire, [k for ks in keys for k in ks])


def test_backend_errors_from_record_rewards_are_transient_by_default(wire, make_reporter):
    class Flaky:
        def __init__(self, inner: HttpBackend) -> None:
            self.inner, self.calls = inner, 0

        def record_rewards(self, rewards: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise BackendError("storage hiccup")  # status None: retryable
            if self.calls == 2:
                return ["garbage"]  # malformed: resent
            return self.inner.record_rewards(rewards)

        def record_rollouts(self, rollouts: Any) -> None:
            pass

    backend = Flaky(HttpBackend(wire.url, timeout=2.0))
    rep = make_reporter(backend)
    keys = _send(rep, 10)
    assert rep.flush(5)
    _exactly_once(wire, keys)
    assert rep.stats().retried == 2


def _rollout(i: int) -> dict[str, Any]:
    return {
        "session_id": SID,
        "rollout_id": f"ro-gather-{i}-{time.monotonic_ns()}",
        "candidate_id": None,
        "created_at": time.time(),
        "input": [{"role": "user", "content": f"question {i}"}],
        "output": f"answer {i}",
    }


def _rollout_posts(wire: WireServer) -> int:
    return sum(1 for p in wire.paths() if p.startswith("POST /api/v1/rollouts/batch"))


def test_rollouts_gather_longer_than_rewards(wire, make_reporter, monkeypatch):
    """Rollout records alone wait for ROLLOUT_GATHER (bigger, cheaper batches); a reward
    cuts that short and goes within flush_interval, after the rollouts queued before it
    (so it finds its rollout stored with the trace, not created bare)."""
    from synth_middleware.client import reporter as reporter_module

    monkeypatch.setattr(reporter_module, "ROLLOUT_GATHER", 30.0)
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0), interval=0.05, batch_size=500)
    assert rep.rollout_interval == 30.0
    rollouts = [_rollout(i) for i in range(20)]
    for r in rollouts[:10]:
        assert rep.add_rollout(r)
        time.sleep(0.02)
    time.sleep(0.5)  # ten flush intervals: rewards would have gone by now
    assert _rollout_posts(wire) == 0
    assert rep.stats().queued == 10
    for r in rollouts[10:]:
        assert rep.add_rollout(r)
    rec = reward_record(0, SID, value=1.0, rollout_id=rollouts[3]["rollout_id"])
    assert rep.add_reward(rec)
    assert wait_until(lambda: wire.reward_keys(SID) == [rec["idempotency_key"]], 10)
    assert rep.stats().queued == 0
    # one batch for all twenty rollouts, and it went first: the reward's rollout has
    # its trace (a reward arriving first would have created it without one)
    assert _rollout_posts(wire) == 1
    posts = [p for p in wire.paths() if p.startswith("POST")]
    assert posts[0].startswith("POST /api/v1/rollouts/batch")
    ev = [e for e in wire.engine.iter_events(SID) if e.type == "rollout"]
    assert len(ev) == 20
    assert not any(e.payload.get("supplement") for e in ev)


def test_flush_sends_gathering_rollouts_at_once(wire, make_reporter, monkeypatch):
    from synth_middleware.client import reporter as reporter_module

    monkeypatch.setattr(reporter_module, "ROLLOUT_GATHER", 30.0)
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0), interval=0.05, batch_size=500)
    for i in range(5):
        assert rep.add_rollout(_rollout(i))
    t0 = time.monotonic()
    assert rep.flush(10)
    assert time.monotonic() - t0 < 10
    assert _rollout_posts(wire) == 1
    assert len([e for e in wire.engine.iter_events(SID) if e.type == "rollout"]) == 5


def test_flush_wakes_an_idle_worker_at_once(wire, make_reporter, monkeypatch):
    """flush() after the worker went idle must not wait for the gathering window
    (or for flush's own re-check poll): the worker's wake-up sends the records, and
    the flush leaves no stale wake-up behind that would send the next ones early."""
    from synth_middleware.client import reporter as reporter_module

    monkeypatch.setattr(reporter_module, "ROLLOUT_GATHER", 30.0)
    monkeypatch.setattr(reporter_module, "_FLUSH_POLL", 30.0)
    rep = make_reporter(HttpBackend(wire.url, timeout=2.0), interval=0.05, batch_size=500)
    for cycle in range(3):
        for i in range(5):
            assert rep.add_rollout(_rollout(10 * cycle + i))
        assert rep.flush(5), f"flush {cycle} waited for the gathering window"
        assert _rollout_posts(wire) == cycle + 1
        time.sleep(0.1)  # the worker goes back to sleep on an empty queue
    assert rep.add_rollout(_rollout(99))
    time.sleep(0.3)
    assert _rollout_posts(wire) == 3  # still gathering: no wake-up was left over
    assert rep.flush(5)
    assert _rollout_posts(wire) == 4


def test_rollout_interval_is_never_shorter_than_flush_interval(wire, make_reporter):
    rep = make_reporter(HttpBackend(wire.url), interval=0.05)
    assert rep.rollout_interval == 1.0
    rep.flush_interval = 5.0
    assert rep.rollout_interval == 5.0
