"""Client-side candidate selection, prepared once per refresh, cheap per call.

Thompson sampling serves each candidate with the probability that it is the
best under the posterior. Drawing posterior samples per call costs ~5 us per
candidate, so the probabilities are computed when the state refreshes
(numerically, on a grid) and each call draws from that categorical (~1 us).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from synth_middleware.client.candidates import Candidate
    from synth_middleware.rollout import Rollout

SelectionMode = Literal["explore", "best"]
SelectionCallable = Callable[[Sequence["Candidate"], "Rollout"], "Candidate | str | None"]
Selection = SelectionMode | SelectionCallable

_GRID = 256


def _posterior(stats: dict[str, Any], bounded: bool) -> tuple[float, float]:
    """Normal approximation (mean, sd) of a candidate's mean-reward posterior."""
    n = int(stats.get("reward_count") or 0)
    mean = float(stats.get("avg_reward") or 0.0) if n else 0.0
    if bounded:
        # Beta(1 + successes, 1 + failures) for rewards in [0, 1]
        a = 1.0 + mean * n
        b = 1.0 + (1.0 - mean) * n
        m = a / (a + b)
        var = a * b / ((a + b) ** 2 * (a + b + 1.0))
        return m, math.sqrt(var)
    if n < 2:
        return mean, 1.0 if n == 0 else 0.5
    m2 = float(stats.get("reward_m2") or 0.0)
    var = max(m2 / (n - 1), 1e-6)
    return mean, math.sqrt(var / n)


def probability_best(stats: Sequence[dict[str, Any]]) -> list[float]:
    """P(candidate i has the highest mean reward) for each entry of ``stats``.

    Integrates pdf_i(x) * prod_j cdf_j(x) on a grid over Normal approximations
    of the posteriors; exact enough for routing and ~1 ms for five candidates.
    """
    k = len(stats)
    if k == 0:
        return []
    if k == 1:
        return [1.0]
    bounded = all(
        s.get("avg_reward") is None or 0.0 <= float(s["avg_reward"]) <= 1.0 for s in stats
    )
    post = [_posterior(s, bounded) for s in stats]
    lo = min(m - 6 * sd for m, sd in post)
    hi = max(m + 6 * sd for m, sd in post)
    step = (hi - lo) / _GRID
    xs = [lo + (i + 0.5) * step for i in range(_GRID)]
    cdfs = [[0.5 * (1.0 + math.erf((x - m) / (sd * math.sqrt(2.0)))) for x in xs] for m, sd in post]
    out = []
    for i, (m, sd) in enumerate(post):
        norm = 1.0 / (sd * math.sqrt(2.0 * math.pi))
        total = 0.0
        for g, x in enumerate(xs):
            z = (x - m) / sd
            p = norm * math.exp(-0.5 * z * z)
            if p < 1e-300:
                continue
            for j in range(k):
                if j != i:
                    p *= cdfs[j][g]
            total += p
        out.append(total * step)
    s = sum(out)
    if s <= 0 or not math.isfinite(s):
        return [1.0 / k] * k
    return [p / s for p in out]


def stable_unit(key: str) -> float:
    """A number in [0, 1) derived from ``key`` only, the same in every process."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Categorical:
    """Draws an index with fixed probabilities in O(log k)."""

    __slots__ = ("_cum", "_items")

    def __init__(self, items: Sequence[Any], probs: Sequence[float]) -> None:
        self._items = list(items)
        cum = list(accumulate(probs))
        total = cum[-1] if cum else 1.0
        self._cum = [c / total for c in cum]

    def draw(self, u: float | None = None) -> Any:
        """An item; ``u`` in [0, 1) makes the draw deterministic (sticky keys)."""
        if not self._items:
            return None
        if u is None:
            u = random.random()
        i = bisect.bisect_right(self._cum, u)
        return self._items[min(i, len(self._items) - 1)]
