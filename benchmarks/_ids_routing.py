"""Information-directed sampling (IDS) routing for ``benchmarks/selection.py --ids``.

Evaluated as a routing rule and not adopted (BENCHMARKS.md, "Selection"): the
variance-based IDS of Russo & Van Roy ("Learning to Optimize via
Information-Directed Sampling", Operations Research 2018) on the Beta routing
posteriors, and a batch variant for a posterior frozen over several rollouts
(as the client's cache freezes it): IDS step by step with mean-preserving
pseudo-observations for the expected allocation so far (the GP-BUCB
"hallucination" idea), routing on the average. Kept so the measurement can be
repeated; the library does not use it.
"""

from __future__ import annotations

import numpy as np


def _ids_from_moments(
    pstar: np.ndarray, mean: np.ndarray, emax: np.ndarray, cond: np.ndarray, active: np.ndarray
) -> np.ndarray:
    """IDS weights from p*(i) [S,K], E[theta_a] [S,K], E[max] [S], and
    cond[s, i, a] = P(A*=i) E[theta_a | A*=i] [S,K,K]."""
    delta = np.maximum(emax[:, None] - mean, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cm = np.where(pstar[:, :, None] > 0, cond / pstar[:, :, None], mean[:, None, :])
    v = (pstar[:, :, None] * (cm - mean[:, None, :]) ** 2).sum(1)  # [S, K]
    return ids_pairs(delta, v, active)


def ids_pairs(delta: np.ndarray, v: np.ndarray, active: np.ndarray) -> np.ndarray:
    """The distribution on at most two active arms minimising (pi.delta)^2 / (pi.v),
    exactly (q in {0, 1, stationary point}) over every pair; [S, K] weights."""
    s, k = delta.shape
    d = np.where(active, delta, 0.0)
    vv = np.where(active, v, 0.0)
    di, dj = d[:, :, None], d[:, None, :]  # pi = q e_i + (1 - q) e_j
    vi, vj = vv[:, :, None], vv[:, None, :]
    dd, dv = di - dj, vi - vj
    with np.errstate(divide="ignore", invalid="ignore"):
        qs = (dj * dv - 2.0 * dd * vj) / (dd * dv)
    qs = np.where(np.isfinite(qs), np.clip(qs, 0.0, 1.0), 1.0)
    best_val = np.full((s, k, k), np.inf)
    best_q = np.ones((s, k, k))
    for q in (np.ones_like(qs), np.zeros_like(qs), qs):
        num = (q * di + (1 - q) * dj) ** 2
        den = q * vi + (1 - q) * vj
        with np.errstate(divide="ignore", invalid="ignore"):
            val = np.where(den > 0, num / den, np.where(num > 0, np.inf, 0.0))
        val = np.where(np.isnan(val), np.inf, val)
        val = np.where(active[:, :, None] & active[:, None, :], val, np.inf)
        take = val < best_val - 1e-15
        best_val = np.where(take, val, best_val)
        best_q = np.where(take, q, best_q)
    flat = best_val.reshape(s, k * k)
    # random tie-break among (near-)equal pairs, e.g. every arm at the prior
    jitter = 1.0 + 1e-9 * np.random.default_rng(int(delta.sum() * 1e6) % 2**32).random((s, k * k))
    idx = (flat * jitter).argmin(1)
    i, j = idx // k, idx % k
    rows = np.arange(s)
    q = best_q[rows, i, j]
    w = np.zeros((s, k))
    # every arm infinite (no information anywhere, e.g. a single active arm): greedy
    none = ~np.isfinite(flat[rows, idx])
    w[rows, i] += q
    w[rows, j] += 1.0 - q
    if none.any():
        g = np.where(active, -delta, -np.inf).argmax(1)
        w[none] = 0.0
        w[rows[none], g[none]] = 1.0
    return w


def ids_weights(
    a: np.ndarray,
    b: np.ndarray,
    active: np.ndarray,
    rng: np.random.Generator,
    samples: int = 1024,
) -> np.ndarray:
    """Variance-based IDS (Russo & Van Roy 2018) routing weights per seed [S, K]
    from ``samples`` joint posterior draws of Beta(a, b); inactive arms get 0."""
    s, k = a.shape
    x = rng.beta(a[None], b[None], size=(samples, s, k))
    x = np.where(active[None], x, -1.0)
    astar = x.argmax(2)
    onehot = (astar[..., None] == np.arange(k)).astype(float)
    pstar = onehot.mean(0)
    mean = x.mean(0)
    emax = x.max(2).mean(0)
    cond = np.einsum("msi,msa->sia", onehot, x) / samples
    return _ids_from_moments(pstar, mean, emax, cond, active)


def ids_batch_weights(
    a: np.ndarray, b: np.ndarray, active: np.ndarray, batch: int, sharpness: float
) -> np.ndarray:
    """Batch IDS for a posterior frozen over ``batch`` rollouts: IDS step by step
    with hallucinated (mean-preserving) pseudo-observations for the expected
    allocation so far (GP-BUCB style), the batch weights the average."""
    a, b = a.copy(), b.copy()
    tot = np.zeros_like(a)
    for _ in range(batch):
        w = ids_weights_grid(a, b, active)
        tot += w
        n = a + b
        a += sharpness * w * a / n
        b += sharpness * w * b / n
    return tot / batch


def ids_weights_grid(
    a: np.ndarray, b: np.ndarray, active: np.ndarray, cells: int = 512
) -> np.ndarray:
    """Same as :func:`ids_weights`, computed deterministically on a midpoint grid."""
    s, k = a.shape
    xs = (np.arange(cells) + 0.5) / cells
    lx, l1x = np.log(xs), np.log1p(-xs)
    lp = (a[:, :, None] - 1.0) * lx + (b[:, :, None] - 1.0) * l1x
    lp -= lp.max(2, keepdims=True)
    m = np.exp(lp)
    m /= m.sum(2, keepdims=True)
    m = np.where(active[:, :, None], m, 0.0)
    cdf = np.cumsum(m, 2) - 0.5 * m
    cdf = np.where(active[:, :, None], cdf, 1.0)
    part = np.cumsum(m * xs, 2) - 0.5 * m * xs  # E[theta 1{theta < x}]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(cdf > 0, part / cdf, 0.0)
    mean = (m * xs).sum(2)
    pstar = np.zeros((s, k))
    cond = np.zeros((s, k, k))
    for i in range(k):
        others = np.where((np.arange(k) == i)[None, :, None], 1.0, cdf).prod(1)  # [S, G]
        wi = m[:, i] * others
        pstar[:, i] = wi.sum(1)
        cond[:, i, :] = np.einsum("sg,sag->sa", wi, ratio)
        cond[:, i, i] = (wi * xs).sum(1)
    tot = pstar.sum(1, keepdims=True)
    pstar /= tot
    cond /= tot[:, :, None]
    emax = np.einsum("sii->s", cond)
    return _ids_from_moments(pstar, mean, emax, cond, active)
