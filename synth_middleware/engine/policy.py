"""The selection policy: who is best, who is promoted, who is pruned, who gets traffic.

**What a named best means.** A candidate other than the baseline is named best
only when anytime-valid evidence gathered over the same period as the
baseline's shows it beats the baseline: checked after every reward, under
adaptive routing and traffic whose difficulty drifts, the chance that any
challenger of a generation is ever named while not truly better than the
baseline is at most ``1 - promotion_confidence`` (5% by default). The
evidence is :mod:`synth_middleware.engine.evidence` (augmented inverse-propensity
differences, a normal-mixture confidence sequence, alpha spent over the
challengers in the order they enter the test: "Screening" below).

* **Screening.** At each routing epoch (below) the most promising challenger
  that is not yet tested *enters* the confirmatory family when its posterior
  probability of beating the baseline is at least ``online_screen_probability``
  (0.9) and it has half of ``min_rollouts_for_best`` rewards: one per epoch
  (:func:`screen_pick`). ``online_screen_probability = 0`` tests every
  challenger from its creation, in creation order.
* **Promotion.** Challenger ``c`` (the k-th to enter) is *eligible* once it
  has ``min_rollouts_for_best`` rewards and its evidence against the
  baseline since its entry clears the boundary at level ``alpha / (k (k + 1))``
  (``alpha = 1 - promotion_confidence``; ``online_promotion_bonferroni=False``
  tests every challenger at ``alpha``). With no baseline, every candidate with
  enough rewards is eligible.
* **Naming and incumbency.** The named best is the incumbent (the previously
  named best, recorded by the optimizer runner) until the evidence shows it
  worse than the baseline, unless another challenger beats *it* on the same
  evidence rule (since its entry, at its own level: with the incumbent shown
  better than the baseline, beating it is beating the baseline, and each of
  the two tests spends its own share of alpha); otherwise the eligible
  candidate with the highest lower bound on its gain; otherwise the baseline. (Keeping the name until shown
  worse, rather than while the bound stays above zero, is what stops a named
  best from flapping: once it is named the baseline's traffic falls, and each
  of its rare rewards widens the interval.)
* **Rollback.** The same evidence read the other way: a named best shown worse
  than the baseline (its upper bound below zero, at its own level) loses the
  name, which goes to the next eligible candidate or back to the baseline, and
  it is archived.
* **Pruning.** A challenger with at least ``online_prune_min_rollouts`` rewards
  is archived only when the evidence over its whole common period, at the
  level of its place in creation order, shows it worse than the baseline or
  than the named best. (``online_prune_threshold``, the
  hosted dialect's absolute floor, still archives on the posterior when set.)
  Nothing is archived for looking unlikely to be best: a live winner that had
  an unlucky start keeps its slot.
* **Routing** (``routing_weights`` of the published state, what clients draw
  from): Thompson sampling (``online_routing="thompson"``, P(best) of the
  Beta/Normal posteriors) or top-two Thompson, mixed with floors. The
  *reference* keeps ``online_baseline_floor`` of the traffic (20%): the
  baseline while no challenger is named and any is unresolved (neither
  eligible nor pruned), then the named best while any other challenger is
  live (a better one must beat it to take the name, and starving it would
  stall that evidence as starving the baseline would; a floor on the best
  known arm costs little reward). Every active candidate keeps
  ``online_routing_floor`` (1%), so the evidence above keeps coming and the
  propensities stay bounded. Routing is recomputed per *epoch* (every
  ``max(10, rewards / 50)`` rewards and whenever the candidate set, config or
  incumbent changes) by the session state, so the propensity of each reward
  is known exactly on replay. Measured in ``benchmarks/selection.py``; see
  BENCHMARKS.md "Selection".

P(best) is still computed (routing, the dashboard, "dormant" optimizer slots)
but never decides a promotion or an archive.

:func:`evaluate` is a pure function of the candidates, their evidence and the
incumbent, so every process (and a replay of the log) names the same best.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from synth_middleware._posterior import (
    DEFAULT_ROUTING_SHARPNESS,
    Grid,
    Row,
    posteriors_from_rows,
    prob_below,
    prob_greater_normal,
    routing_posteriors_from_rows,
    top_two_weights,
)
from synth_middleware.engine.config import SessionConfig
from synth_middleware.engine.evidence import (
    DEFAULT_RHO_REWARDS,
    EvidenceLedger,
    PairEvidence,
    challenger_alpha,
)

__all__ = [
    "CandidateLike",
    "CandidateVerdict",
    "PolicyDecision",
    "PolicySettings",
    "epoch_length",
    "evaluate",
    "mix_floors",
    "routing_weights",
    "screen_pick",
]

RoutingMode = Literal["thompson", "top_two"]


class CandidateLike(Protocol):
    """What the policy reads from a candidate (``CandidateState`` fits).

    ``seq`` (creation order) and ``generation`` are read when present: they
    give a challenger its index for the alpha spending."""

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
    promotion_confidence: float = 0.95
    prune_min_rollouts: int = 20
    prune_confidence: float = 0.95
    prune_threshold: float | None = None
    dormant_probability: float = 0.01
    bonferroni: bool = True  # spend alpha over the generation's challengers
    routing_sharpness: float = DEFAULT_ROUTING_SHARPNESS
    routing: RoutingMode = "thompson"
    baseline_floor: float = 0.2
    routing_floor: float = 0.01
    rho_rewards: float = DEFAULT_RHO_REWARDS
    screen_probability: float = 0.9  # 0: every challenger is tested from its creation

    @property
    def alpha(self) -> float:
        """The family-wise false-promotion level of a generation."""
        return 1.0 - self.promotion_confidence

    @classmethod
    def from_config(cls, cfg: SessionConfig) -> PolicySettings:
        """The policy part of a session config."""
        return cls(
            min_rollouts_for_best=cfg.min_rollouts_for_best,
            promotion_confidence=cfg.promotion_confidence,
            prune_min_rollouts=cfg.online_prune_min_rollouts,
            prune_confidence=cfg.online_prune_confidence,
            prune_threshold=cfg.online_prune_threshold,
            dormant_probability=cfg.online_dormant_probability,
            bonferroni=cfg.online_promotion_bonferroni,
            routing_sharpness=_sharpness(getattr(cfg, "online_routing_sharpness", None)),
            routing=cfg.online_routing,
            baseline_floor=cfg.online_baseline_floor,
            routing_floor=cfg.online_routing_floor,
            screen_probability=cfg.online_screen_probability,
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


def epoch_length(reward_count: int) -> int:
    """Rewards between two routing recomputations: ``max(10, rewards // 50)``.

    Thompson weights move less as evidence piles up, so epochs lengthen with
    the session (about 300 recomputations over 100,000 rewards)."""
    return max(10, int(reward_count) // 50)


def rho_for(settings: PolicySettings, reward_range: float = 1.0) -> float:
    """The mixture parameter in variance units: ``rho_rewards`` rewards of the
    largest variance a reward of that range can have (``range**2 / 4``)."""
    r = reward_range if math.isfinite(reward_range) and reward_range > 0 else 1.0
    return settings.rho_rewards * r * r / 4.0


@dataclass(frozen=True, slots=True)
class CandidateVerdict:
    """The policy's view of one active candidate."""

    candidate_id: str
    n: int
    mean: float  # posterior mean
    sd: float  # posterior sd
    p_best: float
    p_beats_baseline: float | None  # posterior, for display; None for the baseline
    eligible: bool  # may be named best
    prune_reason: str | None = None
    index: int = 0  # challenger index in its generation (alpha spending); 0: the baseline
    alpha: float | None = None  # the level its evidence is tested at
    effect: float | None = None  # mean gain over the baseline in the common period
    effect_lower: float | None = None  # anytime-valid bounds on that gain (each at alpha)
    effect_upper: float | None = None
    unresolved: bool = False  # neither eligible nor pruned: the baseline floor stays
    entered: bool = True  # in the confirmatory family (module doc, "Screening")

    def evidence_json(self) -> dict[str, Any]:
        """The promotion evidence as the session state shows it."""
        return {
            "n": self.n,
            "entered": self.entered,
            "index": self.index,
            "alpha": self.alpha,
            "effect": self.effect,
            "lower": self.effect_lower,
            "upper": self.effect_upper,
            "eligible": self.eligible,
            "unresolved": self.unresolved,
        }


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

    @property
    def unresolved(self) -> bool:
        """Whether any challenger is neither eligible nor pruned."""
        return any(v.unresolved for v in self.verdicts.values())

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
            "evidence": {cid: v.evidence_json() for cid, v in self.verdicts.items() if v.index > 0},
        }


def _rows(cands: Sequence[CandidateLike]) -> list[Row]:
    return [(c.reward_count, c.mean, c.m2 if c.reward_count > 1 else 0.0) for c in cands]


def _indices(candidates: Sequence[CandidateLike], baseline_id: str | None) -> dict[str, int]:
    """Each challenger's 1-based index in creation order (archived ones count: they
    spent their alpha). The baseline's generation comes first."""
    base = next((c for c in candidates if c.candidate_id == baseline_id), None)
    gen = getattr(base, "generation", 0) if base is not None else 0
    order = sorted(
        (c for c in candidates if c.candidate_id != baseline_id and not c.is_baseline),
        key=lambda c: (getattr(c, "generation", gen) != gen, getattr(c, "seq", 0)),
    )
    return {c.candidate_id: k for k, c in enumerate(order, start=1)}


def mix_floors(
    weights: Sequence[float], base_i: int | None, unresolved: bool, settings: PolicySettings
) -> list[float]:
    """Routing probabilities: ``weights`` (Thompson or top-two) mixed with the floors
    (module doc, "Routing"). Every active candidate gets at least the routing
    floor; the reference ``base_i`` (the baseline, or the named best) at least the
    baseline floor when ``unresolved``."""
    k = len(weights)
    if k == 0:
        return []
    total = math.fsum(weights)
    if not total > 0 or not math.isfinite(total):
        base_w = [1.0 / k] * k
    else:
        base_w = [w / total for w in weights]
    if k == 1:
        return [1.0]
    eps = settings.routing_floor
    f0 = settings.baseline_floor if (unresolved and base_i is not None) else 0.0
    if eps * k + f0 > 0.9:  # many candidates: floors never take over the routing
        eps = max(0.0, (0.9 - f0) / k)
    keep = 1.0 - eps * k - f0
    out = [keep * w + eps for w in base_w]
    if f0 and base_i is not None:
        out[base_i] += f0
    return out


def evaluate(
    candidates: Iterable[CandidateLike],
    baseline_id: str | None,
    settings: PolicySettings | None = None,
    *,
    bounded: bool | None = None,
    incumbent: str | None = None,
    evidence: EvidenceLedger | None = None,
    reward_range: float = 1.0,
    routing: Mapping[str, float] | None = None,
    pbest: Mapping[str, float] | None = None,
) -> PolicyDecision:
    """Apply the policy to the active candidates among ``candidates``.

    ``evidence`` is the session's ledger (no ledger: nothing is eligible but
    the baseline, nothing is pruned on evidence). ``routing`` and ``pbest``,
    when given, are the current epoch's (the session state passes them so a
    read does not recompute them); otherwise they are computed here.
    ``bounded`` says whether every reward lies in [0, 1] (Beta posteriors);
    ``None`` guesses from the means. ``incumbent`` is the currently named best.
    Archived candidates are ignored (but count for the challenger indices);
    an archived or missing baseline means "no baseline" (nothing to beat).
    """
    s = settings or PolicySettings()
    every = list(candidates)
    active = [c for c in every if c.status == "active"]
    if not active:
        return PolicyDecision(None, None, baseline_id, True if bounded is None else bounded)
    if bounded is None:
        bounded = all(c.reward_count == 0 or 0.0 <= c.mean <= 1.0 for c in active)
    rows = _rows(active)
    posts = posteriors_from_rows(rows, bounded)
    if pbest is not None and all(c.candidate_id in pbest for c in active):
        pb = [float(pbest[c.candidate_id]) for c in active]
        grid = None
    else:
        grid = Grid(posts)
        pb = grid.probability_best()
    by_id = {c.candidate_id: i for i, c in enumerate(active)}
    base_i = by_id.get(baseline_id) if baseline_id is not None else None
    base_cid = active[base_i].candidate_id if base_i is not None else None
    leader_i = max(range(len(active)), key=lambda i: (pb[i], i == base_i, -i))
    indices = _indices(every, base_cid)
    rho = rho_for(s, reward_range)
    inc_i = by_id.get(incumbent) if incumbent is not None else None
    if inc_i == base_i:
        inc_i = None

    def pair(i: int, j: int) -> PairEvidence | None:
        if evidence is None:
            return None
        return evidence.pair(active[i].candidate_id, active[j].candidate_id)

    screening = s.screen_probability > 0.0 and evidence is not None

    verdicts: dict[str, CandidateVerdict] = {}
    eligible_is: list[int] = []
    worse: set[int] = set()  # shown worse than the baseline (a named best loses its name)
    lower: dict[int, float] = {}
    levels: dict[int, float] = {}
    for i, c in enumerate(active):
        post = posts[i]
        if i == base_i:
            verdicts[c.candidate_id] = CandidateVerdict(
                c.candidate_id, c.reward_count, post.mean, post.sd, pb[i], None, True
            )
            continue
        k = indices.get(c.candidate_id, len(indices) + 1)
        level = challenger_alpha(k, s.alpha, spend=s.bonferroni)  # pruning: creation order
        p_beats = None
        effect = lo = hi = None
        ev = pair(i, base_i) if base_i is not None else None
        if base_i is not None:
            # screening and display: a normal approximation of the posteriors
            p_beats = prob_greater_normal(post, posts[base_i])
        beats = loses = False
        if ev is not None:  # one boundary per pair: (-inf, inf) before any reward
            effect = ev.estimate
            low, high = ev.interval(level, rho)
            beats, loses = low > 0.0, high < 0.0
            if math.isfinite(low):
                lo, hi = low, high
        enough = c.reward_count >= s.min_rollouts_for_best
        eligible = enough if base_i is None else enough and beats
        reason = None
        if loses:
            worse.add(i)
        if c.reward_count >= s.prune_min_rollouts:
            if i in worse:
                reason = (
                    f"pruned: worse than the baseline {base_cid} (gain {effect:+.3g}, "
                    f"anytime-valid upper bound {hi:+.3g} at level {level:.2g}) "
                    f"after {c.reward_count} rewards"
                )
            elif inc_i is not None and inc_i != i:
                ev_inc = pair(i, inc_i)
                up = ev_inc.interval(level, rho)[1] if ev_inc is not None else math.inf
                if ev_inc is not None and up < 0.0:
                    reason = (
                        f"pruned: worse than the named best {active[inc_i].candidate_id} "
                        f"(gain {ev_inc.estimate:+.3g}, anytime-valid upper bound {up:+.3g} "
                        f"at level {level:.2g}) after {c.reward_count} rewards"
                    )
            if reason is None and s.prune_threshold is not None:
                p_low = prob_below(post, s.prune_threshold)
                if p_low >= s.prune_confidence:
                    reason = (
                        f"pruned: mean below {s.prune_threshold:g} with "
                        f"P={p_low:.3f} after {c.reward_count} rewards"
                    )
        if reason is not None:
            eligible = False
        entered = True
        if screening and base_i is not None and evidence is not None:
            rank = evidence.entries.get(c.candidate_id)
            entered = rank is not None
            eligible = False
            if rank is not None:  # promotion: the confirmatory evidence since entry
                k = rank
                level = challenger_alpha(k, s.alpha, spend=s.bonferroni)
                conf = evidence.pair_since_entry(c.candidate_id, active[base_i].candidate_id)
                lo = hi = None
                if conf is not None and conf.t:
                    effect = conf.estimate
                    low, high = conf.interval(level, rho)
                    eligible = enough and low > 0.0 and reason is None
                    if math.isfinite(low):
                        lo, hi = low, high
        levels[i] = level
        verdicts[c.candidate_id] = CandidateVerdict(
            c.candidate_id,
            c.reward_count,
            post.mean,
            post.sd,
            pb[i],
            p_beats,
            eligible,
            reason,
            k,
            level,
            effect,
            lo,
            hi,
            unresolved=not eligible and reason is None,
            entered=entered,
        )
        if eligible:
            eligible_is.append(i)
            lower[i] = lo if lo is not None else -math.inf
    if inc_i is not None and (inc_i in worse or verdicts[active[inc_i].candidate_id].prune_reason):
        inc_i = None  # demoted (rollback): the name goes to the next eligible or the baseline
    if inc_i is not None:
        # a challenger takes the name by beating the named best, at its own level, on the
        # evidence since its entry (module doc, "Naming and incumbency")
        inc_id = active[inc_i].candidate_id
        over: dict[int, float] = {}
        for i, c in enumerate(active):
            if i in (inc_i, base_i) or verdicts[c.candidate_id].prune_reason is not None:
                continue
            if c.reward_count < s.min_rollouts_for_best:
                continue
            if screening and evidence is not None:
                ev_inc = evidence.pair_since_entry(c.candidate_id, inc_id)
            else:
                ev_inc = pair(i, inc_i)
            if ev_inc is not None:
                low = ev_inc.interval(levels[i], rho)[0]  # -inf before any reward
                if low > 0.0:
                    over[i] = low
        best_i: int | None = max(over, key=lambda i: over[i]) if over else inc_i
    elif eligible_is:
        best_i = max(eligible_is, key=lambda i: (lower[i], pb[i]))
    else:  # nothing eligible: the baseline (if any) stays the named best
        best_i = base_i
    best_id = active[best_i].candidate_id if best_i is not None else None
    if routing is not None and all(c.candidate_id in routing for c in active):
        route = [float(routing[c.candidate_id]) for c in active]
    else:
        if best_i == base_i:  # the reference (module doc, "Routing")
            floor = any(v.unresolved for v in verdicts.values())
        else:
            floor = any(
                i not in (best_i, base_i) and verdicts[c.candidate_id].prune_reason is None
                for i, c in enumerate(active)
            )
        route = _route(active, rows, bounded, pb, best_i, floor, s)
    return PolicyDecision(
        best_id,
        active[leader_i].candidate_id,
        baseline_id,
        bounded,
        verdicts,
        incumbent,
        {c.candidate_id: p for c, p in zip(active, route, strict=True)},
    )


def screen_pick(
    ids: Sequence[str],
    p_beats: Sequence[float | None],
    counts: Sequence[int],
    entered: Sequence[bool],
    settings: PolicySettings,
) -> str | None:
    """The challenger that enters the confirmatory family now (module doc,
    "Screening"), or ``None``: among those not entered with at least half of
    ``min_rollouts_for_best`` rewards and ``p_beats >= screen_probability``, the one
    with the highest ``p_beats`` (the first on ties). The engine and the benchmark
    both call this."""
    if settings.screen_probability <= 0.0:
        return None
    need = max(1, settings.min_rollouts_for_best // 2)
    best: str | None = None
    top = -1.0
    for cid, p, n, inside in zip(ids, p_beats, counts, entered, strict=True):
        if inside or p is None or n < need or p < settings.screen_probability:
            continue
        if p > top:
            best, top = cid, p
    return best


def _route(
    active: Sequence[CandidateLike],
    rows: Sequence[Row],
    bounded: bool,
    pb: Sequence[float],
    base_i: int | None,
    floor: bool,
    s: PolicySettings,
) -> list[float]:
    if s.routing == "top_two":
        weights = top_two_weights(pb)
    elif s.routing_sharpness == DEFAULT_ROUTING_SHARPNESS:
        weights = list(pb)  # plain Thompson: no second grid
    else:
        weights = Grid(
            routing_posteriors_from_rows(rows, bounded, s.routing_sharpness)
        ).probability_best()
    return mix_floors(weights, base_i, floor, s)


def routing_weights(
    decision: PolicyDecision, mode: RoutingMode | None = None, beta: float = 0.5
) -> dict[str, float]:
    """Serving probability per active candidate: ``decision.routing`` (module doc,
    "Routing"). ``mode="top_two"`` recomputes the top-two Thompson mixture of
    P(best) without floors (for comparisons)."""
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
