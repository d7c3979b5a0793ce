"""Engine tests on real SQLite files and a real PostgreSQL schema (every test that takes
``db`` runs against both stores): stats, idempotency, bad input, generations,
paging, restart/snapshot replay, threads and processes sharing one database."""

from __future__ import annotations

import logging
import math
import multiprocessing
import queue
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from synth_middleware.engine import (
    Engine,
    SessionStateMachine,
    StorageError,
    is_postgres_url,
    open_store,
)
from synth_middleware.engine.state import Event, best_candidate
from synth_middleware.engine.store import encode_json
from synth_middleware.errors import BackendError, InvalidRequestError, NotFoundError

SID = "sess-1"


@pytest.fixture
def db(store_target: str) -> str:
    """A SQLite file, then a fresh PostgreSQL schema (conftest's ``store_target``)."""
    return store_target


@pytest.fixture
def engine(db: str) -> Iterator[Engine]:
    eng = Engine(open_store(db))
    yield eng
    eng.close()


def rollouts(session: str, ids: list[str], cand: str | None) -> list[dict[str, Any]]:
    return [
        {"session_id": session, "rollout_id": rid, "candidate_id": cand, "created_at": 1.0}
        for rid in ids
    ]


def reward(key: str, rid: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "rollout_id": rid, "value": value, "created_at": 2.0, **extra}


def stats_of(state: dict[str, Any], cid: str) -> dict[str, Any]:
    return next(c for c in state["candidates"] if c["candidate_id"] == cid)


def test_stats_match_statistics_module(engine: Engine) -> None:
    state = engine.ensure_session(SID, baseline="You are helpful.")
    base = state["baseline_candidate_id"]
    cand = engine.add_candidate(SID, "You are very helpful.")
    rng = random.Random(7)
    values: dict[str, list[float]] = {base: [], cand: []}
    n = 0
    for cid in (base, cand, base):  # interleave batches across candidates
        ids = [f"ro_{n + i}" for i in range(300)]
        engine.record_rollouts(rollouts(SID, ids, None if cid == base else cid))
        batch = []
        for rid in ids:
            v = rng.gauss(0.5, 0.2) if cid == base else rng.random() * 3 - 1
            values[cid].append(v)
            batch.append(reward(f"k_{rid}", rid, v))
        assert {r["status"] for r in engine.record_rewards(batch)} == {"accepted"}
        n += 300

    st = engine.get_state(SID)
    assert st["rollout_count"] == st["reward_count"] == 900
    for cid, vals in values.items():
        s = stats_of(st, cid)
        assert s["rollout_count"] == s["reward_count"] == len(vals)
        assert s["avg_reward"] == pytest.approx(statistics.fmean(vals), rel=1e-12)
        variance = s["reward_m2"] / (s["reward_count"] - 1)
        assert variance == pytest.approx(statistics.variance(vals), rel=1e-9)
    # integer rewards count as numbers too
    engine.record_rollouts(rollouts(SID, ["ro_int"], cand))
    assert engine.record_rewards([reward("k_int", "ro_int", 1)])[0]["status"] == "accepted"


def test_reward_and_rollout_idempotency(engine: Engine, db: str) -> None:
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    engine.record_rollouts(rollouts(SID, ["r1", "r2"], None))
    res = engine.record_rollouts(rollouts(SID, ["r1", "r2", "r3"], None))
    assert (res.accepted, res.duplicates) == (1, 2)

    first = engine.record_rewards([reward("k1", "r1", 1.0), reward("k1", "r1", 1.0)])
    assert [r["status"] for r in first] == ["accepted", "duplicate"]  # duplicate within a batch
    again = engine.record_rewards([reward("k1", "r1", 1.0), reward("k2", "r2", 0.0)])
    assert [r["status"] for r in again] == ["duplicate", "accepted"]
    # a key reused for another reward is refused, not silently ignored (issue #23)
    conflict = engine.record_rewards([reward("k1", "r1", 0.0)])[0]
    assert conflict["status"] == "rejected" and "conflict" in conflict["error"]

    # ... and after a restart (the keys live in the database, not in memory)
    other = Engine(open_store(db))
    assert other.record_rewards([reward("k2", "r2", 0.0)])[0]["status"] == "duplicate"
    assert other.record_rewards([reward("k2", "r2", 1.0)])[0]["status"] == "rejected"
    other.close()

    s = stats_of(engine.get_state(SID), base)
    assert (s["rollout_count"], s["reward_count"], s["avg_reward"]) == (3, 2, 0.5)


def test_bad_input_matrix_keeps_good_items_and_prior_data(engine: Engine) -> None:
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    engine.record_rollouts(rollouts(SID, [f"r{i}" for i in range(20)], None))
    engine.record_rewards([reward("prior", "r0", 0.25)])
    before = stats_of(engine.get_state(SID), base)

    bad: list[tuple[dict[str, Any], str]] = [
        (reward("nan", "r1", math.nan), "finite"),
        (reward("inf", "r2", math.inf), "finite"),
        (reward("-inf", "r3", -math.inf), "finite"),
        (reward("str", "r4", "1"), "finite"),
        (reward("bool", "r5", True), "finite"),
        (reward("none", "r6", None), "finite"),
        (reward("unknown", "no-such-rollout", 1.0), "unknown rollout"),
        (reward("big", "r7", 1.0, feedback="x" * (64 * 1024 + 1)), "feedback"),
        (reward("meta", "r8", 1.0, metadata={"x": math.nan}), "metadata"),
        (reward("", "r9", 1.0), "idempotency_key"),
        (reward("stop", "r10", 1.0, stop="yes"), "stop"),
    ]
    good = [
        reward("g1", "r11", 1.0, feedback="y" * (64 * 1024)),  # exactly at the limit
        reward("g2", "r12", 0.0, metadata={"expected": "a", "predicted": "a"}),
    ]
    batch = [bad[0][0], good[0], *[b for b, _ in bad[1:]], good[1]]
    results = engine.record_rewards(batch)

    assert len(results) == len(batch)
    assert [r["idempotency_key"] for r in results] == [b["idempotency_key"] for b in batch]
    by_key = {r["idempotency_key"]: r for r in results}
    for record, needle in bad:
        r = by_key[record["idempotency_key"]]
        assert r["status"] == "rejected", record
        assert needle in (r.get("error") or ""), (needle, r)
    assert by_key["g1"]["status"] == by_key["g2"]["status"] == "accepted"

    after = stats_of(engine.get_state(SID), base)
    assert after["reward_count"] == before["reward_count"] + 2
    assert after["avg_reward"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    # rejected keys were not burnt: a corrected resend is accepted
    assert engine.record_rewards([reward("nan", "r1", 0.5)])[0]["status"] == "accepted"
    fb = {r["rollout_id"]: r["rewards"] for r in engine.rollout_records(SID, 50)}
    assert fb["r11"][0]["feedback"] == "y" * (64 * 1024)
    assert fb["r12"][0]["metadata"] == {"expected": "a", "predicted": "a"}


def test_reward_before_its_rollout_is_accepted_with_token_fields(engine: Engine) -> None:
    state = engine.ensure_session(SID, baseline="b")
    base = state["baseline_candidate_id"]
    cand = engine.add_candidate(SID, "c")
    results = engine.record_rewards(
        [
            reward("a", "early-1", 1.0, session_id=SID, candidate_id=cand),
            reward("b", "early-2", 0.0, session_id=SID, candidate_id=None),  # baseline served
            reward("c", "early-3", 1.0, session_id=SID, candidate_id="cand_nope"),
            reward("d", "early-4", 1.0, session_id="other-session", candidate_id=cand),
            reward("e", "early-5", 1.0),
        ]
    )
    assert [r["status"] for r in results] == [
        "accepted",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
    ]
    st = engine.get_state(SID)
    assert (stats_of(st, cand)["rollout_count"], stats_of(st, cand)["reward_count"]) == (1, 1)
    assert (stats_of(st, base)["rollout_count"], stats_of(st, base)["reward_count"]) == (1, 1)

    # The rollout record arrives later: its details are kept, nothing is counted twice.
    late = rollouts(SID, ["early-1"], cand)
    late[0]["input"] = [{"role": "user", "content": "hi"}]
    res = engine.record_rollouts(late)
    assert (res.accepted, res.supplemented, res.duplicates) == (0, 1, 0)
    assert engine.record_rollouts(late).duplicates == 1
    st = engine.get_state(SID)
    assert st["rollout_count"] == 2 and stats_of(st, cand)["rollout_count"] == 1
    rec = {r["rollout_id"]: r for r in engine.rollout_records(SID)}
    assert rec["early-1"]["input"] == [{"role": "user", "content": "hi"}]
    assert rec["early-1"]["implicit"] is False and rec["early-2"]["implicit"] is True
    assert rec["early-1"]["rewards"][0]["value"] == 1.0


def test_rollouts_for_unknown_sessions_or_candidates_are_skipped(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    with caplog.at_level(logging.WARNING, logger="synth_middleware.engine"):
        res = engine.record_rollouts(
            [
                *rollouts(SID, ["ok"], None),
                *rollouts("nobody", ["x1"], None),
                *rollouts(SID, ["x2"], "cand_000000000000"),
                {"session_id": "bad id!", "rollout_id": "x3", "candidate_id": None},
                *rollouts(SID, ["ok2"], base),
            ]
        )
    assert (res.accepted, res.skipped) == (2, 3)
    assert [i for i, _ in res.errors] == [1, 2, 3]
    assert len([r for r in caplog.records if "skipped 3" in r.getMessage()]) == 1
    assert stats_of(engine.get_state(SID), base)["rollout_count"] == 2


def _raw_payloads(db: str, type_: str) -> list[str]:
    """The ``payload`` text of the log's events of one type, in seq order, as stored."""
    query = "SELECT payload FROM events WHERE type = {} ORDER BY seq"
    if is_postgres_url(db):
        import psycopg

        with psycopg.connect(db) as conn:
            return [r[0] for r in conn.execute(query.format("%s"), (type_,))]
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute(query.format("?"), (type_,))]


def test_rollout_payloads_are_stored_as_before_the_single_encode(engine: Engine, db: str) -> None:
    # The engine encodes a rollout's details once (while checking their size) and splices
    # in candidate_id: the stored text must equal encoding the whole event payload,
    # keys in the order the log has always had (details, candidate_id, supplement).
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    cand = engine.add_candidate(SID, "c")
    traced = [{"role": "user", "content": "carte perdue \u00e9 \u2028 \ud800"}]
    row = {"session_id": SID, "created_at": 1.0, "model": "m"}
    # A reward first creates r5 implicitly; its rollout record then supplements the details.
    [early] = engine.record_rewards([reward("k5", "r5", 1.0, session_id=SID, candidate_id=cand)])
    assert early["status"] == "accepted"
    result = engine.record_rollouts(
        [
            {**row, "rollout_id": "r1", "candidate_id": cand, "input": traced, "output": "ok"},
            {"session_id": SID, "rollout_id": "r2", "candidate_id": None, "created_at": 1.0},
            {
                **row,
                "rollout_id": "r3",
                "candidate_id": None,
                "input": "x" * 300_000,
                "output": "o",
            },
            {**row, "rollout_id": "r4", "candidate_id": None, "output": object()},
            {**row, "rollout_id": "r5", "candidate_id": cand, "key": "u1", "metadata": {"t": 1}},
        ]
    )
    assert (result.accepted, result.supplemented, result.skipped) == (4, 1, 0)
    head = {"served_candidate_id": None, "created_at": 1.0}
    expected = [
        {
            "rollout_id": "r5",
            "candidate_id": cand,
            "served_candidate_id": cand,
            "created_at": 2.0,
            "implicit": True,
        },
        {
            "rollout_id": "r1",
            "served_candidate_id": cand,
            "created_at": 1.0,
            "model": "m",
            "input": traced,
            "output": "ok",
            "candidate_id": cand,
        },
        {"rollout_id": "r2", **head, "candidate_id": base},
        {
            "rollout_id": "r3",
            **head,
            "model": "m",
            "truncated": True,
            "dropped": ["input", "output"],
            "candidate_id": base,
        },
        {"rollout_id": "r4", **head, "model": "m", "dropped": ["output"], "candidate_id": base},
        {
            "rollout_id": "r5",
            "served_candidate_id": cand,
            "created_at": 1.0,
            "key": "u1",
            "model": "m",
            "metadata": {"t": 1},
            "candidate_id": cand,
            "supplement": True,
        },
    ]
    assert _raw_payloads(db, "rollout") == [encode_json(p) for p in expected]
    assert [e.payload for e in engine.iter_events(SID) if e.type == "rollout"] == expected


def test_append_events_encodes_payloads_unless_given(db: str) -> None:
    store = open_store(db)
    try:
        with store.write() as txn:
            seq = txn.next_seq()
            first = Event(seq, SID, "note", {"b": [1, 2.5], "a": "\u00e9"}, 1.0)
            second = Event(seq + 1, SID, "note", {"b": None}, 1.0)
            txn.append_events([first])  # the store encodes
            txn.append_events([second], [encode_json(second.payload)])  # encoded by the caller
            with pytest.raises(ValueError):  # a payload for each event, no fewer
                txn.append_events([Event(seq + 2, SID, "note", {}, 1.0)], [])
        assert [e.payload for e in store.read_events(SID, 0)] == [first.payload, second.payload]
    finally:
        store.close()
    assert _raw_payloads(db, "note") == ['{"b":[1,2.5],"a":"\\u00e9"}', '{"b":null}']


def test_baseline_change_starts_a_generation_and_archives_old_candidates(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    s0 = engine.ensure_session(SID, baseline="v1")
    old_base = s0["baseline_candidate_id"]
    c1 = engine.add_candidate(SID, "v1 improved")
    c2 = engine.add_candidate(SID, "v1 other")
    engine.archive_candidate(SID, c2, reason="manual")
    version = engine.get_state(SID)["version"]
    assert engine.ensure_session(SID, baseline="v1")["version"] == version  # same text: no event
    assert engine.ensure_session(SID)["version"] == version  # no baseline given: no change

    with caplog.at_level(logging.WARNING, logger="synth_middleware.engine"):
        s1 = engine.ensure_session(SID, baseline="v2")
        engine.ensure_session(SID, baseline="v2")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert s1["generation"] == 1
    new_base = s1["baseline_candidate_id"]
    assert new_base not in (old_base, c1)
    by_id = {c["candidate_id"]: c for c in s1["candidates"]}
    assert by_id[old_base]["status"] == by_id[c1]["status"] == "archived"
    assert by_id[new_base]["status"] == "active" and by_id[new_base]["is_baseline"]
    assert [c["candidate_id"] for c in s1["candidates"] if c["is_baseline"]] == [new_base]
    assert engine.get_candidate(new_base)["candidate_content"] == "v2"
    assert engine.get_candidate(new_base)["generation"] == 1
    assert engine.get_candidate(c1)["generation"] == 0
    reasons = {
        e.payload["candidate_id"]: e.payload["reason"]
        for e in engine.iter_events(SID)
        if e.type == "candidate_archived"
    }
    assert reasons == {c2: "manual", old_base: "prompt_changed", c1: "prompt_changed"}
    # a rollout with no candidate now counts for the new baseline
    engine.record_rollouts(rollouts(SID, ["r"], None))
    assert stats_of(engine.get_state(SID), new_base)["rollout_count"] == 1


def test_archive_and_status_filter(engine: Engine) -> None:
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    cands = [engine.add_candidate(SID, f"c{i}") for i in range(5)]
    assert engine.archive_candidate(SID, cands[1]) is True
    assert engine.archive_candidate(SID, cands[1]) is False
    engine.archive_candidate(SID, cands[3])
    with pytest.raises(InvalidRequestError):
        engine.archive_candidate(SID, base)
    with pytest.raises(NotFoundError):
        engine.archive_candidate(SID, "cand_unknown")
    with pytest.raises(NotFoundError):
        engine.archive_candidate("no-session", cands[0])

    def ids(status: str | None) -> set[str]:
        page = engine.list_candidates(SID, status=status)
        return {c["candidate_id"] for c in page["items"]}

    assert ids("archived") == {cands[1], cands[3]}
    assert ids("active") == {base, cands[0], cands[2], cands[4]}
    assert ids(None) == ids("all") == {base, *cands}
    assert engine.get_candidate(cands[1])["status"] == "archived"
    with pytest.raises(InvalidRequestError):
        engine.list_candidates(SID, status="deleted")


def test_candidates_payloads_and_lookups(engine: Engine) -> None:
    engine.ensure_session(SID, baseline="b")
    payload = {
        "object": "transformation",
        "text_replacements": [{"old_text": "b", "new_text": "B", "apply_to_role": "system"}],
    }
    parent = engine.add_candidate(SID, "p")
    cid = engine.add_candidate(SID, None, payload=payload, parent_id=parent, metadata={"by": "t"})
    item = engine.get_candidate(cid)
    assert item["candidate_content"] is None and item["artifact_payload"] == payload
    assert item["parent_id"] == parent and item["is_baseline"] is False
    assert item["status"] == "active" and item["avg_reward"] is None
    assert cid.startswith("cand_") and len(cid) == len("cand_") + 12
    page = engine.list_candidates(SID, include=())
    assert all("candidate_content" not in c for c in page["items"])
    assert next(c for c in page["items"] if c["candidate_id"] == cid)["artifact_payload"] == payload
    with pytest.raises(NotFoundError):
        engine.add_candidate(SID, "x", parent_id="cand_missing")
    with pytest.raises(InvalidRequestError):
        engine.add_candidate(SID, None)
    with pytest.raises(InvalidRequestError):
        engine.add_candidate(SID, "x", payload={"bad": math.nan})
    with pytest.raises(NotFoundError):
        engine.get_candidate("cand_missing")
    # seeding before traffic: the first mention creates the session (issue #24)
    seeded = engine.add_candidate("missing", "x")
    assert engine.candidate_session(seeded) == "missing"


@pytest.mark.parametrize("bad", ["", "a" * 201, "has space", "slash/id", "ü", None, 12])
def test_session_id_validation(engine: Engine, bad: Any) -> None:
    with pytest.raises(InvalidRequestError):
        engine.ensure_session(bad, baseline="b")
    assert isinstance(InvalidRequestError("x"), BackendError)


def test_session_ids_and_not_found(engine: Engine) -> None:
    ok = "A-z_0.9:" + "x" * 192
    engine.ensure_session(ok, baseline="b")
    assert engine.session_ids() == [ok]
    with pytest.raises(NotFoundError):
        engine.get_state("missing")
    with pytest.raises(InvalidRequestError):
        engine.ensure_session("s", kind="other")  # type: ignore[arg-type]


def test_paging_visits_every_candidate_once(engine: Engine) -> None:
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    cands = [engine.add_candidate(SID, f"c{i}") for i in range(56)]
    rng = random.Random(3)
    recs, rws = [], []
    for i, cid in enumerate(cands[:40]):  # 16 candidates without rewards (avg None)
        for j in range(rng.randint(1, 3)):
            rid = f"r{i}_{j}"
            recs.append({"session_id": SID, "rollout_id": rid, "candidate_id": cid})
            rws.append(reward(f"k{rid}", rid, float(rng.randint(0, 3))))  # many ties
    engine.record_rollouts(recs)
    engine.record_rewards(rws)
    everyone = {base, *cands}
    for sort in (None, "avg_reward:desc,created_at:desc", "objective:asc", "rollout_count"):
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = engine.list_candidates(SID, limit=10, cursor=cursor, sort=sort)
            seen += [c["candidate_id"] for c in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 6 and len(seen) == len(set(seen)) == 57 and set(seen) == everyone
    ranked = engine.list_candidates(SID, limit=1000, sort="avg_reward:desc")["items"]
    avgs = [c["avg_reward"] for c in ranked]
    rewarded = [a for a in avgs if a is not None]
    assert rewarded == sorted(rewarded, reverse=True)
    assert avgs[len(rewarded) :] == [None] * (57 - len(rewarded))  # no rewards: last
    assert engine.list_candidates(SID)["items"][0]["candidate_id"] == base  # created_at:asc
    for kwargs in ({"limit": 0}, {"limit": 1001}, {"limit": True}, {"cursor": "!!"}):
        with pytest.raises(InvalidRequestError):
            engine.list_candidates(SID, **kwargs)
    with pytest.raises(InvalidRequestError):
        engine.list_candidates(SID, sort="name:desc")


def _rich_history(engine: Engine) -> None:
    rng = random.Random(11)
    engine.ensure_session(SID, baseline="v1", kind="gepa_online")
    engine.ensure_session("other", baseline="o")
    cands = [engine.add_candidate(SID, f"c{i}", metadata={"i": i}) for i in range(4)]
    engine.archive_candidate(SID, cands[0])
    for b in range(6):
        ids = [f"r{b}_{i}" for i in range(40)]
        engine.record_rollouts(rollouts(SID, ids, rng.choice([None, *cands[1:]])))
        engine.record_rollouts(rollouts("other", [f"o{x}" for x in ids], None))
        engine.record_rewards(
            [reward(f"k{rid}", rid, rng.random(), feedback=f"fb{rid}") for rid in ids]
        )
        if b == 3:
            engine.ensure_session(SID, baseline="v2")
            engine.add_candidate(SID, "c-gen1")
    engine.set_status(SID, "paused")


def test_restart_on_the_same_file_gives_the_identical_state(db: str) -> None:
    first = Engine(open_store(db))
    _rich_history(first)
    expected = first.get_state(SID)
    expected_list = first.list_candidates(SID, sort="avg_reward:desc")
    expected_snapshot = first.session_state(SID).to_snapshot()
    first.close()

    second = Engine(open_store(db))
    assert second.get_state(SID) == expected
    assert second.list_candidates(SID, sort="avg_reward:desc") == expected_list
    assert second.session_state(SID).to_snapshot() == expected_snapshot
    assert expected["status"] == "paused" and expected["kind"] == "gepa_online"
    assert expected["reward_count"] == 240 and expected["generation"] == 1
    second.close()


def test_snapshot_plus_replay_equals_full_replay(db: str) -> None:
    writer = Engine(open_store(db), snapshot_every=7)
    _rich_history(writer)
    writer.record_rollouts(rollouts(SID, ["tail"], None))  # events after the last snapshot
    live = writer.session_state(SID).to_snapshot()

    store = open_store(db)
    snap = store.load_snapshot(SID)
    assert snap is not None
    snap_seq = snap[0]
    last_seq = max(e.seq for e in writer.iter_events(SID))
    assert 0 < snap_seq < last_seq  # a snapshot exists and events follow it

    full = SessionStateMachine(SID)
    for event in writer.iter_events(SID, 0):
        full.apply(event)
    assert full.to_snapshot() == live

    restored = Engine(store)  # loads: latest snapshot + replay of later events
    assert restored.session_state(SID).to_snapshot() == live
    assert restored.get_state(SID) == full.to_wire()
    # replaying an already-applied event changes nothing
    some = next(iter(writer.iter_events(SID, 0)))
    assert full.apply(some) is False
    writer.close()
    restored.close()


def test_best_candidate_policy() -> None:
    st = SessionStateMachine(SID)
    seq = iter(range(1, 10_000))

    def ev(type_: str, **payload: Any) -> None:
        st.apply(Event(next(seq), SID, type_, payload, 1.0))

    # The full policy (anytime-valid promotion, rollback, pruning) is in test_promotion.py.
    ev("session_created", kind="mipro_online", config={"min_rollouts_for_best": 3})
    ev("candidate_added", candidate_id="base", is_baseline=True, generation=0)
    ev("candidate_added", candidate_id="a", generation=0)
    ev("candidate_added", candidate_id="b", generation=0)
    assert st.best() is not None and st.best().candidate_id == "base"  # type: ignore[union-attr]
    for v in (1.0, 1.0):
        ev("reward", candidate_id="a", value=v)
    assert st.to_wire()["best_candidate_id"] == "base"  # too few rewards
    for _ in range(40):  # a wins every time, the baseline never: evidence over the same period
        ev("reward", candidate_id="base", value=0.0)
        ev("reward", candidate_id="a", value=1.0)
    assert st.to_wire()["best_candidate_id"] == "a"
    assert st.to_wire()["policy"]["evidence"]["a"]["lower"] > 0
    for _ in range(400):  # then it loses every time: shown worse, the name goes back
        ev("reward", candidate_id="base", value=1.0)
        ev("reward", candidate_id="a", value=0.0)
    assert st.to_wire()["best_candidate_id"] == "base"
    ev("candidate_archived", candidate_id="base")
    assert best_candidate(st.candidates, "base", 3).candidate_id == "a"  # type: ignore[union-attr]


def test_stop_and_set_status(engine: Engine) -> None:
    engine.ensure_session(SID, baseline="b")
    engine.record_rollouts(rollouts(SID, ["r1", "r2"], None))
    assert engine.set_status(SID, "paused")["status"] == "paused"
    assert engine.set_status(SID, "running")["status"] == "running"
    with pytest.raises(InvalidRequestError):
        engine.set_status(SID, "done")
    with pytest.raises(NotFoundError):
        engine.set_status("nope", "paused")
    engine.record_rewards([reward("k1", "r1", 1.0, stop=True), reward("k2", "r2", 0.0)])
    st = engine.get_state(SID)
    assert st["status"] == "completed" and st["reward_count"] == 2
    statuses = [e.payload["status"] for e in engine.iter_events(SID) if e.type == "session_status"]
    assert statuses == ["paused", "running", "completed"]


def test_threads_record_concurrently_with_exact_counts(db: str) -> None:
    engine = Engine(open_store(db), snapshot_every=50)
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    cand = engine.add_candidate(SID, "c")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for b in range(25):
                ids = [f"t{t}_{b}_{i}" for i in range(20)]
                engine.record_rollouts(rollouts(SID, ids, cand if t % 2 else None))
                res = engine.record_rewards([reward(f"k{rid}", rid, 1.0) for rid in ids])
                assert all(r["status"] == "accepted" for r in res)
                engine.get_state(SID)
                engine.list_candidates(SID)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = engine.get_state(SID)
    assert st["rollout_count"] == st["reward_count"] == 8 * 25 * 20
    assert stats_of(st, base)["reward_count"] == stats_of(st, cand)["reward_count"] == 2000
    engine.close()
    reopened = Engine(open_store(db))
    assert reopened.get_state(SID) == st
    reopened.close()


def _process_worker(path: str, tag: str, barrier: Any, out: Any) -> None:
    try:
        engine = Engine(open_store(path), snapshot_every=100)
        state = engine.ensure_session(SID, baseline="b")
        cand = engine.add_candidate(SID, f"from {tag}")
        barrier.wait(timeout=60)  # write at the same time
        for b in range(20):
            ids = [f"{tag}_{b}_{i}" for i in range(50)]
            engine.record_rollouts(rollouts(SID, ids[:25], cand) + rollouts(SID, ids[25:], None))
            res = engine.record_rewards([reward(f"k{rid}", rid, 1.0) for rid in ids])
            assert all(r["status"] == "accepted" for r in res)
        barrier.wait(timeout=60)  # both done writing: now read what the other wrote too
        out.put((tag, state["baseline_candidate_id"], engine.get_state(SID)))
        engine.close()
    except BaseException:
        import traceback

        out.put((tag, None, traceback.format_exc()))
        raise


def test_two_processes_share_one_file(db: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(str(db), tag, barrier, out)) for tag in "AB"]
    for p in procs:
        p.start()
    answers: list[Any] = []
    deadline = time.monotonic() + 150
    while len(answers) < len(procs) and time.monotonic() < deadline:
        try:
            answers.append(out.get(timeout=0.5))
        except queue.Empty:  # a child that died without answering (e.g. at import) ends the wait
            if all(p.exitcode is not None for p in procs) and out.empty():
                break
    assert len(answers) == len(procs), [p.exitcode for p in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(base is not None for _, base, _ in answers), answers
    assert [p.exitcode for p in procs] == [0, 0]
    (_, base_a, st_a), (_, base_b, st_b) = answers
    assert base_a == base_b  # one session, one baseline, although both "created" it
    for st in (st_a, st_b):
        assert st["rollout_count"] == st["reward_count"] == 2 * 20 * 50
        assert len(st["candidates"]) == 3
        assert stats_of(st, base_a)["reward_count"] == 1000
    assert st_a["candidates"] == st_b["candidates"]
    engine = Engine(open_store(db))
    final = engine.get_state(SID)
    assert final["reward_count"] == 2000 and final["version"] == max(
        st_a["version"], st_b["version"]
    )
    engine.close()


def test_closed_store_raises_storage_error(db: str) -> None:
    engine = Engine(open_store(db))
    engine.ensure_session(SID, baseline="b")
    engine.close()
    with pytest.raises(StorageError) as info:
        engine.get_state(SID)
    assert info.value.retryable


# -- hot-path caches and per-record outcomes ------------------------------------------------


def _event(seq: int, type_: str, **payload: Any) -> Event:
    return Event(seq, SID, type_, payload, float(seq))


def test_policy_is_reused_until_an_input_of_it_changes() -> None:
    st = SessionStateMachine(SID)
    seq = iter(range(1, 1000))
    st.apply(_event(next(seq), "session_created", kind="mipro_online", config={}))
    st.apply(_event(next(seq), "candidate_added", candidate_id="b", is_baseline=True))
    st.apply(_event(next(seq), "candidate_added", candidate_id="c"))
    first = st.policy()

    # Rollouts, status changes and lease-only optimizer patches leave the posterior alone.
    for i in range(50):
        st.apply(_event(next(seq), "rollout", rollout_id=f"r{i}", candidate_id="c"))
    st.apply(_event(next(seq), "session_status", status="paused"))
    st.apply(_event(next(seq), "optimizer", patch={"lease": {"owner": "x", "until": 1.0}}))
    assert st.policy() is first
    assert st.candidates["c"].rollout_count == 50

    # Each input of the policy makes the next call evaluate again.
    seen = [first]

    def changed() -> Any:
        decision = st.policy()
        assert all(decision is not old for old in seen)
        seen.append(decision)
        # ... and the cached decision equals a fresh evaluation of the same state
        fresh = SessionStateMachine.from_snapshot(st.to_snapshot()).policy()
        assert decision.to_json() == fresh.to_json()
        return decision

    for i in range(10):
        st.apply(_event(next(seq), "reward", candidate_id="c", value=1.0, rollout_id=f"r{i}"))
    after_rewards = changed()
    p_best = after_rewards.to_json()["probability_best"]
    assert p_best["c"] > first.to_json()["probability_best"]["c"]  # rewards moved it
    st.apply(_event(next(seq), "rollout", rollout_id="r99", candidate_id="b"))
    assert st.policy() is after_rewards
    st.apply(_event(next(seq), "candidate_added", candidate_id="d"))
    assert "d" in changed().to_json()["probability_best"]
    st.apply(_event(next(seq), "candidate_archived", candidate_id="d", reason="x"))
    assert "d" not in changed().to_json()["probability_best"]
    st.apply(_event(next(seq), "config_updated", config={"min_rollouts_for_best": 5}))
    changed()
    st.apply(_event(next(seq), "optimizer", patch={"best_candidate_id": "c"}))
    changed()
    st.apply(_event(next(seq), "a_future_event_type"))  # unknown: assumed to matter
    changed()


def test_state_reads_under_rollouts_keep_the_posterior_and_rewards_move_it(
    engine: Engine,
) -> None:
    base = engine.ensure_session(SID, baseline="b")["baseline_candidate_id"]
    cand = engine.add_candidate(SID, "c")
    engine.record_rollouts(rollouts(SID, [f"w{i}" for i in range(20)], cand))
    engine.record_rewards([reward(f"k{i}", f"w{i}", 1.0) for i in range(20)])
    before = engine.get_state(SID)["policy"]
    for i in range(10):
        engine.record_rollouts(rollouts(SID, [f"more{i}"], base))
        assert engine.get_state(SID)["policy"] == before
    # routing (and P(best)) move once per epoch: 10 rewards early in a session
    engine.record_rewards([reward(f"m{i}", f"more{i}", 0.0) for i in range(10)])
    after = engine.get_state(SID)["policy"]
    assert after["probability_best"][base] < before["probability_best"][base]


def test_get_candidate_remembers_sessions_and_finds_other_writers_candidates(
    tmp_path: Any,
) -> None:
    path = str(tmp_path / "cands.db")
    engine, other = Engine(open_store(path)), Engine(open_store(path))
    try:
        engine.ensure_session(SID, baseline="b")
        mine = engine.add_candidate(SID, "mine")
        # Added by another engine (another process or replica): found through the store.
        theirs = other.add_candidate(SID, "theirs")
        assert engine.get_candidate(theirs)["candidate_content"] == "theirs"
        # Once known, the candidate -> session mapping is memory: with the store's
        # candidates rows gone, this engine still answers; a new engine no longer can.
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM candidates")
        assert engine.get_candidate(mine)["candidate_content"] == "mine"
        assert engine.get_candidate(theirs)["candidate_id"] == theirs
        fresh = Engine(open_store(path))
        with pytest.raises(NotFoundError) as err:
            fresh.get_candidate(mine)
        fresh.close()
        assert err.value.code == "candidate_not_found"
        for unknown in ("cand_unknown", "", "x" * 300):
            with pytest.raises(NotFoundError) as err:
                engine.get_candidate(unknown)
            assert err.value.code == "candidate_not_found"
    finally:
        engine.close()
        other.close()


def test_record_rollouts_reports_each_records_outcome(engine: Engine) -> None:
    engine.ensure_session(SID, baseline="b")
    engine.record_rollouts(rollouts(SID, ["old"], None))
    cand = engine.add_candidate(SID, "c")
    early = reward("k", "early", 1.0, session_id=SID, candidate_id=cand)
    assert engine.record_rewards([early])[0]["status"] == "accepted"
    res = engine.record_rollouts(
        [
            *rollouts(SID, ["new"], None),
            *rollouts(SID, ["old"], None),  # stored by an earlier call
            *rollouts(SID, ["new"], None),  # repeated in this batch: the second is a duplicate
            "junk",
            *rollouts(SID, ["early"], cand),  # a reward created it: details supplemented
            *rollouts("nobody", ["lost"], None),
            *rollouts(SID, ["x"], "cand_nope"),
            *rollouts(SID, ["new2"], cand),
        ]
    )
    assert res.statuses == [
        "accepted",
        "duplicate",
        "duplicate",
        "skipped",
        "supplemented",
        "skipped",
        "skipped",
        "accepted",
    ]
    assert (res.accepted, res.duplicates, res.supplemented, res.skipped) == (2, 2, 1, 3)
    assert [i for i, _ in res.errors] == [3, 5, 6]


def test_session_state_cache_is_bounded_and_evicted_sessions_reload(tmp_path: Any) -> None:
    """``max_cached_sessions`` bounds the caught-up states kept in memory (least recently
    used evicted first); an evicted session reloads from the store with its rewards."""
    eng = Engine(open_store(str(tmp_path / "cache.db")), max_cached_sessions=2)
    try:
        for i in range(3):
            sid = f"s{i}"
            base = eng.ensure_session(sid, baseline="b")["baseline_candidate_id"]
            eng.record_rollouts(rollouts(sid, [f"{sid}-r"], base))
            eng.record_rewards([reward(f"{sid}-k", f"{sid}-r", 0.25 * (i + 1), session_id=sid)])
        assert len(eng._states) == 2 and "s0" not in eng._states
        assert "s0" not in eng._snap_at  # forgotten with its state
        eng.get_state("s2")  # the most recently used
        state = eng.get_state("s0")  # reloads, evicting s1 (least recently used)
        assert state["reward_count"] == 1 and set(eng._states) == {"s0", "s2"}
    finally:
        eng.close()
