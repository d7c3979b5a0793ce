"""Routing posteriors: plain Thompson sampling by default, opt-in sharpened
Thompson sampling (variance divided by the sharpness, prior centred on the
session's pooled mean), never used for promotion or pruning."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from helpers import bern
from sim import Task, simulate

from synth_middleware._posterior import (
    SHARPENED_ROUTING,
    beta_posterior,
    posteriors_from_rows,
    prob_below,
    probability_best,
    probability_best_from_stats,
    routing_posteriors_from_rows,
    routing_probabilities_from_stats,
)
from synth_middleware.client.selection import routing_weights as client_routing_weights
from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore, parse_session_config
from synth_middleware.engine.policy import PolicySettings, evaluate, mix_floors, routing_weights

SID = "routing-sim"


def stats(*rows: tuple[int, float]) -> list[dict[str, float]]:
    return [{"reward_count": n, "avg_reward": m} for n, m in rows]


# -- the rule ----------------------------------------------------------------------


def test_default_routing_is_plain_thompson_everywhere() -> None:
    rows = [(10, 0.5, 2.5), (0, 0.0, 0.0), (30, 0.8, 4.8)]
    assert routing_posteriors_from_rows(rows, True) == posteriors_from_rows(rows, True)
    assert routing_posteriors_from_rows(rows, False) == posteriors_from_rows(rows, False)
    st = stats((10, 0.5), (0, 0.0), (30, 0.8))
    assert client_routing_weights(st) == probability_best_from_stats(st)
    # the engine publishes Thompson's P(best) mixed with the floors (policy doc, "Routing"):
    # nothing named and challengers unresolved, so the baseline keeps its floor
    d = evaluate([bern("b", 40, 20, is_baseline=True), bern("x", 30, 21), bern("y", 3, 1)], "b")
    s = PolicySettings()
    pb = list(d.probabilities().values())
    assert list(d.routing.values()) == pytest.approx(mix_floors(pb, 0, True, s))
    assert d.routing["b"] >= s.baseline_floor and min(d.routing.values()) >= s.routing_floor
    assert sum(d.routing.values()) == pytest.approx(1.0)
    assert routing_weights(d) == pytest.approx(d.routing)
    # without floors it is plain Thompson sampling
    bare = PolicySettings(baseline_floor=0.0, routing_floor=0.0)
    d0 = evaluate([bern("b", 40, 20, is_baseline=True), bern("x", 30, 21)], "b", bare)
    assert d0.routing == pytest.approx(d0.probabilities())


def test_sharpened_beta_posteriors_exact_values() -> None:
    rows = [(10, 0.5, 0.0), (0, 0.0, 0.0), (30, 0.8, 0.0)]
    posts = routing_posteriors_from_rows(rows, True, 6.0)
    m = (5 + 0 + 24 + 1) / (40 + 2)  # pooled mean, uniform prior
    expected = [(6 * (2 * m + 5), 6 * (2 * (1 - m) + 5)), (12 * m, 12 * (1 - m))]
    expected.append((6 * (2 * m + 24), 6 * (2 * (1 - m) + 6)))
    for p, (a, b) in zip(posts, expected, strict=True):
        assert (p.kind, p.a, p.b) == ("beta", pytest.approx(a), pytest.approx(b))
        assert p.mean == pytest.approx(a / (a + b))
        assert p.sd == pytest.approx(math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))
    # the centred posterior's mean; its variance times (a+b+1) / (6(a+b)+1), about 1/6
    centred = routing_posteriors_from_rows(rows, True, 1.0 + 1e-12)
    for p, q in zip(posts, centred, strict=True):
        tot = q.a + q.b
        assert p.mean == pytest.approx(q.mean)
        assert p.sd**2 == pytest.approx(q.sd**2 * (tot + 1) / (6 * tot + 1))
    # a candidate with no rewards is expected at the pooled mean, not at 0.5
    assert posts[1].mean == pytest.approx(m) and m > 0.7


def test_sharpened_normal_posteriors_keep_the_mean_and_shrink_the_sd() -> None:
    rows = [(10, 3.0, 20.0), (0, 0.0, 0.0), (1, 5.0, 0.0)]
    sound = posteriors_from_rows(rows, False)
    for p, q in zip(routing_posteriors_from_rows(rows, False, 4.0), sound, strict=True):
        assert p.kind == "normal" and p.mean == q.mean and p.sd == pytest.approx(q.sd / 2)


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, math.inf, math.nan])
def test_sharpness_must_be_at_least_one(bad: float) -> None:
    with pytest.raises(ValueError, match="sharpness"):
        routing_posteriors_from_rows([(1, 1.0, 0.0)], True, bad)


def test_a_new_candidate_keeps_traffic_in_a_high_reward_session() -> None:
    """Why the sharpened prior is centred: at 0.5 it would starve every newcomer."""
    st = stats((500, 0.9), (0, 0.0))
    w = routing_probabilities_from_stats(st, sharpness=SHARPENED_ROUTING)
    assert w[1] > 0.2  # expected to be like the session's candidates: tried at once
    # a sharpened uniform prior, Beta(6, 6), is almost never above the leader
    naive = beta_posterior(0, 0.0, prior=(SHARPENED_ROUTING, SHARPENED_ROUTING))
    assert 1.0 - prob_below(naive, 0.88) < 1e-3


def test_sharpening_only_moves_traffic_never_decisions() -> None:
    cands = [
        bern("base", 60, 27, is_baseline=True),
        bern("a", 45, 31),
        bern("b", 25, 14),
        bern("c", 4, 2),
        bern("d", 30, 8),
    ]
    plain = evaluate(cands, "base", PolicySettings())
    sharp = evaluate(cands, "base", PolicySettings(routing_sharpness=SHARPENED_ROUTING))
    assert sharp.verdicts == plain.verdicts  # P(best), P(beats baseline), eligibility, pruning
    assert (sharp.best_id, sharp.leader_id, sharp.prune) == (
        plain.best_id,
        plain.leader_id,
        plain.prune,
    )
    rows = [(c.reward_count, c.mean, c.m2) for c in cands]
    expected = probability_best(routing_posteriors_from_rows(rows, True, SHARPENED_ROUTING))
    expected = mix_floors(expected, 0, True, PolicySettings())
    assert list(sharp.routing.values()) == pytest.approx(expected)
    assert sharp.routing["a"] > plain.routing["a"]  # more traffic for the leader
    assert sum(sharp.routing.values()) == pytest.approx(1.0)
    assert routing_weights(sharp, "top_two") == routing_weights(plain, "top_two")  # sound


def test_routing_sharpness_is_a_session_setting() -> None:
    def sharpness(cfg: dict[str, object]) -> float:
        return PolicySettings.from_config(parse_session_config(cfg)).routing_sharpness

    assert sharpness({}) == 1.0
    assert sharpness({"online_routing_sharpness": 6}) == 6.0
    for bad in ("many", 0.5, True, float("nan")):  # unusable: plain Thompson
        assert sharpness({"online_routing_sharpness": bad}) == 1.0


# -- known ground truth ------------------------------------------------------------

RATES = [0.44, 0.41, 0.57, 0.50, 0.30, 0.52]  # banking77-like (benchmarks/selection.py)


def _regret(rule: str, seeds: int = 300, budget: int = 300, refresh: int = 10) -> float:
    """Mean cumulative regret over ``seeds`` runs; ours routes on the real routing
    posteriors frozen for ``refresh`` rollouts (as the client's cache), greedy sees
    every reward at once. No pruning: the routing rule alone."""
    rng = np.random.default_rng(11)
    mu = np.array(RATES)
    k, rows_ix = len(mu), np.arange(seeds)
    succ, cnt, regret = np.zeros((seeds, k)), np.zeros((seeds, k)), np.zeros(seeds)
    a = b = np.ones((seeds, k))
    for t in range(budget):
        if rule == "greedy":
            mean = np.where(cnt > 0, succ / np.maximum(cnt, 1), np.inf)
            arm = (mean + rng.random((seeds, k)) * 1e-9).argmax(1)
        else:
            if t % refresh == 0:
                sharpness = SHARPENED_ROUTING if rule == "sharpened" else 1.0
                a, b = np.empty((seeds, k)), np.empty((seeds, k))
                for i in range(seeds):
                    rows = [
                        (int(n), s / n if n else 0.0, 0.0)
                        for s, n in zip(succ[i], cnt[i], strict=True)
                    ]
                    for j, p in enumerate(routing_posteriors_from_rows(rows, True, sharpness)):
                        a[i, j], b[i, j] = p.a, p.b
            arm = rng.beta(a, b).argmax(1)
        succ[rows_ix, arm] += rng.random(seeds) < mu[arm]
        cnt[rows_ix, arm] += 1
        regret += mu.max() - mu[arm]
    return float(regret.mean())


def test_sharpened_routing_has_less_regret_than_plain_thompson_and_greedy() -> None:
    """300 seeds of 300 rollouts, fixed: sharpened Thompson sampling loses clearly
    less than plain Thompson sampling and than greedy-by-mean (which is not even
    frozen between refreshes). Measured: 16.3 against 19.4 and 17.8."""
    sharp, plain, greedy = _regret("sharpened"), _regret("thompson"), _regret("greedy")
    assert sharp < 0.9 * plain
    assert sharp < 0.95 * greedy


@pytest.mark.parametrize("seed", [1, 2])
def test_sharpened_routing_through_the_engine(seed: int) -> None:
    """End to end (engine, optimizer steps, the client's routing function): more
    traffic to the best than plain Thompson sampling on the same seed, and never a
    worse candidate named."""
    served = {}
    for routing in ("thompson", "sharpened"):
        eng = Engine(SqliteStore(":memory:"), optimizer=OptimizerOptions(background=False, seed=0))
        try:
            state = eng.ensure_session(
                SID,
                baseline="You are a support assistant. Classify the user's request.",
                config={"online_optimizer_enabled": True, "max_instructions": 1},
            )
            truth = {state["baseline_candidate_id"]: 0.5}
            for r in (0.35, 0.55, 0.7, 0.3):
                truth[eng.add_candidate(SID, f"Candidate instruction [q={r:.2f}]")] = r
            eng.update_config(SID, {"demo_sets_per_batch": 0})
            res = simulate(
                eng,
                SID,
                Task(base_rate=0.5),
                600,
                random.Random(seed),
                step=lambda e=eng: e.optimizer.step(SID),  # type: ignore[union-attr]
                chunk=20,
                routing=routing,
            )
            best = max(truth, key=truth.__getitem__)
            served[routing] = res.served.get(best, 0)
            assert all(b is None or truth[b] >= 0.5 for b in res.best_trace)
        finally:
            eng.close()
    assert served["sharpened"] > served["thompson"]
