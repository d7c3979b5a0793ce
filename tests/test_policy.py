"""The selection policy: posterior math, promotion, rollback, pruning, and
simulations with known ground truth."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import bern
from sim import BASELINE, Task, simulate

from synth_middleware._posterior import (
    Grid,
    beta_posterior,
    normal_posterior,
    posteriors_from_stats,
    prob_below,
    prob_greater,
    probability_best,
    top_two_weights,
)
from synth_middleware.client.selection import probability_best as client_probability_best
from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore, parse_session_config
from synth_middleware.engine.policy import PolicySettings, evaluate, routing_weights
from synth_middleware.errors import InvalidRequestError

SID = "policy-sim"


# -- posterior math ------------------------------------------------------------


def test_probability_best_matches_monte_carlo() -> None:
    rng = np.random.default_rng(3)
    posts = [
        beta_posterior(30, 0.5),
        beta_posterior(40, 0.6),
        beta_posterior(0, 0.0),
        beta_posterior(500, 0.55),
        beta_posterior(5, 1.0),
    ]
    draws = np.stack([rng.beta(p.a, p.b, 300_000) for p in posts])
    mc = np.bincount(draws.argmax(0), minlength=len(posts)) / draws.shape[1]
    assert np.allclose(probability_best(posts), mc, atol=0.004)
    assert prob_greater(posts[1], posts[0]) == pytest.approx(
        (draws[1] > draws[0]).mean(), abs=0.004
    )
    assert prob_below(posts[3], 0.56) == pytest.approx((draws[3] < 0.56).mean(), abs=0.004)
    grid = Grid(posts)
    shifted = (draws[1] > draws[0] + 0.05).mean()
    assert grid.prob_greater(1, 0, shift=0.05) == pytest.approx(shifted, abs=0.005)
    # very narrow posteriors next to wide ones
    narrow = [beta_posterior(100_000, 0.5), beta_posterior(100_000, 0.502), beta_posterior(3, 0.3)]
    d2 = np.stack([rng.beta(p.a, p.b, 300_000) for p in narrow])
    mc2 = np.bincount(d2.argmax(0), minlength=3) / d2.shape[1]
    assert np.allclose(probability_best(narrow), mc2, atol=0.005)


def test_normal_posteriors_for_unbounded_rewards() -> None:
    stats = [
        {"reward_count": 10, "avg_reward": 3.0, "reward_m2": 20.0},
        {"reward_count": 0},
        {"reward_count": 1, "avg_reward": 5.0},
    ]
    posts = posteriors_from_stats(stats)
    assert [p.kind for p in posts] == ["normal"] * 3
    assert posts[1].sd > posts[0].sd  # no data: the wide pooled prior
    p = normal_posterior(10_000, 2.0, 9_999.0, prior_mean=0.0, prior_var=1.0)
    assert p.mean == pytest.approx(2.0, abs=1e-3) and p.sd == pytest.approx(0.01, rel=0.01)
    rng = np.random.default_rng(5)
    draws = np.stack([rng.normal(q.mean, q.sd, 300_000) for q in posts])
    mc = np.bincount(draws.argmax(0), minlength=3) / draws.shape[1]
    assert np.allclose(probability_best(posts), mc, atol=0.004)
    # the client routes on the same numbers
    assert client_probability_best(stats) == probability_best(posts)


def test_top_two_weights() -> None:
    p = [0.7, 0.2, 0.1]
    w = top_two_weights(p, beta=0.5)
    expected_1 = 0.5 * 0.2 + 0.5 * (0.7 * 0.2 / 0.3 + 0.1 * 0.2 / 0.9)
    assert w[1] == pytest.approx(expected_1) and sum(w) == pytest.approx(1.0)
    assert w[0] < 0.7 and w[1] > 0.2  # the runner-up gets more traffic than plain Thompson
    assert top_two_weights([1.0, 0.0, 0.0]) == [1.0, 0.0, 0.0]
    decision = evaluate([bern("b", 50, 25, is_baseline=True), bern("x", 50, 35)], "b")
    assert sum(routing_weights(decision, "top_two").values()) == pytest.approx(1.0)


# -- promotion, incumbency, rollback -----------------------------------------------


def test_three_lucky_rewards_are_not_promotion() -> None:
    base = bern("base", 200, 100, is_baseline=True)
    lucky = bern("lucky", 3, 3)  # the "sum went up" rule would promote this
    d = evaluate([base, lucky], "base", PolicySettings(min_rollouts_for_best=20))
    assert d.best_id == "base"
    assert d.verdicts["lucky"].eligible is False


def test_config_is_validated_and_names_the_key() -> None:
    with pytest.raises(InvalidRequestError, match="online_prune_min_rollouts"):
        parse_session_config({"online_prune_min_rollouts": "many"})
    with pytest.raises(InvalidRequestError, match="promotion_confidence"):
        parse_session_config({"promotion_confidence": 1.5})
    with pytest.raises(InvalidRequestError, match="proposer_api_key"):
        parse_session_config({"proposer_api_key": "sk-live-secret"})
    cfg = parse_session_config(
        {"prompt_learning": {"gepa": {"online_prune_threshold": 0.3, "proposer": {"model": "m"}}}},
        "gepa_online",
    )
    assert cfg.online_prune_threshold == 0.3 and cfg.proposer_model == "m"
    assert (
        parse_session_config({"min_proposal_rollouts": 7, "x": 1}).online_proposer_min_rollouts == 7
    )
    eng = Engine(SqliteStore(":memory:"))
    try:
        with pytest.raises(InvalidRequestError, match="online_rollouts_per_candidate"):
            eng.ensure_session(SID, baseline="b", config={"online_rollouts_per_candidate": 0})
        eng.ensure_session(SID, baseline="b")
        with pytest.raises(InvalidRequestError, match="min_rollouts_for_best"):
            eng.update_config(SID, {"min_rollouts_for_best": -1})
        eng.update_config(SID, {"min_rollouts_for_best": 3})
        assert eng.session_state(SID).policy_settings.min_rollouts_for_best == 3
    finally:
        eng.close()


# -- simulations with known ground truth -------------------------------------------


@pytest.fixture
def sim_engine() -> Iterator[Engine]:
    eng = Engine(SqliteStore(":memory:"), optimizer=OptimizerOptions(background=False, seed=0))
    yield eng
    eng.close()


def _fixed_candidates(eng: Engine, rates: list[float]) -> dict[str, float]:
    """A session whose baseline succeeds with ``rates[0]`` and one candidate per other rate."""
    state = eng.ensure_session(
        SID, baseline=BASELINE, config={"online_optimizer_enabled": True, "max_instructions": 1}
    )
    truth = {state["baseline_candidate_id"]: rates[0]}
    for r in rates[1:]:
        truth[eng.add_candidate(SID, f"Candidate instruction [q={r:.2f}]")] = r
    # no proposer and no demo sets: selection and pruning only
    eng.update_config(SID, {"demo_sets_per_batch": 0})
    return truth


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulation_finds_the_best_and_prunes_the_bad(sim_engine: Engine, seed: int) -> None:
    truth = _fixed_candidates(sim_engine, [0.5, 0.35, 0.55, 0.7, 0.3])
    best = max(truth, key=truth.__getitem__)
    res = simulate(
        sim_engine,
        SID,
        Task(base_rate=0.5),
        1200,
        random.Random(seed),
        step=lambda: sim_engine.optimizer.step(SID),  # type: ignore[union-attr]
        chunk=20,
    )
    state = sim_engine.get_state(SID)
    assert state["best_candidate_id"] == best
    status = {c["candidate_id"]: c["status"] for c in state["candidates"]}
    probs = state["policy"]["probability_best"]
    for cid, rate in truth.items():
        if rate <= 0.35:  # clearly worse: pruned once the evidence shows it, else dormant
            assert status[cid] == "archived" or probs[cid] < 0.01, (cid, rate)
    assert status[best] == "active"
    assert res.served[best] > 0.6 * 1200  # most traffic went to the best (low regret)
    # never named a candidate worse than the baseline along the way
    base_rate = truth[state["baseline_candidate_id"]]
    assert all(b is None or truth[b] >= base_rate for b in res.best_trace)


def test_simulation_rolls_back_a_regressing_candidate(sim_engine: Engine) -> None:
    truth = _fixed_candidates(sim_engine, [0.5, 0.8])
    base_id, cid = list(truth)
    task = Task(base_rate=0.5)
    step = lambda: sim_engine.optimizer.step(SID)  # type: ignore[union-attr]  # noqa: E731
    simulate(sim_engine, SID, task, 700, random.Random(7), step=step, chunk=20)
    assert sim_engine.get_state(SID)["best_candidate_id"] == cid
    # the model behind the app changes: the candidate now succeeds 20% of the time
    res = simulate(
        sim_engine,
        SID,
        task,
        1500,  # the evidence that named it must be outweighed first
        random.Random(8),
        step=step,
        chunk=20,
        rate_override=lambda c, p: 0.2 if c == cid else p,
        start=700,
    )
    state = sim_engine.get_state(SID)
    assert state["best_candidate_id"] == base_id
    assert res.best_trace[-1] == base_id
    actions = [h["action"] for h in state["optimizer"]["best_history"]]
    assert actions[-1] == "rolled_back" and "promoted" in actions
