"""Posterior math shared by client routing and the engine's selection policy.

Pure Python, no I/O, no third-party imports. It sits at the top level, not in
``engine/``, because importing ``synth_middleware.engine`` loads the SQLite
store and the client must stay light when it talks to an HTTP backend; both
layers import *down* into this module and nothing here imports them.

Per candidate, the mean reward gets a posterior from its running statistics
(``reward_count``, ``avg_reward``, ``reward_m2``):

* rewards in [0, 1]: ``Beta(1 + s, 1 + n - s)`` with ``s = n * mean`` (the
  Bernoulli case exactly; fractional rewards count as fractional successes,
  which over-states the variance, i.e. errs on the cautious side);
* otherwise: Normal, with a weak prior pooled over the session's candidates
  (one pseudo-observation at the pooled mean; variance shrunk towards the
  pooled variance with two pseudo-observations), so a candidate with 0 or 1
  rewards is wide rather than falsely certain.

:func:`probability_best` integrates ``pdf_i(x) * prod_j cdf_j(x)`` on an
adaptive grid using the actual Beta densities (Normal ones in the unbounded
case); :func:`prob_greater` and :func:`prob_below` are the pairwise and
threshold versions.

Routing may use a *sharpened* posterior instead
(:func:`routing_posteriors_from_rows`, opt-in per session): the prior centred
on the session's pooled mean and the variance divided by a sharpness > 1. It
serves traffic with less exploration; promotion, pruning and retiring keep
deciding on the sound posteriors above, never on the sharpened ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

__all__ = [
    "DEFAULT_ROUTING_SHARPNESS",
    "SHARPENED_ROUTING",
    "Grid",
    "Posterior",
    "beta_posterior",
    "normal_posterior",
    "posteriors_from_rows",
    "posteriors_from_stats",
    "prob_below",
    "prob_greater",
    "prob_greater_normal",
    "probability_best",
    "probability_best_from_stats",
    "rewards_bounded",
    "routing_posteriors_from_rows",
    "routing_probabilities_from_stats",
    "sample",
    "stats_rows",
    "top_two_weights",
]

PosteriorKind = Literal["beta", "normal"]
Row = tuple[int, float, float]  # (reward_count, mean, Welford m2) of one candidate

# Routing sharpness: the posterior variance is divided by it for routing only (Chapelle &
# Li 2011, "An Empirical Evaluation of Thompson Sampling", scale it by alpha = 1/sharpness
# and report lower regret in practice). The default, 1, is plain Thompson sampling on
# the sound posterior. SHARPENED_ROUTING is the value measured in benchmarks/selection.py
# (BENCHMARKS.md, "Selection"): 8-27% less regret than plain Thompson at 300 rollouts in
# all seven scenarios there, but the baseline then gets few rewards, so the promotion
# guard (which needs evidence against the baseline) names a better candidate far later
# (at 1000 rollouts 0.12 instead of 0.68 of runs in the banking77-like one). Hence opt-in,
# per session (online_routing_sharpness), for apps that value regret over an early name.
DEFAULT_ROUTING_SHARPNESS = 1.0
SHARPENED_ROUTING = 6.0

_MIN_GRID = 256
_MAX_GRID = 4096
_SPAN_SDS = 8.0
# Normal cdfs come from the stdlib's NormalDist (the same erf formula as the hand-written
# one it replaced): about 0.14 us a call against 0.10 us by hand (timeit), on per-refresh
# pairwise comparisons, noise next to the grids. The normal *density* stays hand-written
# (Posterior.density): it fills the probability_best grids (up to 4096 points per
# posterior, each state refresh), and NormalDist.pdf, one method call and one sqrt per
# point, took 160 us per 1000 points against 100 us (1.6x). Tests check it against
# NormalDist.pdf.
_STD_NORMAL = NormalDist()
_SQRT2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True, slots=True)
class Posterior:
    """The posterior of one candidate's mean reward.

    ``kind == "beta"``: ``a`` and ``b`` are the Beta parameters. ``kind ==
    "normal"``: ``a`` is the mean and ``b`` the standard deviation. ``mean``
    and ``sd`` are always the posterior mean and standard deviation; ``n`` is
    the number of rewards behind it.
    """

    kind: PosteriorKind
    a: float
    b: float
    n: int
    mean: float
    sd: float

    def density(self, xs: Sequence[float]) -> list[float]:
        """Unnormalised density at each of ``xs`` (inside (0, 1) for a Beta)."""
        if self.kind == "beta":
            a1, b1 = self.a - 1.0, self.b - 1.0
            lnorm = math.lgamma(self.a) + math.lgamma(self.b) - math.lgamma(self.a + self.b)
            out = []
            for x in xs:
                if not 0.0 < x < 1.0:  # a grid shared with a Normal may leave [0, 1]
                    out.append(0.0)
                    continue
                lp = a1 * math.log(x) + b1 * math.log1p(-x) - lnorm
                out.append(math.exp(lp) if lp > -700.0 else 0.0)
            return out
        m, sd = self.a, self.b
        inv = 1.0 / sd
        norm = inv / _SQRT2PI
        return [norm * math.exp(-0.5 * ((x - m) * inv) ** 2) for x in xs]

    def sample(self, rng: random.Random | None = None) -> float:
        """One draw of the mean reward (Thompson sampling)."""
        r = rng or random
        if self.kind == "beta":
            return r.betavariate(self.a, self.b)
        return r.gauss(self.a, self.b)


def beta_posterior(n: int, mean: float, prior: tuple[float, float] = (1.0, 1.0)) -> Posterior:
    """``Beta(a0 + n*mean, b0 + n*(1 - mean))`` for ``n`` rewards in [0, 1] averaging
    ``mean``; ``prior = (a0, b0)``, uniform by default."""
    n = max(0, int(n))
    mean = min(1.0, max(0.0, float(mean))) if n else 0.5
    s = mean * n
    a, b = prior[0] + s, prior[1] + (n - s)
    tot = a + b
    sd = math.sqrt(a * b / (tot * tot * (tot + 1.0)))
    return Posterior("beta", a, b, n, a / tot, sd)


def normal_posterior(
    n: int, mean: float, m2: float, prior_mean: float = 0.0, prior_var: float = 1.0
) -> Posterior:
    """Normal posterior of the mean from ``n`` rewards (``mean``, Welford ``m2``).

    The prior is one pseudo-observation at ``prior_mean``; the reward variance
    is shrunk towards ``prior_var`` with two pseudo-observations.
    """
    n = max(0, int(n))
    prior_var = prior_var if math.isfinite(prior_var) and prior_var > 0 else 1.0
    if n == 0:
        sd = math.sqrt(prior_var)
        return Posterior("normal", prior_mean, sd, 0, prior_mean, sd)
    var = (max(0.0, m2) + 2.0 * prior_var) / (n - 1 + 2.0)
    post_mean = (n * mean + prior_mean) / (n + 1.0)
    sd = max(math.sqrt(var / (n + 1.0)), 1e-12 * (1.0 + abs(post_mean)))
    return Posterior("normal", post_mean, sd, n, post_mean, sd)


def rewards_bounded(stats: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every candidate's mean lies in [0, 1] (the client's guess at Beta rewards)."""
    for s in stats:
        avg = s.get("avg_reward")
        if avg is not None and not 0.0 <= float(avg) <= 1.0:
            return False
    return True


def stats_rows(stats: Sequence[Mapping[str, Any]]) -> list[Row]:
    """``(n, mean, m2)`` per wire ``CandidateStats``-like mapping (mean and m2 are 0
    where they are not defined)."""
    rows = []
    for s in stats:
        n = int(s.get("reward_count") or 0)
        mean = float(s.get("avg_reward") or 0.0) if n else 0.0
        m2 = float(s.get("reward_m2") or 0.0) if n > 1 else 0.0
        rows.append((n, mean, m2))
    return rows


def _pooled(rows: Sequence[Row]) -> tuple[int, float, float]:
    """Count, mean and m2 of every reward together (Chan et al. parallel combination)."""
    tot_n, tot_mean, tot_m2 = 0, 0.0, 0.0
    for n, mean, m2 in rows:
        if n <= 0:
            continue
        delta = mean - tot_mean
        new_n = tot_n + n
        tot_mean += delta * n / new_n
        tot_m2 += m2 + delta * delta * tot_n * n / new_n
        tot_n = new_n
    return tot_n, tot_mean, tot_m2


def posteriors_from_rows(rows: Sequence[Row], bounded: bool) -> list[Posterior]:
    """The sound posterior of each candidate (module doc): uniform Beta prior when
    ``bounded``, else Normal with the weak pooled prior."""
    if bounded:
        return [beta_posterior(n, mean) for n, mean, _ in rows]
    tot_n, tot_mean, tot_m2 = _pooled(rows)
    prior_var = tot_m2 / (tot_n - 1) if tot_n > 1 and tot_m2 > 0 else 1.0
    return [normal_posterior(n, mean, m2, tot_mean, prior_var) for n, mean, m2 in rows]


def posteriors_from_stats(
    stats: Sequence[Mapping[str, Any]], *, bounded: bool | None = None
) -> list[Posterior]:
    """One posterior per wire ``CandidateStats``-like mapping.

    ``bounded=None`` guesses from the means (:func:`rewards_bounded`); the
    engine passes what it knows from the observed reward range.
    """
    if bounded is None:
        bounded = rewards_bounded(stats)
    return posteriors_from_rows(stats_rows(stats), bounded)


def routing_posteriors_from_rows(
    rows: Sequence[Row], bounded: bool, sharpness: float = DEFAULT_ROUTING_SHARPNESS
) -> list[Posterior]:
    """The posteriors traffic is routed on: for routing only, never for promotion,
    pruning or retiring.

    ``sharpness == 1`` (the default): the sound posteriors of
    :func:`posteriors_from_rows`, i.e. plain Thompson sampling. ``sharpness > 1``:

    * **Sharpening.** The variance is divided by ``sharpness`` (Beta: both
      parameters multiplied by it, which keeps the mean and divides the
      variance by about the sharpness, exactly as the rewards grow; Normal: the
      sd divided by its square root). Candidates with a couple of lucky or unlucky rewards
      stop drawing traffic sooner.
    * **Empirical-Bayes prior mean.** For rewards in [0, 1] the prior keeps the
      uniform prior's weight (two pseudo-observations) but is centred on the
      session's pooled mean ``m = (S + 1) / (N + 2)`` over the given
      candidates: ``Beta(2m + s, 2(1 - m) + n - s)`` before sharpening. A
      sharpened prior at 0.5 would pin a new candidate of a session whose
      rewards are around 0.9 far below the leader (``Beta(6, 6)`` has almost no
      mass above 0.8), so it would never be tried; centred, it is expected to be
      like the session's other candidates. (The Normal posteriors already use a
      pooled prior.) Unsharpened, the uniform prior is weak enough to keep.
    """
    if not sharpness >= 1.0 or not math.isfinite(sharpness):
        raise ValueError(f"sharpness must be finite and >= 1, got {sharpness!r}")
    if sharpness == 1.0:
        return posteriors_from_rows(rows, bounded)
    if not bounded:
        root = math.sqrt(sharpness)
        return [
            Posterior("normal", p.a, p.b / root, p.n, p.mean, p.sd / root)
            for p in posteriors_from_rows(rows, bounded=False)
        ]
    clipped = [
        (max(0, int(n)), min(1.0, max(0.0, float(mean))) if n > 0 else 0.0) for n, mean, _ in rows
    ]
    tot_n = sum(n for n, _ in clipped)
    m = (math.fsum(n * mean for n, mean in clipped) + 1.0) / (tot_n + 2.0)
    out = []
    for n, mean in clipped:
        s = n * mean
        a, b = sharpness * (2.0 * m + s), sharpness * (2.0 * (1.0 - m) + (n - s))
        tot = a + b
        out.append(
            Posterior("beta", a, b, n, a / tot, math.sqrt(a * b / (tot * tot * (tot + 1.0))))
        )
    return out


def routing_probabilities_from_stats(
    stats: Sequence[Mapping[str, Any]],
    *,
    bounded: bool | None = None,
    sharpness: float = DEFAULT_ROUTING_SHARPNESS,
) -> list[float]:
    """The serving probability of each candidate: its P(best) under the routing
    posteriors (:func:`routing_posteriors_from_rows`), i.e. (sharpened) Thompson
    sampling drawn once per refresh instead of once per call."""
    if not stats:
        return []
    if bounded is None:
        bounded = rewards_bounded(stats)
    return probability_best(routing_posteriors_from_rows(stats_rows(stats), bounded, sharpness))


class Grid:
    """Several posteriors discretised on one shared grid: P(best) and any pairwise
    probability from the same cell masses and CDFs (one density pass per posterior).

    The grid covers every posterior's mean +- 8 sd (clipped to [0, 1] when all
    are Beta) with at least 3 cells per standard deviation of the narrowest one
    (256 to 4096 cells).
    """

    __slots__ = ("cdfs", "lo", "masses", "posts", "step", "support", "xs")

    def __init__(self, posts: Sequence[Posterior]) -> None:
        if not posts:
            raise ValueError("Grid needs at least one posterior")
        self.posts = list(posts)
        lo = min(p.mean - _SPAN_SDS * p.sd for p in posts)
        hi = max(p.mean + _SPAN_SDS * p.sd for p in posts)
        if all(p.kind == "beta" for p in posts):
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        min_sd = min(p.sd for p in posts)
        span = hi - lo
        if not span > 0:
            span = max(min_sd, 1e-9)
            hi = lo + span
        size = int(min(_MAX_GRID, max(_MIN_GRID, math.ceil(span / (min_sd / 3.0)))))
        self.lo = lo
        self.step = step = span / size
        self.xs = xs = [lo + (g + 0.5) * step for g in range(size)]
        self.masses: list[list[float]] = []
        self.cdfs: list[list[float]] = []
        self.support: list[tuple[int, int]] = []  # cells [g0, g1) holding a posterior's mass
        for p in posts:
            # Densities only where the mass is (mean +- 8.5 sd): outside, mass 0 and CDF 0 or 1.
            g0 = max(0, int((p.mean - (_SPAN_SDS + 0.5) * p.sd - lo) / step))
            g1 = min(size, int((p.mean + (_SPAN_SDS + 0.5) * p.sd - lo) / step) + 2)
            if g1 <= g0:
                g0, g1 = max(0, min(size - 1, g0)), max(0, min(size - 1, g0)) + 1
            window = xs[g0:g1]
            dens = _beta_density(p, window) if p.kind == "beta" else p.density(window)
            total = math.fsum(dens)
            if not total > 0 or not math.isfinite(total):  # all mass between grid points
                i = min(range(len(window)), key=lambda g: abs(window[g] - p.mean))
                dens = [0.0] * len(window)
                dens[i] = 1.0
                total = 1.0
            inv = 1.0 / total
            w = [d * inv for d in dens]
            cdf = [0.0] * g0
            run = 0.0
            for v in w:
                cdf.append(run + 0.5 * v)
                run += v
            cdf.extend([1.0] * (size - g1))
            self.masses.append([0.0] * g0 + w + [0.0] * (size - g1))
            self.cdfs.append(cdf)
            self.support.append((g0, g1))

    def probability_best(self) -> list[float]:
        """P(posterior i has the highest mean), for each i; sums to 1."""
        k = len(self.posts)
        if k == 1:
            return [1.0]
        masses, cdfs = self.masses, self.cdfs
        out = [0.0] * k
        prefix = [1.0] * (k + 1)
        # Below the second-highest lower support edge, at least one other CDF is 0 for
        # every candidate, so those cells contribute nothing.
        start = sorted(g0 for g0, _ in self.support)[-2]
        end = max(g1 for _, g1 in self.support)
        for g in range(start, end):
            # prefix/suffix products give prod_{j != i} cdf_j without dividing by zero
            for j in range(k):
                prefix[j + 1] = prefix[j] * cdfs[j][g]
            suffix = 1.0
            for i in range(k - 1, -1, -1):
                m = masses[i][g]
                if m:
                    out[i] += m * prefix[i] * suffix
                suffix *= cdfs[i][g]
        s = sum(out)
        if not s > 0 or not math.isfinite(s):
            return [1.0 / k] * k
        return [p / s for p in out]

    def cdf(self, j: int, x: float) -> float:
        """P(mean of posterior j < x), interpolated on the grid."""
        t = (x - self.lo) / self.step - 0.5
        cdf = self.cdfs[j]
        if t <= 0.0:
            return cdf[0] * max(0.0, 1.0 + t) if t > -1.0 else 0.0
        g = int(t)
        if g >= len(cdf) - 1:
            return cdf[-1] + (1.0 - cdf[-1]) * min(1.0, t - (len(cdf) - 1))
        f = t - g
        return cdf[g] * (1.0 - f) + cdf[g + 1] * f

    def prob_greater(self, i: int, j: int, shift: float = 0.0) -> float:
        """P(mean_i > mean_j + shift)."""
        a, b = self.posts[i], self.posts[j]
        if a.kind == "normal" and b.kind == "normal":
            return _STD_NORMAL.cdf((a.mean - b.mean - shift) / math.hypot(a.sd, b.sd))
        g0, g1 = self.support[i]
        mi = self.masses[i]
        if shift == 0.0:
            cj = self.cdfs[j]
            total = math.fsum(mi[g] * cj[g] for g in range(g0, g1))
        else:
            xs = self.xs
            total = math.fsum(mi[g] * self.cdf(j, xs[g] - shift) for g in range(g0, g1))
        return min(1.0, max(0.0, total))


def _beta_density(p: Posterior, xs: Sequence[float]) -> list[float]:
    a1, b1 = p.a - 1.0, p.b - 1.0
    lnorm = math.lgamma(p.a) + math.lgamma(p.b) - math.lgamma(p.a + p.b)
    log, log1p, exp = math.log, math.log1p, math.exp
    out = []
    for x in xs:
        if not 0.0 < x < 1.0:  # a grid shared with a Normal may leave [0, 1]
            out.append(0.0)
            continue
        lp = a1 * log(x) + b1 * log1p(-x) - lnorm
        out.append(exp(lp) if lp > -700.0 else 0.0)
    return out


def probability_best(posts: Sequence[Posterior]) -> list[float]:
    """P(candidate i has the highest mean) for each posterior; sums to 1.

    Exact up to the grid (see :class:`Grid`).
    """
    if not posts:
        return []
    if len(posts) == 1:
        return [1.0]
    return Grid(posts).probability_best()


def prob_greater(a: Posterior, b: Posterior) -> float:
    """P(mean of ``a`` > mean of ``b``)."""
    if a.kind == "normal" and b.kind == "normal":
        return prob_greater_normal(a, b)
    return Grid([a, b]).prob_greater(0, 1)


def prob_greater_normal(a: Any, b: Any) -> float:
    """P(a > b) for two posteriors (``mean``, ``sd``) under a normal approximation:
    exact for Normal posteriors, a cheap stand-in for the grid for Beta ones."""
    sd = math.hypot(a.sd, b.sd)
    if not sd > 0:
        return 0.5 if a.mean == b.mean else float(a.mean > b.mean)
    return _STD_NORMAL.cdf((a.mean - b.mean) / sd)


def prob_below(p: Posterior, x: float) -> float:
    """P(mean of ``p`` < ``x``)."""
    if p.kind == "normal":
        return _STD_NORMAL.cdf((x - p.mean) / p.sd)
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    return _betainc(p.a, p.b, x)


def sample(posts: Sequence[Posterior], rng: random.Random | None = None) -> list[float]:
    """One joint Thompson draw: a sampled mean per posterior."""
    return [p.sample(rng) for p in posts]


def top_two_weights(pbest: Sequence[float], beta: float = 0.5) -> list[float]:
    """Serving probabilities of top-two Thompson sampling (Russo 2016).

    The leader is drawn from P(best); with probability ``beta`` it is served,
    otherwise a challenger drawn from P(best) conditioned on not being the
    leader: ``w_j = beta*p_j + (1-beta) * sum_{i != j} p_i * p_j / (1 - p_i)``.
    Better than plain Thompson sampling at *identifying* the best; slightly
    more regret because the runner-up keeps getting traffic.
    """
    k = len(pbest)
    if k <= 1:
        return [1.0] * k
    out = []
    for j, pj in enumerate(pbest):
        challenger = 0.0
        for i, pi in enumerate(pbest):
            if i != j and pi < 1.0:
                challenger += pi * pj / (1.0 - pi)
        out.append(beta * pj + (1.0 - beta) * challenger)
    s = sum(out)
    # a leader with p == 1 has no challenger: its challenger share stays with it
    return [w / s for w in out] if s > 0 else [1.0 / k] * k


def probability_best_from_stats(
    stats: Sequence[Mapping[str, Any]], *, bounded: bool | None = None
) -> list[float]:
    """:func:`probability_best` straight from wire statistics (what the client routes on)."""
    if not stats:
        return []
    return probability_best(posteriors_from_stats(stats, bounded=bounded))


# -- regularised incomplete beta (Numerical Recipes' continued fraction, Lentz) -----


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the Beta(a, b) CDF at ``x`` in (0, 1)."""
    lbt = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    bt = math.exp(lbt)
    if x < (a + 1.0) / (a + b + 2.0):
        return bt * _betacf(a, b, x) / a
    return 1.0 - bt * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 3e-14:
            break
    return h
