"""Sound promotion: the engine's own state machine under A/A, drift, small winners,
pruning minimums and rollback, routed exactly as clients route (the published
routing weights), with the incumbent recorded as the optimizer runner records it.

The rates over many more seeds are in BENCHMARKS.md "Selection"
(``benchmarks/selection.py``); these fixed seeds pin the guarantees at the
engine itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from synth_middleware.engine.evidence import EvidenceLedger, boundary, challenger_alpha
from synth_middleware.engine.state import Event, SessionStateMachine

SID = "promo"


class Session:
    """A session state machine fed events directly (no store: fast enough for seeds)."""

    def __init__(self, rates: list[float], config: dict | None = None) -> None:
        self.st = SessionStateMachine(SID)
        self.seq = 0
        self.ids = ["base"] + [f"c{i}" for i in range(1, len(rates))]
        self.rates = dict(zip(self.ids, rates, strict=True))
        self.t = 0
        self.named: list[str] = []
        self.emit("session_created", kind="mipro_online", config=config or {})
        for cid in self.ids:
            self.emit("candidate_added", candidate_id=cid, is_baseline=cid == "base", generation=0)

    def emit(self, type_: str, **payload: object) -> None:
        self.seq += 1
        self.st.apply(Event(self.seq, SID, type_, dict(payload), float(self.seq)))

    def run(
        self,
        n: int,
        rng: random.Random,
        drift: Callable[[int], float] = lambda t: 0.0,
        override: Callable[[str, float], float] | None = None,
    ) -> None:
        for _ in range(n):
            self.t += 1
            routing = self.st.policy().routing
            ids = [c for c in self.ids if c in routing]
            cid = rng.choices(ids, weights=[routing[c] for c in ids])[0]
            p = self.rates[cid] + drift(self.t)
            if override is not None:
                p = override(cid, p)
            self.emit("reward", candidate_id=cid, value=1.0 if rng.random() < p else 0.0)
            best = self.st.policy().best_id
            if best != self.st.optimizer.get("best_candidate_id"):
                # what the optimizer runner records (the policy's incumbent input)
                self.emit("optimizer", patch={"best_candidate_id": best})
            if best is not None and best != "base":
                self.named.append(best)
            for cid_, _reason in self.st.policy().prune:
                self.emit("candidate_archived", candidate_id=cid_, reason="pruned")


# -- the evidence itself ------------------------------------------------------------


def test_boundary_is_anytime_valid_for_a_random_walk() -> None:
    """A fair +-1 walk checked after every step crosses the boundary at most alpha of
    the time (Monte Carlo, 2,000 walks of 2,000 steps, alpha 0.05)."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(1)
    steps = rng.choice([-1.0, 1.0], size=(2000, 2000))
    s = steps.cumsum(1)
    v = np.arange(1, 2001, dtype=float)[None]
    crossed = (s >= boundary(v, 0.05, 125.0, log=np.log)).any(1).mean()
    assert crossed <= 0.05
    # and it is not vacuous: a +0.2 drift crosses it
    assert ((s + 0.2 * v) >= boundary(v, 0.05, 125.0, log=np.log)).any(1).mean() > 0.95


def test_alpha_spending_sums_to_alpha() -> None:
    assert sum(challenger_alpha(k, 0.05) for k in range(1, 100_000)) == pytest.approx(
        0.05, rel=1e-4
    )
    assert challenger_alpha(1, 0.05) == 0.025 and challenger_alpha(3, 0.05) == 0.05 / 12
    assert challenger_alpha(7, 0.05, spend=False) == 0.05


def test_ledger_pairs_use_the_common_period_only() -> None:
    led = EvidenceLedger()
    led.activate("a")
    for _ in range(100):  # a alone, easy traffic
        led.observe("a", 1.0, 1.0)
    led.activate("b")
    for i in range(100):  # both, same rate
        led.observe("a" if i % 2 else "b", float(i % 4 < 2), 0.5)
    pe = led.pair("b", "a")
    assert pe is not None and pe.t == 100 and pe.n_first == 50 and pe.n_second == 50
    assert abs(pe.estimate or 0.0) < 0.3  # a's 100 early successes are not compared
    assert EvidenceLedger.from_json(led.to_json()).pair("b", "a") == pe


# -- the engine's state machine ---------------------------------------------------------


def _false_rate(
    rates: list[float], seeds: int, n: int, drift: Callable[[int], float] = lambda t: 0.0
) -> float:
    base = rates[0]
    bad = 0
    for seed in range(seeds):
        s = Session(rates)
        s.run(n, random.Random(seed), drift)
        if any(s.rates[c] <= base for c in s.named):
            bad += 1
    return bad / seeds


def test_aa_null_never_promotes_more_than_alpha() -> None:
    """Three challengers exactly as good as a 0.44 baseline, 1,000 rewards, the name read
    after every reward: the old posterior rule named one in 7 of 30 seeds here (23%)."""
    assert _false_rate([0.44] * 4, 120, 1000) <= 0.05


def test_drift_does_not_make_late_arms_look_better() -> None:
    """Every arm's rate moves together (hard traffic first, then easy): an arm that routing
    turned to later must not look better for it (the old rule: 19 of 20 seeds)."""
    drift = lambda t: -0.2 if t < 500 else 0.2  # noqa: E731
    assert _false_rate([0.45] * 4, 60, 1000, drift) <= 0.05


def test_a_real_winner_is_named_and_never_archived() -> None:
    named = 0
    for seed in range(20):
        s = Session([0.44, 0.44, 0.44, 0.64])
        s.run(1200, random.Random(100 + seed))
        assert s.st.candidates["c3"].status == "active"
        named += s.st.policy().best_id == "c3"
        assert all(c == "c3" for c in s.named)
    assert named >= 16


def test_unlucky_start_is_not_archived_below_the_minimum() -> None:
    """A truly better candidate with 1 of 10 correct is kept (no retiring on P(best))."""
    s = Session([0.5, 0.6], {"online_prune_min_rollouts": 20})
    for v in [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]:
        s.emit("reward", candidate_id="c1", value=float(v))
    for i in range(200):
        s.emit("reward", candidate_id="base", value=float(i % 2))
    d = s.st.policy()
    assert d.prune == [] and d.verdicts["c1"].eligible is False
    assert d.verdicts["c1"].p_best < 0.01  # the old rule retired it here


def test_pruning_needs_evidence_and_the_minimum() -> None:
    s = Session([0.6, 0.1])
    s.run(2000, random.Random(5))
    assert s.st.candidates["c1"].status == "archived"
    assert s.st.candidates["c1"].reward_count >= 20
    assert s.st.candidates["c1"].archive_reason == "pruned"


def test_baseline_keeps_its_floor_while_a_challenger_is_unresolved() -> None:
    s = Session([0.3, 0.9])
    s.run(15, random.Random(1))
    d = s.st.policy()
    assert d.unresolved and d.best_id == "base" and d.routing["base"] >= 0.2
    s.run(600, random.Random(2))
    d = s.st.policy()
    assert d.best_id == "c1"
    assert d.routing["base"] < 0.2  # a challenger is named: the floor is released
    assert d.routing["base"] >= 0.01 - 1e-12  # every candidate keeps the routing floor


def test_rollback_restores_the_baseline_when_the_best_turns_worse() -> None:
    s = Session([0.4, 0.8])
    s.run(400, random.Random(3))
    assert s.st.policy().best_id == "c1"
    # the cumulative evidence that named it must be outweighed: about as long again
    s.run(3000, random.Random(4), override=lambda c, p: 0.1 if c == "c1" else p)
    assert s.st.policy().best_id == "base"
    assert s.st.optimizer.get("best_candidate_id") == "base"
    assert s.st.candidates["c1"].status == "archived"  # shown worse: archived too


def test_snapshot_replay_gives_the_same_decisions() -> None:
    s = Session([0.44, 0.5, 0.6])
    s.run(700, random.Random(9))
    snap = SessionStateMachine.from_snapshot(s.st.to_snapshot())
    assert snap.policy().to_json() == s.st.policy().to_json()
    assert snap.evidence.to_json() == s.st.evidence.to_json()
    ev = s.st.policy().verdicts["c2"]
    assert ev.effect_lower is not None and ev.effect_upper is not None
    assert ev.effect_lower <= (ev.effect or 0.0) <= ev.effect_upper
    assert all(math.isfinite(w) for w in s.st.policy().routing.values())


# -- screen, then confirm ------------------------------------------------------------


def test_ledger_confirmatory_evidence_starts_at_entry() -> None:
    """Before entry nothing counts for promotion; after it, only what follows: a
    challenger that looked great before entering starts from zero."""
    led = EvidenceLedger()
    led.activate("base")
    led.activate("c")
    for i in range(200):  # c far better before its entry
        led.observe("c" if i % 2 else "base", float(i % 2), 0.5)
    assert led.pair_since_entry("c", "base") is None
    assert led.enter("c") and not led.enter("c")  # once
    assert led.entries == {"c": 1}
    pe = led.pair_since_entry("c", "base")
    assert pe is not None and pe.t == 0 and pe.s == 0.0
    for i in range(100):  # equal after entry
        led.observe("c" if i % 2 else "base", float(i % 4 < 2), 0.5)
    pe = led.pair_since_entry("c", "base")
    assert pe is not None and pe.t == 100 and pe.n_first == 50 and pe.n_second == 50
    assert abs(pe.estimate or 0.0) < 0.3
    assert (led.pair("c", "base").estimate or 0.0) > 0.3  # the whole period still sees it
    again = EvidenceLedger.from_json(led.to_json())
    assert again.pair_since_entry("c", "base") == pe and again.entries == {"c": 1}
    led.deactivate("c")  # archived: its place in the order stays spent
    led.activate("d")
    led.enter("d")
    assert led.entries == {"c": 1, "d": 2}


def test_screening_tests_a_late_winner_at_an_early_level() -> None:
    """Five challengers no better than the baseline, then a +20-point one created sixth:
    it is tested at the level of its place in the order of *entry* (an equal one enters
    only when its posterior happens to look promising), usually the first (alpha / 2),
    never the sixth it would be in creation order (alpha / 42)."""
    first = named = 0
    for seed in range(12):
        s = Session([0.44] * 6 + [0.64])
        s.run(1500, random.Random(300 + seed))
        d = s.st.policy()
        v = d.verdicts["c6"]
        assert v.entered and v.index < 6
        assert v.alpha == pytest.approx(challenger_alpha(v.index, 0.05))
        first += v.index == 1
        named += d.best_id == "c6"
        assert all(c == "c6" for c in s.named)
        assert s.st.to_wire()["policy"]["evidence"]["c6"]["entered"] is True
    assert first >= 6 and named >= 10


def test_screening_off_tests_every_challenger_in_creation_order() -> None:
    s = Session([0.44, 0.44, 0.64], {"online_screen_probability": 0.0})
    s.run(50, random.Random(5))
    d = s.st.policy()
    assert d.verdicts["c1"].index == 1 and d.verdicts["c2"].index == 2
    assert d.verdicts["c2"].entered and s.st.evidence.entries == {}
