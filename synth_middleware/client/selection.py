"""Client-side candidate selection, prepared once per refresh, cheap per call.

Thompson sampling serves each candidate with the probability that it is the
best under the posterior. Drawing posterior samples per call costs ~5 us per
candidate, so the probabilities are computed when the state refreshes
(numerically, on a grid) and each call draws from that categorical (~1 us).

:func:`routing_weights` is what to serve by: the same rule as the engine's
published ``policy.routing_weights`` (plain Thompson sampling, i.e.
:func:`probability_best`, unless a sharpness > 1 is given:
:func:`synth_middleware._posterior.routing_posteriors_from_rows`).
:func:`probability_best` is the sound P(best), the one the engine decides
promotion and pruning on.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Literal

from synth_middleware._posterior import (
    DEFAULT_ROUTING_SHARPNESS,
    probability_best_from_stats,
    routing_probabilities_from_stats,
)

if TYPE_CHECKING:
    from synth_middleware.client.candidates import Candidate
    from synth_middleware.rollout import Rollout

SelectionMode = Literal["explore", "best"]
SelectionCallable = Callable[[Sequence["Candidate"], "Rollout"], "Candidate | str | None"]
Selection = SelectionMode | SelectionCallable


def probability_best(stats: Sequence[dict[str, Any]]) -> list[float]:
    """P(candidate i has the highest mean reward) for each entry of ``stats``.

    The same posterior math the engine's selection policy uses
    (:mod:`synth_middleware._posterior`): Beta posteriors when every mean is in
    [0, 1], Normal ones with a pooled prior otherwise, integrated on a grid.
    Computed once per refresh (about a millisecond for five candidates).
    """
    return probability_best_from_stats(stats)


def routing_weights(
    stats: Sequence[dict[str, Any]], sharpness: float = DEFAULT_ROUTING_SHARPNESS
) -> list[float]:
    """The serving probability of each entry of ``stats``: (sharpened) Thompson
    sampling, the same rule as the engine's published ``policy.routing_weights``.

    Use it when the backend sends no ``policy.routing_weights`` (the hosted API,
    or an older engine). Computed once per refresh, like :func:`probability_best`.
    """
    return routing_probabilities_from_stats(stats, sharpness=sharpness)


def routing_from_state(
    state: Mapping[str, Any], ids: Sequence[str], stats: Mapping[Any, Any]
) -> list[float]:
    """The serving weights of ``ids`` for a session ``state``: the backend's own
    ``policy.routing_weights`` when it sends them (it knows the reward range and the
    session's routing sharpness, and computed them already), an older engine's
    ``probability_best`` (plain Thompson), else :func:`routing_weights` from
    ``stats`` (``candidate_id -> statistics``). Used by the client and the proxy."""
    policy = state.get("policy")
    for key in ("routing_weights", "probability_best"):
        pb = policy.get(key) if isinstance(policy, Mapping) else None
        if isinstance(pb, Mapping) and pb:
            probs = [pb.get(cid) for cid in ids]
            weights = [float(p) for p in probs if isinstance(p, int | float) and 0.0 <= p <= 1.0]
            if len(weights) == len(ids) and sum(weights) > 0:
                return weights
    return routing_weights([dict(stats.get(cid) or {}) for cid in ids])


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
