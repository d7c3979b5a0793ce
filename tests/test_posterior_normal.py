"""The normal posterior math against the stdlib's ``statistics.NormalDist`` (the oracle)."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from synth_middleware._posterior import (
    Grid,
    Posterior,
    prob_below,
    prob_greater,
)


def _normal(mean: float, sd: float) -> Posterior:
    return Posterior("normal", mean, sd, 10, mean, sd)


@pytest.mark.parametrize(("mean", "sd"), [(0.0, 1.0), (0.4, 0.07), (-3.5, 12.0), (250.0, 1e-3)])
def test_density_is_the_normal_pdf(mean: float, sd: float) -> None:
    xs = [mean + sd * (k / 10.0) for k in range(-90, 91)]
    dist = NormalDist(mean, sd)
    for x, got in zip(xs, _normal(mean, sd).density(xs), strict=True):
        assert got == pytest.approx(dist.pdf(x), rel=1e-12, abs=1e-300)


def test_cdfs_match_the_erf_formulas_they_replaced() -> None:
    a, b = _normal(0.52, 0.04), _normal(0.47, 0.05)
    for shift in (0.0, 0.01, -0.2):
        z = (a.mean - b.mean - shift) / math.sqrt(a.sd**2 + b.sd**2)
        old = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
        assert Grid([a, b]).prob_greater(0, 1, shift) == pytest.approx(old, abs=1e-14)
    z = (a.mean - b.mean) / math.sqrt(a.sd**2 + b.sd**2)
    assert prob_greater(a, b) == pytest.approx(0.5 * (1.0 + math.erf(z / math.sqrt(2.0))))
    for x in (0.3, 0.5, 0.52, 0.6, 0.9):
        old = 0.5 * (1.0 + math.erf((x - a.mean) / (a.sd * math.sqrt(2.0))))
        assert prob_below(a, x) == pytest.approx(old, abs=1e-14)
        assert prob_below(a, x) == pytest.approx(NormalDist(a.mean, a.sd).cdf(x), rel=1e-12)
