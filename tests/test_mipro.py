"""MIPRO online: demo bootstrapping, grounded instruction proposals, factored
Thompson choice, triggers, failures, and the end-to-end loop through the client."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers import wait_until
from sim import BASELINE, ScriptedProposer, Task, simulate, true_rate

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend
from synth_middleware.client.candidates import parse_candidate
from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore
from synth_middleware.engine.optimizers.mipro import render_candidate
from synth_middleware.testing import FakeOpenAIServer

SID = "mipro-sim"
FAST = {"online_proposer_min_rollouts": 20, "online_rollouts_per_candidate": 10}


def make_engine(proposer: ScriptedProposer | None = None, **opts: Any) -> Engine:
    options = OptimizerOptions(
        proposer_client=proposer.client() if proposer is not None else None,
        proposer_model="proposer-model" if proposer is not None else None,
        background=False,
        seed=0,
        backoff_initial=0.0,
        env={},
        **opts,
    )
    return Engine(SqliteStore(":memory:"), optimizer=options)


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = make_engine()
    yield eng
    eng.close()


def step(eng: Engine) -> Any:
    return lambda: eng.optimizer.step(SID)  # type: ignore[union-attr]


def test_demo_sets_only_without_a_proposer(engine: Engine) -> None:
    engine.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=FAST)
    simulate(engine, SID, Task(base_rate=0.5, demo_bonus=0.1), 19, random.Random(1))
    assert engine.optimizer.step(SID)["status"] == "waiting_for_rollouts"  # type: ignore[union-attr]
    simulate(engine, SID, Task(base_rate=0.5, demo_bonus=0.1), 2, random.Random(2), start=19)
    status = engine.optimizer.step(SID)  # type: ignore[union-attr]
    assert status["status"] == "proposed" and status["proposals"] == 1
    item = next(c for c in engine.list_candidates(SID)["items"] if not c["is_baseline"])  # type: ignore[call-overload]
    meta = engine.session_state(SID).candidates[item["candidate_id"]].metadata or {}
    assert meta["optimizer"] == "mipro" and meta["instruction_id"] == "i0" and meta["demos"] >= 1
    text = item["candidate_content"]
    assert text.startswith(BASELINE) and "Here are examples of good answers." in text
    # demos come from high-reward traces: each demo output is a correct label
    cand = parse_candidate(item)
    assert cand.kind == "text" and "Output:\n" in text and "unknown" not in text
    pool = engine.session_state(SID).optimizer["pool"]
    assert [i["id"] for i in pool["instructions"]] == ["i0"]  # no proposer: no instructions


def test_messages_format_renders_a_transformation() -> None:
    demos = [{"input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]
    content, payload = render_candidate("NEW", demos, baseline=BASELINE, fmt="messages")
    assert content is None and payload["object"] == "transformation"
    cand = parse_candidate({"candidate_id": "c1", "artifact_payload": payload})
    msgs = [{"role": "system", "content": BASELINE}, {"role": "user", "content": "hi"}]
    out = cand.apply(msgs)
    assert out is not None
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert out[0]["content"] == "NEW" and out[1]["content"] == "q1" and out[-1]["content"] == "hi"
    same, _ = render_candidate("only text", [], baseline=BASELINE, fmt="messages")
    assert same == "only text"


def test_grounded_instruction_proposals() -> None:
    prop = ScriptedProposer([0.8, 0.4, 0.6])
    eng = make_engine(prop)
    try:
        cfg = {**FAST, "instructions_per_batch": 3, "demo_sets_per_batch": 1}
        eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=cfg)
        simulate(eng, SID, Task(), 30, random.Random(3))
        status = eng.optimizer.step(SID)  # type: ignore[union-attr]
        assert status["proposer_calls"] == 3 and status["proposals"] == 1
        pool = eng.session_state(SID).optimizer["pool"]
        assert len(pool["instructions"]) == 4 and len(pool["demo_sets"]) == 2
        assert {i["tip"] for i in pool["instructions"][1:]} <= {
            "creative",
            "simple",
            "description",
            "high_stakes",
            "persona",
            "edge_cases",
            "format",
        }
        prompt = prop.prompts[0]
        assert "DATASET SUMMARY" in prompt and "30 recorded inputs" in prompt
        assert BASELINE in prompt  # the current instruction
        assert "EXAMPLES THAT SCORED WELL" in prompt and "## Reward\n1" in prompt
        assert "TIP: " in prompt and "please help with" in prompt
        good, poor = prompt.split("EXAMPLES THAT SCORED POORLY")
        assert "wrong: expected" not in good  # successes without feedback
        assert "wrong: expected" in poor and "## Reward\n0" in poor  # failures with it
    finally:
        eng.close()


def test_no_traces_means_no_demos_and_ungrounded_prompts() -> None:
    prop = ScriptedProposer([0.7])
    eng = make_engine(prop)
    try:
        eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=FAST)
        simulate(eng, SID, Task(), 30, random.Random(4), send_traces=False)
        eng.optimizer.step(SID)  # type: ignore[union-attr]
        pool = eng.session_state(SID).optimizer["pool"]
        assert len(pool["demo_sets"]) == 1  # only the empty set
        for prompt in prop.prompts:
            assert "No inputs were recorded" in prompt
            assert "please help with" not in prompt and "wrong: expected" not in prompt
            assert "# Example" not in prompt
    finally:
        eng.close()


def test_trigger_respects_limits() -> None:
    prop = ScriptedProposer([0.5, 0.52, 0.48, 0.51])
    eng = make_engine(prop)
    try:
        cfg = {**FAST, "online_proposer_max_candidates": 3, "online_parallel_trials": 2}
        eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=cfg)
        simulate(eng, SID, Task(), 25, random.Random(5))
        eng.optimizer.step(SID)  # type: ignore[union-attr]
        eng.optimizer.step(SID)  # type: ignore[union-attr]
        # two trials under evaluation (fewer than 10 rewards each): no third yet
        assert eng.optimizer.step(SID)["status"] == "evaluating"  # type: ignore[union-attr]
        simulate(eng, SID, Task(), 600, random.Random(6), step=step(eng), start=25)
        state = eng.session_state(SID)
        mine = [c for c in state.candidates.values() if (c.metadata or {}).get("optimizer")]
        assert len(mine) == 3 and state.optimizer["status"] == "max_candidates"
    finally:
        eng.close()


@pytest.mark.parametrize("seed", [11, 12])
def test_simulation_finds_the_best_proposal(seed: int) -> None:
    """Proposals of known quality: the 0.85 instruction must end up named best."""
    prop = ScriptedProposer([0.3, 0.85, 0.45, 0.6])
    eng = make_engine(prop)
    try:
        eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=FAST)
        task = Task(base_rate=0.5, demo_bonus=0.02)
        res = simulate(eng, SID, task, 1200, random.Random(seed), step=step(eng), chunk=20)
        state = eng.get_state(SID)
        best = state["best_candidate_id"]
        assert best is not None and "[q=0.85]" in (
            eng.get_candidate(best)["candidate_content"] or ""
        )
        rates = {
            c["candidate_id"]: true_rate(eng, SID, c["candidate_id"], task)
            for c in state["candidates"]
        }
        assert rates[best] >= max(rates.values()) - 0.061  # the best, up to the demo bonus
        # bad proposals (q=0.30) were archived on evidence (pruned), or are dormant:
        # P(best) < 1%, so routing gives them almost no traffic
        pbest = state["policy"]["probability_best"]
        for c in state["candidates"]:
            if rates[c["candidate_id"]] < 0.4 and c["reward_count"] >= 5:  # evaluated ones
                assert c["status"] == "archived" or pbest[c["candidate_id"]] < 0.01
        base_rate = rates[state["baseline_candidate_id"]]
        assert all(b is None or rates[b] >= base_rate for b in res.best_trace)
        assert res.total_reward / 1200 > 0.7  # most traffic went to good candidates
    finally:
        eng.close()


def test_proposer_failure_backs_off_and_is_visible() -> None:
    prop = ScriptedProposer([0.7])
    calls = {"n": 0}
    client = prop.client()
    answer = client.chat.completions.create
    # A real connection error, as the client raises it (nothing listens on port 9).
    dead = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as refused:
        dead.models.list()

    def create(**kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise refused.value
        return answer(**kw)

    client.chat.completions.create = create
    eng = Engine(
        SqliteStore(":memory:"),
        optimizer=OptimizerOptions(
            proposer_client=client,
            proposer_model="m",
            background=False,
            seed=0,
            backoff_initial=30.0,
            env={},
        ),
    )
    try:
        cfg = {**FAST, "demo_sets_per_batch": 0, "instructions_per_batch": 1}
        eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=cfg)
        simulate(eng, SID, Task(), 25, random.Random(7))
        runner = eng.optimizer
        assert runner is not None
        status = runner.step(SID)
        assert status["status"] == "backoff" and status["failures"] == 1
        assert status["last_error"] == "APIConnectionError: Connection error."
        wire = eng.get_state(SID)["optimizer"]
        assert wire["status"] == "backoff" and wire["next_retry_at"] > time.time() + 20
        assert "pool" not in wire and "lease" not in wire  # internals stay internal
        assert runner.step(SID)["failures"] == 1 and calls["n"] == 1  # backing off: no call
        assert runner.step(SID, force=True)["failures"] == 2
        status = runner.step(SID, force=True)
        assert status["status"] == "proposed" and status["failures"] == 0
        assert status["proposals"] == 1 and "last_error" not in status
    finally:
        eng.close()


def test_end_to_end_local_backend_serves_proposals(tmp_path: Path) -> None:
    """LocalBackend + MIPRO online in the background + a scripted proposer on a local
    OpenAI-compatible server: proposals become candidates and the client serves them."""
    prop = ScriptedProposer([0.95])
    rng = random.Random(9)

    def model_reply(body: dict[str, Any]) -> str:
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        return "refund" if "[q=0.95]" in system or rng.random() < 0.3 else "unknown"

    with (
        FakeOpenAIServer(reply=model_reply) as model,
        FakeOpenAIServer(reply=prop.reply) as proposer_server,
    ):
        proposer_client = openai.OpenAI(base_url=proposer_server.url, api_key="unused")
        engine = Engine(
            SqliteStore(tmp_path / "synth.db"),
            optimizer=OptimizerOptions(
                proposer_client=proposer_client,
                proposer_model="proposer",
                interval=0.02,
                backoff_initial=0.05,
                seed=0,
                env={},
            ),
        )
        backend = LocalBackend(engine=engine)
        cfg = {**FAST, "online_proposer_min_rollouts": 10, "demo_sets_per_batch": 0}
        engine.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=cfg)
        client = synth.wrap(
            openai.OpenAI(base_url=model.url, api_key="unused"),
            session=SID,
            backend=backend,
            ttl=0.05,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                for _ in range(10):
                    resp = client.chat.completions.create(
                        model="m",
                        messages=[
                            {"role": "system", "content": BASELINE},
                            {"role": "user", "content": "where is my refund"},
                        ],
                    )
                    ok = resp.choices[0].message.content == "refund"
                    synth.reward(resp, 1.0 if ok else 0.0, feedback=None if ok else "wrong")
                synth.flush(2.0)
                if any("[q=0.95]" in (s or "") for s in model.system_prompts()):
                    break
            assert proposer_server.requests, "the proposer was never called"
            assert "DATASET SUMMARY" in proposer_server.requests[0]["messages"][0]["content"]
            assert wait_until(
                lambda: any(
                    "[q=0.95]" in (c.get("candidate_content") or "")
                    for c in backend.list_candidates(SID)["items"]
                )
            )
            served = [s for s in model.system_prompts() if s and "[q=0.95]" in s]
            assert served, "the client never served the proposal"
            state = backend.get_state(SID)
            assert state["optimizer"]["proposals"] >= 1
        finally:
            synth.flush(2.0)
            engine.close()


def test_many_empty_rounds_do_not_overflow_the_backoff() -> None:
    """A forced step after every reward with nothing to propose (the demo's control run
    steps 2,000 times): the backoff's exponent once overflowed a float after 1,025."""
    eng = make_engine(None)
    try:
        cfg = {**FAST, "demo_sets_per_batch": 0, "max_demo_sets": 0}  # nothing to propose
        eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=cfg)
        simulate(eng, SID, Task(), 40, random.Random(3))
        for _ in range(1200):
            status = eng.optimizer.step(SID, force=True)  # type: ignore[union-attr]
        assert status["status"] != "error"
    finally:
        eng.close()


def test_proposal_spacing_waits_for_twice_the_data() -> None:
    """``online_proposal_spacing=2``: each proposal round waits until the generation's rewards
    have doubled since the last proposal, and the runner records that count."""
    prop = ScriptedProposer([0.5, 0.55, 0.6, 0.65, 0.7])
    eng = make_engine(prop)
    try:
        cfg = {
            **FAST,
            "online_proposal_spacing": 2.0,
            "instructions_per_batch": 1,
            "demo_sets_per_batch": 0,
            "max_demo_sets": 0,
        }
        eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=cfg)
        simulate(eng, SID, Task(), 400, random.Random(8), step=step(eng), chunk=5)
        state = eng.session_state(SID)
        mine = sorted(
            (c for c in state.candidates.values() if (c.metadata or {}).get("optimizer")),
            key=lambda c: c.metadata["after_rewards"],
        )
        seen = [c.metadata["after_rewards"] for c in mine]
        assert len(seen) >= 3, seen
        assert seen[0] >= 20
        for before, after in itertools.pairwise(seen):
            assert after >= 2 * before, seen
        assert state.optimizer["status"] == "spacing"
    finally:
        eng.close()


def test_prompt_shows_as_many_examples_and_failures_as_configured() -> None:
    """``proposer_max_examples`` / ``proposer_max_failures`` bound the rollouts a MIPRO
    proposal prompt shows (distinct inputs; successes only above the lowest reward)."""
    for n_good, n_bad in ((3, 8), (12, 20)):
        prop = ScriptedProposer([0.6])
        eng = make_engine(prop)
        try:
            cfg = {
                **FAST,
                "instructions_per_batch": 1,
                "proposer_max_examples": n_good,
                "proposer_max_failures": n_bad,
            }
            eng.ensure_session(SID, baseline=BASELINE, kind="mipro_online", config=cfg)
            simulate(eng, SID, Task(), 200, random.Random(9))
            eng.optimizer.step(SID)  # type: ignore[union-attr]
            prompt = prop.prompts[0]
            good, poor = prompt.split("EXAMPLES THAT SCORED POORLY")
            assert good.count("# Example") == n_good
            assert "## Reward\n0" not in good
            assert poor.count("# Example") == n_bad
        finally:
            eng.close()
