"""The selection policy: who is best, who is promoted, who is pruned.

Decisions are made on posterior probabilities (:mod:`synth_middleware._posterior`),
never on "the sum went up over three samples":

* **P(best)** of every active candidate (Beta posteriors for rewards in [0, 1],
  Normal otherwise). Every decision below is made on it and on these
  posteriors.
* **Routing.** Serving draws from ``routing_weights`` (published next to
  ``probability_best``): plain Thompson sampling, i.e. P(best) itself, by
  default. ``online_routing_sharpness`` > 1 (``SHARPENED_ROUTING`` = 6 is the
  measured value) routes on sharpened posteriors instead
  (:func:`synth_middleware._posterior.routing_posteriors_from_rows`: variance
  divided by the sharpness, prior centred on the session's pooled mean): less
  regret, but the baseline gets fewer rewards, so promotion (below), which
  needs evidence against the baseline, comes much later. Measured in
  ``benchmarks/selection.py``; see BENCHMARKS.md. The sharpened posterior is
  over-confident by design: no promotion, pruning or retiring is ever decided
  on it. Top-two Thompson for identification routes on the sound P(best)
  (:func:`routing_weights`).
* **Promotion.** A non-baseline candidate is *eligible* once it has at least
  ``min_rollouts_for_best`` rewards and beats the baseline with probability
  at least ``promotion_confidence`` (default 0.9). While the baseline itself
  has fewer than ``min_rollouts_for_best`` rewards (Thompson routing starves
  it when a lucky candidate looks better) the bar is ten times stricter on
  the error side (0.99 for 0.9): a thin baseline is beaten only by
  overwhelming evidence. With ``m`` > 1 contenders (candidates with enough
  rewards) the error side is also divided by ``m`` (Bonferroni,
  ``online_promotion_bonferroni``, default on): each contender compared with
  the baseline at 0.9 would let one of them clear the bar by luck far more
  often than 10% of the time. Measured in the simulations of
  ``benchmarks/selection.py``; see BENCHMARKS.md. The named best is the eligible
  candidate (or the baseline) with the highest P(best). With no eligible
  candidate the baseline is named.
* **Incumbency.** Once named (``incumbent``, recorded by the optimizer
  runner), a candidate stays the best while it is eligible, unless another
  eligible candidate beats *it* with probability >= ``promotion_confidence``:
  replacing the best needs the same evidence as replacing the baseline, so
  two equally good candidates do not take turns.
* **Demotion / rollback** follows from the same rule, evaluated afresh on
  every state version: when a promoted candidate's P(beats baseline) falls
  below the level, it stops being eligible and the name goes back to the
  next eligible candidate or the baseline.
* **Pruning.** A non-baseline candidate with at least
  ``online_prune_min_rollouts`` rewards is archived when it is worse than the
  leader (highest P(best)) with probability at least
  ``online_prune_confidence`` (0.95), or, when ``online_prune_threshold`` is
  set (the hosted dialect's absolute reward floor), when its mean is below
  that floor with the same probability. With ``online_prune_margin`` > 0
  (default 0.01), a candidate other than the named best is also archived when
  it is not better than the leader by more than the margin with that
  probability, so practically equal candidates do not hold live slots forever
  (``P(mean_c <= mean_leader + margin) >= 0.95``; margin 0 is the plain rule).
* **Retiring.** Thompson routing starves a bad candidate long before it has
  ``online_prune_min_rollouts`` rewards. Once its P(best) is below
  ``online_dormant_probability`` (1%) with at least
  ``online_retire_min_rollouts`` (5) rewards, it is archived as *retired*
  (never the leader, the named best or the baseline): the posterior already
  gives it almost no traffic, and the live set stays small.

:func:`evaluate` is a pure function of the candidates' statistics, so every
process (and a replay of the log) names the same best.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from synth_middleware._posterior import (
    DEFAULT_ROUTING_SHARPNESS,
    Grid,
    Row,
    posteriors_from_rows,
    prob_below,
    probability_best,
    routing_posteriors_from_rows,
    top_two_weights,
)
from synth_middleware.engine.config import SessionConfig

__all__ = [
    "CandidateLike",
    "CandidateVerdict",
    "PolicyDecision",
    "PolicySettings",
    "evaluate",
    "routing_weights",
]

RoutingMode = Literal["thompson", "top_two"]


class CandidateLike(Protocol):
    """What the policy reads from a candidate (``CandidateState`` fits)."""

    candidate_id: str
    status: str
    is_baseline: bool
    reward_count: int
    mean: float
    m2: float


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy's knobs (from :class:`~synth_middleware.engine.config.SessionConfig`)."""

    min_rollouts_for_best: int = 20
    promotion_confidence: float = 0.9
    prune_min_rollouts: int = 20
    prune_confidence: float = 0.95
    prune_threshold: float | None = None
    prune_margin: float = 0.0
    dormant_probability: float = 0.01
    retire_min_rollouts: int = 5
    bonferroni: bool = True
    routing_sharpness: float = DEFAULT_ROUTING_SHARPNESS

    @classmethod
    def from_config(cls, cfg: SessionConfig) -> PolicySettings:
        """The policy part of a session config."""
        return cls(
            min_rollouts_for_best=cfg.min_rollouts_for_best,
            promotion_confidence=cfg.promotion_confidence,
            prune_min_rollouts=cfg.online_prune_min_rollouts,
            prune_confidence=cfg.online_prune_confidence,
            prune_threshold=cfg.online_prune_threshold,
            prune_margin=cfg.online_prune_margin,
            dormant_probability=cfg.online_dormant_probability,
            retire_min_rollouts=cfg.online_retire_min_rollouts,
            bonferroni=cfg.online_promotion_bonferroni,
            routing_sharpness=_sharpness(getattr(cfg, "online_routing_sharpness", None)),
        )

    @classmethod
    def from_mapping(
        cls, config: Mapping[str, Any] | None, kind: str | None = None
    ) -> PolicySettings:
        """Settings from a raw (flat or hosted-nested) config; an invalid one falls back
        to the defaults (a stored config was validated when it was written)."""
        from synth_middleware.engine.config import parse_session_config
        from synth_middleware.errors import InvalidRequestError

        try:
            return cls.from_config(parse_session_config(config or {}, kind))
        except InvalidRequestError:
            return cls()


def _sharpness(value: Any) -> float:
    """``online_routing_sharpness`` as a float >= 1; the default when it is absent or
    invalid. (SessionConfig keeps unknown keys, so the key works before it has a
    validated field there; with one, it is validated when the config is written.)"""
    if value is None or isinstance(value, bool):
        return DEFAULT_ROUTING_SHARPNESS
    try:
        out = float(value)
    except (TypeError, ValueError):
        return DEFAULT_ROUTING_SHARPNESS
    return out if math.isfinite(out) and out >= 1.0 else DEFAULT_ROUTING_SHARPNESS


@dataclass(frozen=True, slots=True)
class CandidateVerdict:
    """The policy's view of one active candidate."""

    candidate_id: str
    n: int
    mean: float  # posterior mean
    sd: float  # posterior sd
    p_best: float
    p_beats_baseline: float | None  # None for the baseline itself
    eligible: bool  # may be named best
    prune_reason: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The outcome of :func:`evaluate`."""

    best_id: str | None
    leader_id: str | None  # highest P(best), eligible or not
    baseline_id: str | None
    bounded: bool
    verdicts: dict[str, CandidateVerdict] = field(default_factory=dict)
    incumbent_id: str | None = None  # the previously named best, if any
    # serving probability by candidate id (module doc, "Routing")
    routing: dict[str, float] = field(default_factory=dict)

    @property
    def prune(self) -> list[tuple[str, str]]:
        """``(candidate_id, reason)`` of every candidate the policy would archive now."""
        return [(v.candidate_id, v.prune_reason) for v in self.verdicts.values() if v.prune_reason]

    def probabilities(self) -> dict[str, float]:
        """P(best) by candidate id."""
        return {cid: v.p_best for cid, v in self.verdicts.items()}

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able summary (what the session state shows)."""
        best = self.verdicts.get(self.best_id or "")
        return {
            "best_candidate_id": self.best_id,
            "leader_candidate_id": self.leader_id,
            "posterior": "beta" if self.bounded else "normal",
            "best_p_beats_baseline": best.p_beats_baseline if best is not None else None,
            "probability_best": {cid: round(v.p_best, 6) for cid, v in self.verdicts.items()},
            "routing_weights": {cid: round(p, 6) for cid, p in self.routing.items()},
        }


def _rows(cands: list[CandidateLike]) -> list[Row]:
    return [(c.reward_count, c.mean, c.m2 if c.reward_count > 1 else 0.0) for c in cands]


def evaluate(
    candidates: Iterable[CandidateLike],
    baseline_id: str | None,
    settings: PolicySettings | None = None,
    *,
    bounded: bool | None = None,
    incumbent: str | None = None,
) -> PolicyDecision:
    """Apply the policy to the active candidates among ``candidates``.

    ``bounded`` says whether every reward lies in [0, 1] (Beta posteriors);
    ``None`` guesses from the means. ``incumbent`` is the currently named best
    (module doc, "Incumbency"). Archived candidates are ignored; an archived
    or missing baseline means "no baseline" (nothing to beat).
    """
    s = settings or PolicySettings()
    active = [c for c in candidates if c.status == "active"]
    if not active:
        return PolicyDecision(None, None, baseline_id, True if bounded is None else bounded)
    if bounded is None:
        bounded = all(c.reward_count == 0 or 0.0 <= c.mean <= 1.0 for c in active)
    rows = _rows(active)
    posts = posteriors_from_rows(rows, bounded)
    grid = Grid(posts)  # one discretisation for P(best) and every pairwise probability
    pbest = grid.probability_best()
    by_id = {c.candidate_id: i for i, c in enumerate(active)}
    base_i = by_id.get(baseline_id) if baseline_id is not None else None
    leader_i = max(range(len(active)), key=lambda i: (pbest[i], i == base_i, -i))
    base_count = active[base_i].reward_count if base_i is not None else s.min_rollouts_for_best
    level = s.promotion_confidence
    if base_count < s.min_rollouts_for_best:
        level = 1.0 - (1.0 - level) / 10.0
    if s.bonferroni:
        contenders = sum(
            1
            for i, c in enumerate(active)
            if i != base_i and c.reward_count >= s.min_rollouts_for_best
        )
        if contenders > 1:
            level = 1.0 - (1.0 - level) / contenders

    verdicts: dict[str, CandidateVerdict] = {}
    eligible_is: list[int] = []
    for i, c in enumerate(active):
        post = posts[i]
        if i == base_i:
            verdicts[c.candidate_id] = CandidateVerdict(
                c.candidate_id, c.reward_count, post.mean, post.sd, pbest[i], None, True
            )
            continue
        p_beats = grid.prob_greater(i, base_i) if base_i is not None else None
        eligible = c.reward_count >= s.min_rollouts_for_best and (
            p_beats is None or p_beats >= level
        )
        reason = None
        if c.reward_count >= s.prune_min_rollouts:
            if i != leader_i:
                p_worse = grid.prob_greater(leader_i, i)
                if p_worse >= s.prune_confidence:
                    reason = (
                        f"pruned: worse than {active[leader_i].candidate_id} with "
                        f"P={p_worse:.3f} after {c.reward_count} rewards"
                    )
                elif s.prune_margin > 0 and c.candidate_id != incumbent:
                    p_not = 1.0 - grid.prob_greater(i, leader_i, shift=s.prune_margin)
                    if p_not >= s.prune_confidence:
                        reason = (
                            f"pruned: not better than {active[leader_i].candidate_id} by "
                            f"{s.prune_margin:g} with P={p_not:.3f} after {c.reward_count} rewards"
                        )
            if reason is None and s.prune_threshold is not None:
                p_low = prob_below(post, s.prune_threshold)
                if p_low >= s.prune_confidence:
                    reason = (
                        f"pruned: mean below {s.prune_threshold:g} with "
                        f"P={p_low:.3f} after {c.reward_count} rewards"
                    )
        if (
            reason is None
            and i != leader_i
            and c.candidate_id != incumbent
            and c.reward_count >= s.retire_min_rollouts
            and pbest[i] < s.dormant_probability
        ):
            reason = f"retired: dormant, P(best)={pbest[i]:.2g} after {c.reward_count} rewards"
        if reason is not None:
            eligible = False
        verdicts[c.candidate_id] = CandidateVerdict(
            c.candidate_id, c.reward_count, post.mean, post.sd, pbest[i], p_beats, eligible, reason
        )
        if eligible:
            eligible_is.append(i)
    inc_i = by_id.get(incumbent) if incumbent is not None else None
    if inc_i is not None and inc_i not in eligible_is:
        inc_i = None  # the baseline as incumbent, or a demoted candidate: no incumbency
    if inc_i is not None:
        challengers = [
            i
            for i in eligible_is
            if i != inc_i and grid.prob_greater(i, inc_i) >= s.promotion_confidence
        ]
        best_i: int | None = max(challengers, key=lambda i: pbest[i]) if challengers else inc_i
    elif eligible_is:
        best_i = max(eligible_is, key=lambda i: pbest[i])
    else:  # nothing eligible: the baseline (if any) stays the named best
        best_i = base_i
    best_id = active[best_i].candidate_id if best_i is not None else None
    if s.routing_sharpness == DEFAULT_ROUTING_SHARPNESS:
        route = pbest  # plain Thompson: no second grid
    else:
        route = probability_best(routing_posteriors_from_rows(rows, bounded, s.routing_sharpness))
    return PolicyDecision(
        best_id,
        active[leader_i].candidate_id,
        baseline_id,
        bounded,
        verdicts,
        incumbent,
        {c.candidate_id: p for c, p in zip(active, route, strict=True)},
    )


def routing_weights(
    decision: PolicyDecision, mode: RoutingMode = "thompson", beta: float = 0.5
) -> dict[str, float]:
    """Serving probability per active candidate.

    ``"thompson"``: ``decision.routing`` (module doc, "Routing"); a decision built
    without it falls back to the sound P(best). ``"top_two"``: the top-two
    Thompson mixture of the sound P(best), for identification (it explores more
    on purpose, so sharpening would defeat it).
    """
    ids = list(decision.verdicts)
    if mode == "top_two":
        probs = top_two_weights([decision.verdicts[cid].p_best for cid in ids], beta)
    elif decision.routing:
        probs = [decision.routing.get(cid, 0.0) for cid in ids]
    else:
        probs = [decision.verdicts[cid].p_best for cid in ids]
    total = sum(probs)
    if not total > 0 or not math.isfinite(total):
        return {cid: 1.0 / len(ids) for cid in ids} if ids else {}
    return {cid: p / total for cid, p in zip(ids, probs, strict=True)}
