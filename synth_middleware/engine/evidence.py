"""Anytime-valid evidence for promotion and pruning, gathered under adaptive routing.

The question the engine answers before it names a best is "does challenger
``c`` beat the baseline?", and it asks it after every reward while routing
moves traffic between candidates and the traffic itself changes over the day.
Comparing the candidates' sample means fails on both counts: checked after
every reward, a 90% posterior rule names an equal challenger far more often
than 10% of the time, and when every arm's success rate drifts together, an
arm that got its traffic later (a new proposal, or one routing turned to) saw
easier traffic than the baseline did.

What this module keeps instead, per rewarded rollout ``t`` (in the order the
rewards are applied):

* **Inverse-propensity increments with a control variate** (augmented IPW):
  ``z_a = (y - m) / p_a`` for the served arm ``a`` (0 for the others), where
  ``p_a`` is the probability routing served ``a`` with and ``m`` a running
  mean of the rewards *before* this one (predictable). For a pair (c, r),
  ``Z = z_c - z_r`` has conditional mean ``mu_c(t) - mu_r(t)`` whatever the
  routing did and however all rates moved: the comparison is made over the
  same period, on the same traffic. ``m`` cancels in expectation; it only
  removes the common level from the variance (and makes a wrong propensity
  cost almost nothing when the arms are equal: the error is multiplied by
  ``mu - m``).
* **A normal-mixture confidence sequence** (Robbins; Howard, Ramdas,
  McAuliffe and Sekhon 2021; asymptotic form as in Waudby-Smith et al. 2021):
  with ``S = sum Z`` and ``V = sum Z**2`` over the pair's common period,
  ``P(exists t: S_t - t*delta >= u(V_t)) <= alpha`` with
  ``u(V) = sqrt(2 (V + rho) log(sqrt((V + rho) / rho) / alpha))`` (the
  one-sided half-normal mixture bounded with ``Phi >= 1/2``; the exact mixture
  would allow about ``2 alpha`` inside the log, but the increments here are
  skewed and heavy-tailed when a propensity is small, and the benchmark's A/A
  with ten challengers at 0.8 went to 5.1% with it).
  Checked after every reward, the chance that a challenger no better than
  the baseline ever shows ``S >= u`` stays below ``alpha``.
* **Alpha spending over challengers**: the k-th challenger of a generation
  is tested at ``alpha / (k (k + 1))``; these sum to ``alpha``, so the chance
  that *any* challenger of the generation is named while not truly better
  stays below ``alpha``, however many are proposed.
* **Screen, then confirm** (:meth:`EvidenceLedger.enter`): a challenger is
  *tested* only once it has entered the confirmatory family, and ``k`` is its
  rank in the order of entry, not of creation. Entry is decided from the data
  so far (the policy lets in the most promising challenger when its posterior
  says it probably beats the baseline), and the confirmatory evidence starts
  at entry: what comes after a stopping time is a fresh martingale, so the
  guarantee holds as if the order had been fixed in advance. Challengers that
  never look promising never spend alpha, and a winner usually enters first,
  at ``alpha / 2`` instead of ``alpha / (k (k + 1))`` for its place among the
  proposals (BENCHMARKS.md "Selection" measures what that buys).

Everything here is plain arithmetic on floats, so the benchmark
(``benchmarks/selection.py``) calls the same functions on numpy arrays
(``log=numpy.log``) for thousands of simulated sessions at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_RHO_REWARDS",
    "MEAN_WINDOW",
    "EvidenceLedger",
    "PairEvidence",
    "boundary",
    "challenger_alpha",
]

# The mixture is tightest where the pair's variance sum V is about this many
# rewards' worth of variance (rho = DEFAULT_RHO_REWARDS * reward scale**2 / 4).
# Chosen a priori for the horizon where decisions matter (hundreds to a few
# thousand rewards per arm); the boundary grows only with log V away from it.
DEFAULT_RHO_REWARDS = 500.0
# The control variate m is the plain mean of the first MEAN_WINDOW rewards,
# then an exponentially weighted mean with that window: it follows a drift.
MEAN_WINDOW = 200
# Traffic that does not follow the published weights (a custom selector, a
# stale or foreign client): each arm's share of the last ~SHARE_WINDOW rewards
# is tracked, and a propensity below half that share is raised to it. With
# routing as published the share is about the propensity and this never acts.
SHARE_WINDOW = 50


def boundary(v: Any, alpha: Any, rho: Any, *, log: Callable[[Any], Any] = math.log) -> Any:
    """The one-sided normal-mixture boundary ``u(V)`` for level ``alpha``.

    ``P(exists t: S_t >= u(V_t)) <= alpha`` for a sum ``S`` of martingale
    differences with variance process ``V`` (half-normal mixture over the
    tilt, bounded with ``Phi >= 1/2``). Works on floats and, with
    ``log=numpy.log``, on numpy arrays.
    """
    w = v + rho
    return (2.0 * w * log((w / rho) ** 0.5 / alpha)) ** 0.5




def challenger_alpha(index: int, alpha: float, *, spend: bool = True) -> float:
    """The level of the ``index``-th challenger (1-based, creation order):
    ``alpha / (index * (index + 1))`` (the levels sum to ``alpha``), or
    ``alpha`` itself when ``spend`` is off."""
    if not spend:
        return alpha
    k = max(1, int(index))
    return alpha / (k * (k + 1))


@dataclass(frozen=True, slots=True)
class PairEvidence:
    """What the ledger knows about "``first`` minus ``second``" over their common period."""

    s: float  # sum of the augmented-IPW differences
    v: float  # sum of their squares (the variance process)
    t: int  # rewards applied in the period (every arm's)
    n_first: int  # rewards of each arm in the period
    n_second: int

    @property
    def estimate(self) -> float | None:
        """The difference of mean rewards over the period (None before any reward)."""
        return self.s / self.t if self.t else None

    def interval(self, alpha: float, rho: float) -> tuple[float, float]:
        """A ``1 - 2 alpha`` anytime-valid interval for the difference of means
        (each side at ``alpha``); ``(-inf, inf)`` before any reward."""
        if not self.t:
            return (-math.inf, math.inf)
        u = boundary(self.v, alpha, rho)
        return ((self.s - u) / self.t, (self.s + u) / self.t)


@dataclass(slots=True)
class _Arm:
    s: float = 0.0
    q: float = 0.0
    n: int = 0
    t0: int = 0  # ledger.t when the arm was activated
    # the other arms' (s, q, n) when this arm was activated: the common period starts here
    since: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    t_entry: int = 0  # ledger.t when the arm entered the confirmatory family
    # every arm's (s, q, n), this one's included, at entry: the confirmatory period
    at_entry: dict[str, tuple[float, float, int]] | None = None


class EvidenceLedger:
    """Per-arm augmented-IPW sums from which any pair's evidence is read in O(1).

    Deterministic: the same calls in the same order give the same ledger, so it
    lives in the replayable session state (and its snapshots).
    """

    __slots__ = ("arms", "entries", "m", "share", "t")

    def __init__(self) -> None:
        self.arms: dict[str, _Arm] = {}
        self.t = 0  # rewards applied while any arm was active
        self.m = 0.0  # the control variate (module doc)
        self.share: dict[str, float] = {}  # recent share of the rewards per arm
        # arm -> its place in the order of entry (1, 2, ...); kept after the arm is
        # archived, since the alpha it was tested at is spent
        self.entries: dict[str, int] = {}

    def enter(self, arm: str) -> bool:
        """Let ``arm`` into the confirmatory family now (module doc); its confirmatory
        evidence starts here. Returns whether it entered (an active arm, once)."""
        a = self.arms.get(arm)
        if a is None or arm in self.entries:
            return False
        self.entries[arm] = len(self.entries) + 1
        a.t_entry = self.t
        a.at_entry = {k: (o.s, o.q, o.n) for k, o in self.arms.items()}
        return True

    def pair_since_entry(self, first: str, second: str) -> PairEvidence | None:
        """Evidence on ``first - second`` since ``first`` entered the confirmatory
        family (None if it has not, or either arm is inactive). An arm activated
        after that entry counts from its own activation."""
        a, b = self.arms.get(first), self.arms.get(second)
        if a is None or b is None or a.at_entry is None:
            return None
        if second not in a.at_entry:
            return self.pair(first, second)
        s0, q0, n0 = a.at_entry[first]
        r0, w0, m0 = a.at_entry[second]
        return PairEvidence(
            (a.s - s0) - (b.s - r0), (a.q - q0) + (b.q - w0), self.t - a.t_entry, a.n - n0, b.n - m0
        )

    def activate(self, arm: str) -> None:
        """Start ``arm``'s evidence now; pairs with arms active before start here."""
        if arm in self.arms:
            return
        self.arms[arm] = _Arm(t0=self.t, since={k: (a.s, a.q, a.n) for k, a in self.arms.items()})

    def deactivate(self, arm: str) -> None:
        """Forget ``arm`` (archived): its pairs are no longer asked for."""
        if self.arms.pop(arm, None) is not None:
            for other in self.arms.values():
                other.since.pop(arm, None)
            self.share.pop(arm, None)

    def observe(self, arm: str | None, reward: float, propensity: float | None) -> bool:
        """Apply one reward of ``arm`` served with probability ``propensity``.

        Every reward advances the period and the control variate; only an
        active arm served with a known positive probability gets an increment.
        Returns whether it did.
        """
        counted = False
        a = self.arms.get(arm) if arm is not None else None
        lam = 1.0 / SHARE_WINDOW
        for k in self.share:
            self.share[k] *= 1.0 - lam
        if arm is not None and a is not None:
            self.share[arm] = self.share.get(arm, 0.0) + lam
        if a is not None and propensity is not None and propensity > 0.0:
            p = max(propensity, 0.5 * self.share.get(arm, 0.0))  # type: ignore[arg-type]
            z = (reward - self.m) / p
            a.s += z
            a.q += z * z
            a.n += 1
            counted = True
        self.t += 1
        self.m += (reward - self.m) / min(self.t, MEAN_WINDOW)
        return counted

    def pair(self, first: str, second: str) -> PairEvidence | None:
        """Evidence on ``first - second`` since both were active (None if one is not)."""
        a, b = self.arms.get(first), self.arms.get(second)
        if a is None or b is None:
            return None
        sa, qa, na, sb, qb, nb = a.s, a.q, a.n, b.s, b.q, b.n
        if second in a.since:  # first started later: second's sums from that point
            s0, q0, n0 = a.since[second]
            sb, qb, nb = sb - s0, qb - q0, nb - n0
            t0 = a.t0
        elif first in b.since:
            s0, q0, n0 = b.since[first]
            sa, qa, na = sa - s0, qa - q0, na - n0
            t0 = b.t0
        else:
            t0 = max(a.t0, b.t0)
        return PairEvidence(sa - sb, qa + qb, self.t - t0, na, nb)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (floats survive JSON exactly)."""
        return {
            "t": self.t,
            "m": self.m,
            "share": self.share,
            "entries": self.entries,
            "arms": {
                k: {
                    "s": a.s,
                    "q": a.q,
                    "n": a.n,
                    "t0": a.t0,
                    "since": a.since,
                    "t_entry": a.t_entry,
                    "at_entry": a.at_entry,
                }
                for k, a in self.arms.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvidenceLedger:
        """Inverse of :meth:`to_json`."""
        led = cls()
        led.t = int(data.get("t", 0))
        led.m = float(data.get("m", 0.0))
        led.share = {k: float(v) for k, v in (data.get("share") or {}).items()}
        led.entries = {k: int(v) for k, v in (data.get("entries") or {}).items()}

        def sums(d: Mapping[str, Any]) -> dict[str, tuple[float, float, int]]:
            return {o: (float(v[0]), float(v[1]), int(v[2])) for o, v in d.items()}

        for k, a in (data.get("arms") or {}).items():
            at = a.get("at_entry")
            led.arms[k] = _Arm(
                float(a["s"]),
                float(a["q"]),
                int(a["n"]),
                int(a["t0"]),
                sums(a["since"]),
                int(a.get("t_entry", 0)),
                sums(at) if at is not None else None,
            )
        return led
