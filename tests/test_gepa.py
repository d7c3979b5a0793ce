"""GEPA online: instance keys, Pareto-front parents, reflective mutation from
traces with feedback, malformed answers, merge, and simulations."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sim import BASELINE, ScriptedProposer, Task, simulate, true_rate

from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore, parse_session_config
from synth_middleware.engine.optimizers.base import RoundContext, Trace, instance_key
from synth_middleware.engine.optimizers.gepa import GepaOptimizer, pareto_membership

SID = "gepa-sim"
FAST = {"online_proposer_min_rollouts": 20, "online_rollouts_per_candidate": 10}


def make_engine(proposer: ScriptedProposer | None) -> Engine:
    return Engine(
        SqliteStore(":memory:"),
        optimizer=OptimizerOptions(
            proposer_client=proposer.client() if proposer is not None else None,
            proposer_model="proposer-model" if proposer is not None else None,
            background=False,
            seed=0,
            backoff_initial=0.0,
            env={},
        ),
    )


@pytest.fixture
def prop() -> ScriptedProposer:
    return ScriptedProposer([0.7, 0.4, 0.8, 0.55])


@pytest.fixture
def engine(prop: ScriptedProposer) -> Iterator[Engine]:
    eng = make_engine(prop)
    yield eng
    eng.close()


def step(eng: Engine) -> Any:
    return lambda: eng.optimizer.step(SID)  # type: ignore[union-attr]


def t(**kw: Any) -> Trace:
    base: dict[str, Any] = {
        "rollout_id": "r",
        "candidate_id": "c",
        "input": None,
        "output": None,
        "reward": 1.0,
        "feedback": None,
        "bucket": None,
        "expected": None,
    }
    return Trace(**{**base, **kw})


def test_instance_keys() -> None:
    assert instance_key(t(bucket="vip", expected="refund", input="x")) == "bucket:vip"
    assert instance_key(t(expected="refund", input="x")) == "label:refund"
    a = instance_key(t(input="Where is  my CARD?"), 16)
    assert a == instance_key(t(input="where is my card?"), 16) and a.startswith("hash:")
    assert 0 <= int(a.split(":")[1]) < 16
    assert instance_key(t()) == "all"


def test_pareto_membership() -> None:
    instances = ["x", "y", "z"]
    scores = {
        "a": {"x": 0.9, "y": 0.2, "z": 0.5},  # best on x
        "b": {"x": 0.1, "y": 0.9, "z": 0.5},  # best on y, ties on z
        "c": {"x": 0.1, "y": 0.1, "z": 0.5},  # ties on z but dominated by a and b
        "d": {"x": 0.8, "y": 0.1, "z": 0.4},  # never best
    }
    assert pareto_membership(instances, scores) == {"a": 2, "b": 2}


def _seeded(eng: Engine, n: int = 40, **cfg: Any) -> None:
    eng.ensure_session(SID, baseline=BASELINE, kind="gepa_online", config={**FAST, **cfg})
    simulate(eng, SID, Task(base_rate=0.5), n, random.Random(1))


def test_reflective_mutation_reads_failures_and_feedback(
    engine: Engine, prop: ScriptedProposer
) -> None:
    _seeded(engine)
    status = engine.optimizer.step(SID)  # type: ignore[union-attr]
    assert status["status"] == "proposed" and status["proposals"] == 1
    prompt = prop.prompts[0]
    assert BASELINE in prompt  # the parent's instruction
    assert "wrong: expected" in prompt and "## Feedback" in prompt  # failures with feedback
    assert "## Reward\n0" in prompt and "## Input\nrequest" in prompt
    child = next(c for c in engine.session_state(SID).candidates.values() if not c.is_baseline)
    state = engine.session_state(SID)
    assert child.parent_id == state.baseline_candidate_id
    assert child.metadata is not None and child.metadata["operation"] == "mutation"
    assert "[q=0.70]" in (child.content or "")
    assert len(child.metadata["minibatch"]) == 3  # reflection_minibatch_size


def test_malformed_answer_is_discarded_and_counted() -> None:
    prop = ScriptedProposer([0.7], malformed=[0])
    eng = make_engine(prop)
    try:
        _seeded(eng)
        status = eng.optimizer.step(SID)  # type: ignore[union-attr]
        assert status["status"] == "malformed" and status["malformed"] == 1
        assert status["proposals"] == 0
        status = eng.optimizer.step(SID, force=True)  # type: ignore[union-attr]
        assert status["proposals"] == 1
    finally:
        eng.close()


def test_duplicate_child_is_discarded() -> None:
    prop = ScriptedProposer([0.7])
    eng = make_engine(prop)
    try:
        _seeded(eng)
        # the proposer's first answer already exists as a candidate
        eng.add_candidate(SID, "You are a careful banking intent classifier v0. [q=0.70]")
        status = eng.optimizer.step(SID)  # type: ignore[union-attr]
        assert status["status"] == "duplicate" and status["proposals"] == 0
    finally:
        eng.close()


def test_no_traces_no_reflection(engine: Engine, prop: ScriptedProposer) -> None:
    engine.ensure_session(SID, baseline=BASELINE, kind="gepa_online", config=FAST)
    simulate(engine, SID, Task(), 40, random.Random(2), send_traces=False)
    status = engine.optimizer.step(SID)  # type: ignore[union-attr]
    assert status["status"] == "no_traces" and prop.prompts == []


def test_no_proposer_no_mutation() -> None:
    eng = make_engine(None)
    try:
        _seeded(eng)
        assert eng.optimizer.step(SID)["status"] == "no_proposer"  # type: ignore[union-attr]
    finally:
        eng.close()


def test_parent_sampled_in_proportion_to_front_membership() -> None:
    eng = make_engine(None)
    try:
        eng.ensure_session(SID, baseline=BASELINE, kind="gepa_online", config=FAST)
        a = eng.add_candidate(SID, "A")
        b = eng.add_candidate(SID, "B")
        state = eng.session_state(SID)
        for cid, mean in ((state.baseline_candidate_id, 0.2), (a, 0.5), (b, 0.5)):
            c = state.candidates[cid]  # type: ignore[index]
            c.reward_count, c.mean = 30, mean
        # a is best on three labels, b on one; the baseline on none
        traces = []
        for i in range(60):
            label = f"l{i % 4}"
            good = a if label != "l3" else b
            for cid in (a, b):
                traces.append(
                    t(
                        candidate_id=cid,
                        expected=label,
                        input=f"q{i}",
                        reward=1.0 if cid == good else 0.0,
                    )
                )
        picks: Counter[str] = Counter()
        for seed in range(400):
            ctx = RoundContext(
                state=state,
                config=parse_session_config(FAST),
                decision=state.policy(),
                traces=traces,
                proposer=None,
                rng=random.Random(seed),
                pool={},
            )
            picks[GepaOptimizer._weighted(ctx, [(a, 3), (b, 1)])] += 1
        assert 0.68 < picks[a] / 400 < 0.82
    finally:
        eng.close()


def test_merge_of_two_front_members() -> None:
    prop = ScriptedProposer([0.75])
    eng = make_engine(prop)
    try:
        eng.ensure_session(
            SID, baseline=BASELINE, kind="gepa_online", config={**FAST, "use_merge": True}
        )
        base = eng.get_state(SID)["baseline_candidate_id"]
        a = eng.add_candidate(SID, "Instruction A [q=0.70]", parent_id=base)
        b = eng.add_candidate(SID, "Instruction B [q=0.70]", parent_id=base)
        # a wins on refunds, b on card issues: both on the Pareto front
        recs, rews = [], []
        for i in range(80):
            cid = a if i % 2 else b
            label = "refund" if i % 4 < 2 else "card_lost"
            good = (cid == a) == (label == "refund")
            rid = f"m{i}"
            recs.append(
                {"session_id": SID, "rollout_id": rid, "candidate_id": cid, "input": f"q{i}"}
            )
            rews.append(
                {
                    "idempotency_key": rid,
                    "rollout_id": rid,
                    "value": 1.0 if good else 0.0,
                    "metadata": {"expected": label},
                }
            )
        eng.record_rollouts(recs)  # type: ignore[arg-type]
        eng.record_rewards(rews)  # type: ignore[arg-type]
        eng.optimizer.step(SID)  # type: ignore[union-attr]  # round 1: a mutation
        eng.optimizer.step(SID, force=True)  # type: ignore[union-attr]  # round 2: the merge
        merges = [
            c
            for c in eng.session_state(SID).candidates.values()
            if (c.metadata or {}).get("operation") == "merge"
        ]
        assert len(merges) == 1 and set(merges[0].metadata["parents"]) == {a, b}  # type: ignore[index]
        assert merges[0].metadata["ancestor"] == base  # type: ignore[index]
        assert "VERSION A" in prop.prompts[-1] and "Instruction A" in prop.prompts[-1]
    finally:
        eng.close()


@pytest.mark.parametrize("seed", [21, 22])
def test_simulation_children_improve_and_bad_ones_go(seed: int) -> None:
    prop = ScriptedProposer([0.35, 0.7, 0.45, 0.85, 0.3, 0.6])
    eng = make_engine(prop)
    try:
        eng.ensure_session(SID, baseline=BASELINE, kind="gepa_online", config=FAST)
        task = Task(base_rate=0.5)
        res = simulate(eng, SID, task, 1200, random.Random(seed), step=step(eng), chunk=20)
        state = eng.get_state(SID)
        rates = {
            c["candidate_id"]: true_rate(eng, SID, c["candidate_id"], task)
            for c in state["candidates"]
        }
        best = state["best_candidate_id"]
        assert best is not None and rates[best] == pytest.approx(0.85)
        pbest = state["policy"]["probability_best"]
        for c in state["candidates"]:  # evaluated bad children: archived or dormant
            if rates[c["candidate_id"]] <= 0.45 and c["reward_count"] >= 20:
                assert c["status"] == "archived" or pbest[c["candidate_id"]] < 0.01
        assert sum(c["status"] == "archived" for c in state["candidates"]) >= 2
        # lineage: the best descends from an accepted parent, not only from the baseline
        cands = eng.session_state(SID).candidates
        assert cands[best].parent_id is not None
        base_rate = rates[state["baseline_candidate_id"]]
        assert all(b is None or rates[b] >= base_rate for b in res.best_trace)
        assert state["optimizer"]["malformed"] == 0 and state["optimizer"]["proposals"] >= 4
    finally:
        eng.close()
