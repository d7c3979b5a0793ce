"""Promotion and routing on simulations with known ground truth, checked after every reward.

Each scenario is a set of candidates with known success rates (Bernoulli
rewards); the first is the baseline. Every seed is one session, all seeds of a
scenario run at once (numpy over seeds). What is simulated is what the engine
does, with its own code:

* **Routing epochs**: the routing weights are recomputed when
  :func:`synth_middleware.engine.policy.epoch_length` says (every
  ``max(10, rewards / 50)`` rewards), from P(best) of the Beta posteriors
  (Monte Carlo, 256 draws: the engine uses a grid), through the engine's
  :func:`~synth_middleware.engine.policy.mix_floors` (baseline floor while a
  challenger is unresolved, a floor per candidate) and, for top-two,
  :func:`synth_middleware._posterior.top_two_weights`. Each rollout is served
  from those weights, and that weight is the propensity the evidence uses.
* **Evidence** exactly as :class:`synth_middleware.engine.evidence.EvidenceLedger`
  accumulates it (augmented IPW increments, the same control-variate window),
  and **every decision after every reward** with the engine's functions:
  :func:`~synth_middleware.engine.evidence.boundary` and
  :func:`~synth_middleware.engine.evidence.challenger_alpha` (called on numpy
  arrays), the policy's minimums, its naming with incumbency (a challenger
  replaces the named best only when its evidence beats the named best), its
  rollback (a named best that stops clearing the boundary loses the name) and
  its pruning (evidence of being worse than the baseline or the named best).
  The engine itself (the real :class:`~synth_middleware.engine.state.SessionStateMachine`)
  is put through the same A/A and drift cases, with fewer seeds, in
  ``tests/test_promotion.py``.

Measured: **false promotion** (a candidate not truly better than the baseline
is named at any point up to the horizon, per seed), **time to name** a true
winner (the first rollout at which the truly best is named), **winner
archived**, and routing **regret** at 1,000 rollouts against plain Thompson
sampling (no floors), uniform and epsilon-greedy routing on the same rates.

    .venv/bin/python benchmarks/selection.py                # prints the tables
    .venv/bin/python benchmarks/selection.py --write        # also updates BENCHMARKS.md
    .venv/bin/python benchmarks/selection.py --only drift --null-seeds 200 --seeds 100
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

from synth_middleware._posterior import top_two_weights  # noqa: E402
from synth_middleware.engine.evidence import (  # noqa: E402
    MEAN_WINDOW,
    SHARE_WINDOW,
    boundary,
    challenger_alpha,
)
from synth_middleware.engine.policy import (  # noqa: E402
    PolicySettings,
    epoch_length,
    mix_floors,
    rho_for,
    screen_pick,
)

Drift = Callable[[int, int], float]  # (rollout t, horizon) -> shift of every arm's rate


def _step(t: int, horizon: int) -> float:
    """Hard traffic in the first half, easy in the second (every arm -0.15, then +0.15)."""
    return -0.15 if t < horizon // 2 else 0.15


def _sine(t: int, horizon: int) -> float:
    """A daily cycle: +-0.15 with a period of 1,000 rollouts."""
    return 0.15 * math.sin(2.0 * math.pi * t / 1000.0)


@dataclass(frozen=True)
class Scenario:
    """Candidates' base rates (the first is the baseline), a common drift, a horizon."""

    title: str
    rates: tuple[float, ...]
    horizon: int
    null: bool  # every challenger is exactly as good as the baseline
    drift: Drift | None = None
    targets: dict[int, float] = field(default_factory=dict)  # horizon -> P(named) target


def scenarios() -> list[Scenario]:
    """The benchmark's scenarios (issue: A/A null, drift, small true winner, the classics)."""
    out: list[Scenario] = []
    for rate in (0.2, 0.44, 0.8):
        for k in (1, 3, 10):
            out.append(
                Scenario(f"A/A {k} challenger(s) at {rate}", (rate,) * (k + 1), 10_000, True)
            )
    for name, fn in (("step", _step), ("sine", _sine)):
        out.append(Scenario(f"drift {name}, A/A 3 challengers", (0.44,) * 4, 10_000, True, fn))
        out.append(
            Scenario(
                f"drift {name}, +10 winner",
                (0.44, 0.44, 0.44, 0.54),
                10_000,
                False,
                fn,
                {2000: 0.8},
            )
        )
    for gain, horizon, target in ((0.20, 2000, 600), (0.10, 4000, 2000), (0.05, 10_000, 8000)):
        out.append(
            Scenario(
                f"small winner +{round(gain * 100)} (3 equals)",
                (0.44, 0.44, 0.44, 0.44 + gain),
                horizon,
                False,
                targets={target: 0.8},
            )
        )
    out += [
        Scenario("banking77-like", (0.44, 0.41, 0.57, 0.50, 0.30, 0.52), 2000, False),
        Scenario("close race", (0.50, 0.52, 0.55, 0.48, 0.53), 4000, False),
        Scenario("baseline is best", (0.60, 0.50, 0.45, 0.52, 0.40), 2000, True),
        Scenario(
            "ten candidates",
            (0.50, 0.30, 0.35, 0.40, 0.45, 0.48, 0.52, 0.55, 0.58, 0.66),
            2000,
            False,
        ),
    ]
    return out


HORIZONS = (100, 300, 600, 1000, 2000, 4000, 8000, 10_000)
ROUTINGS = ("thompson",)  # the default; --routing thompson,top_two adds the comparison
ALTERNATIVES = ("plain thompson", "uniform", "epsilon-greedy")


def _pbest_mc(
    rng: np.random.Generator, succ: np.ndarray, cnt: np.ndarray, active: np.ndarray
) -> np.ndarray:
    """P(best) per seed and arm under the Beta(1 + s, 1 + f) posteriors, 256 draws."""
    s, k = cnt.shape
    x = rng.beta(1.0 + succ[None], 1.0 + (cnt - succ)[None], size=(256, s, k))
    x = np.where(active[None], x, -1.0)
    lead = x.argmax(2)
    return np.stack([(lead == j).mean(0) for j in range(k)], 1)


def _weights(
    pbest: np.ndarray,
    active: np.ndarray,
    unresolved: np.ndarray,
    routing: str,
    st: PolicySettings,
    ref: np.ndarray,
) -> np.ndarray:
    """Routing weights per seed with the engine's own functions (per seed); ``ref`` is
    each seed's reference arm (the named best, or the baseline, 0)."""
    s, k = pbest.shape
    out = np.zeros((s, k))
    for i in range(s):
        js = np.flatnonzero(active[i])
        pb = [float(pbest[i, j]) for j in js]
        w = top_two_weights(pb) if routing == "top_two" else pb
        hit = np.flatnonzero(js == ref[i])
        base_i = int(hit[0]) if hit.size else None
        mixed = mix_floors(w, base_i, bool(unresolved[i]), st)
        out[i, js] = mixed
    return out / out.sum(1, keepdims=True)


def _screen(
    st: PolicySettings,
    succ: np.ndarray,
    cnt: np.ndarray,
    active: np.ndarray,
    rank: np.ndarray,
    n_entered: np.ndarray,
    sums: tuple[np.ndarray, np.ndarray],
    at_entry: tuple[np.ndarray, np.ndarray],
) -> None:
    """One epoch's screening per seed: P(beats the baseline) of the Beta posteriors
    (``beta_posterior`` and ``prob_greater_normal``, in numpy), then the engine's own
    ``screen_pick``; the entrant's sums are kept (``EvidenceLedger.enter``)."""
    a = 1.0 + succ
    b = 1.0 + cnt - succ
    tot = a + b
    mu = a / tot
    var = a * b / (tot * tot * (tot + 1.0))
    z = (mu - mu[:, :1]) / np.sqrt(var + var[:, :1])
    p = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    need = max(1, st.min_rollouts_for_best // 2)
    maybe = (active & (rank == 0) & (cnt >= need) & (p >= st.screen_probability))[:, 1:].any(1)
    s_, q_ = sums
    at_s, at_q = at_entry
    for i in np.flatnonzero(maybe):
        js = [j for j in range(1, cnt.shape[1]) if active[i, j]]
        pick = screen_pick(
            [str(j) for j in js],
            [float(p[i, j]) for j in js],
            [int(cnt[i, j]) for j in js],
            [bool(rank[i, j]) for j in js],
            st,
        )
        if pick is None:
            continue
        j = int(pick)
        n_entered[i] += 1
        rank[i, j] = n_entered[i]
        at_s[i, j] = s_[i]  # every arm's sums at j's entry
        at_q[i, j] = q_[i]


_erf = np.vectorize(math.erf, otypes=[float])


def simulate(
    sc: Scenario,
    seeds: int,
    routing: str,
    rng_seed: int,
    settings: PolicySettings | None = None,
) -> dict[str, np.ndarray]:
    """One scenario under our routing and decisions. Returns per-seed arrays:
    ``false_at`` (first rollout a not-better arm was named, or inf), ``named_at``
    (first rollout the truly best arm was named, inf if never; 0 rows when there is
    no true winner), ``winner_archived``, and ``regret`` at 1,000 rollouts."""
    st = settings or PolicySettings()
    rng = np.random.default_rng(rng_seed)
    base = np.asarray(sc.rates)
    k = len(base)
    rows = np.arange(seeds)
    better = base > base[0] + 1e-12  # truly better than the baseline
    best_arm = int(base.argmax()) if better.any() else -1
    alpha_k = np.array(
        [1.0] + [challenger_alpha(j, st.alpha, spend=st.bonferroni) for j in range(1, k)]
    )
    rho = rho_for(st, 1.0)
    succ = np.zeros((seeds, k))
    cnt = np.zeros((seeds, k))
    s_ = np.zeros((seeds, k))
    q_ = np.zeros((seeds, k))
    m = np.zeros(seeds)
    share = np.zeros((seeds, k))
    active = np.ones((seeds, k), dtype=bool)
    incumbent = np.full(seeds, -1)  # -1: the baseline is named
    false_at = np.full(seeds, np.inf)
    named_at = np.full(seeds, np.inf)
    archived_winner = np.zeros(seeds, dtype=bool)
    unresolved = np.ones(seeds, dtype=bool)
    # screening (engine.policy "Screening"): entry rank per arm (0: not entered) and every
    # sum at entry, as EvidenceLedger.enter keeps them
    rank = np.zeros((seeds, k), dtype=int)
    n_entered = np.zeros(seeds, dtype=int)
    at_s = np.zeros((seeds, k, k))  # [seed, entrant, arm]: the arm's sums at the entry
    at_q = np.zeros((seeds, k, k))
    alpha_r = np.array(
        [1.0] + [challenger_alpha(j, st.alpha, spend=st.bonferroni) for j in range(1, k + 1)]
    )
    screening = st.screen_probability > 0.0
    regret = np.zeros(seeds)
    regret_1000 = np.zeros(seeds)
    weights = None
    epoch_at = 0
    for t in range(1, sc.horizon + 1):
        if weights is None or (t - 1) - epoch_at >= epoch_length(epoch_at):
            ref = np.maximum(incumbent, 0)
            pb = _pbest_mc(rng, succ, cnt, active)
            weights = _weights(pb, active, unresolved, routing, st, ref)
            epoch_at = t - 1
            if screening:
                _screen(st, succ, cnt, active, rank, n_entered, (s_, q_), (at_s, at_q))
        cum = weights.cumsum(1)
        arm = np.minimum((rng.random(seeds)[:, None] >= cum).sum(1), k - 1)
        prop = weights[rows, arm]
        shift = sc.drift(t, sc.horizon) if sc.drift else 0.0
        rate = np.clip(base + shift, 0.01, 0.99)
        served = rate[arm]
        y = (rng.random(seeds) < served).astype(float)
        regret += rate.max() - served
        if t == 1000:
            regret_1000 = regret.copy()
        cnt[rows, arm] += 1
        succ[rows, arm] += y
        # the ledger's update (EvidenceLedger.observe), vectorised
        share *= 1.0 - 1.0 / SHARE_WINDOW
        share[rows, arm] += 1.0 / SHARE_WINDOW
        z = (y - m) / np.maximum(prop, 0.5 * share[rows, arm])
        s_[rows, arm] += z
        q_[rows, arm] += z * z
        m += (y - m) / min(t, MEAN_WINDOW)
        # decisions after every reward (policy.evaluate, vectorised)
        sd = s_ - s_[:, :1]
        vd = q_ + q_[:, :1]
        b = boundary(vd, alpha_k[None], rho, log=np.log)
        if screening:  # promotion on the evidence since entry, at the entry rank's level
            own_s = s_ - np.diagonal(at_s, axis1=1, axis2=2)  # each arm's sums since entry
            own_q = q_ - np.diagonal(at_q, axis1=1, axis2=2)
            se = own_s - (s_[:, :1] - at_s[:, :, 0])
            ve = np.maximum(own_q + (q_[:, :1] - at_q[:, :, 0]), 1e-300)
            be = boundary(ve, alpha_r[rank], rho, log=np.log)
            eligible = (rank > 0) & (cnt >= st.min_rollouts_for_best) & (se > be) & active
        else:
            eligible = (cnt >= st.min_rollouts_for_best) & (sd > b) & active
        eligible[:, 0] = False
        prune = (cnt >= st.prune_min_rollouts) & (-sd > b) & active
        has_inc = incumbent >= 0
        inc = np.where(has_inc, incumbent, 0)
        s_inc = s_ - s_[rows, inc][:, None]
        v_inc = q_ + q_[rows, inc][:, None]
        b_inc = boundary(v_inc, alpha_k[None], rho, log=np.log)
        vs_inc = has_inc[:, None] & (np.arange(k)[None] != inc[:, None])
        prune |= vs_inc & (cnt >= st.prune_min_rollouts) & (-s_inc > b_inc) & active
        prune[:, 0] = False
        eligible &= ~prune
        lower = np.where(eligible, (sd - b) / t, -np.inf)
        # naming with incumbency and rollback: the named best keeps its name until
        # shown worse than the baseline (then it is also pruned: rows of `prune`)
        worse = -sd > b
        keep = has_inc & active[rows, inc] & ~worse[rows, inc] & ~prune[rows, inc]
        # a challenger takes the name by beating the incumbent (policy.evaluate): on the
        # evidence since its entry, at its entry rank's level, when screening
        can = vs_inc & (cnt >= st.min_rollouts_for_best) & active & ~prune
        can[:, 0] = False
        if screening:
            inc_s = s_[rows, inc][:, None] - at_s[rows, :, inc]
            inc_q = q_[rows, inc][:, None] - at_q[rows, :, inc]
            s_inc = own_s - inc_s
            v_inc = np.maximum(own_q + inc_q, 1e-300)
            b_inc = boundary(v_inc, alpha_r[rank], rho, log=np.log)
            can &= rank > 0
        beats_inc = can & (s_inc > b_inc)
        replace = keep & beats_inc.any(1)
        best_beater = np.where(beats_inc, (s_inc - b_inc) / t, -np.inf).argmax(1)
        any_el = eligible.any(1)
        fresh = lower.argmax(1)
        named = np.where(keep, np.where(replace, best_beater, inc), np.where(any_el, fresh, -1))
        incumbent = named
        if best_arm >= 0:
            hit = (named == best_arm) & np.isinf(named_at)
            named_at[hit] = t
        wrong = (named >= 0) & ~better[np.maximum(named, 0)]
        false_at[wrong & np.isinf(false_at)] = t
        if best_arm >= 0:
            archived_winner |= prune[:, best_arm]
        active &= ~prune
        # the reference's floor: the baseline while nothing is named and a challenger is
        # unresolved; then the named best while any other challenger is live
        others = active.copy()
        others[:, 0] = False
        others[rows, np.maximum(named, 0)] = False
        unresolved = np.where(
            named < 0, (active[:, 1:] & ~eligible[:, 1:]).any(1), others.any(1)
        )
    if sc.horizon < 1000:
        regret_1000 = regret
    return {
        "false_at": false_at,
        "named_at": named_at if best_arm >= 0 else np.zeros(0),
        "winner_archived": archived_winner,
        "regret": regret_1000,
    }


def simulate_alternative(
    sc: Scenario, seeds: int, name: str, rng_seed: int, eps: float = 0.1
) -> float:
    """Mean regret at 1,000 rollouts (or the horizon) of a routing without our evidence:
    plain Thompson sampling (frozen per epoch as ours), uniform, epsilon-greedy."""
    rng = np.random.default_rng(rng_seed)
    base = np.asarray(sc.rates)
    k = len(base)
    rows = np.arange(seeds)
    succ = np.zeros((seeds, k))
    cnt = np.zeros((seeds, k))
    regret = np.zeros(seeds)
    active = np.ones((seeds, k), dtype=bool)
    weights = None
    epoch_at = 0
    horizon = min(1000, sc.horizon)
    for t in range(1, horizon + 1):
        if name == "plain thompson":
            if weights is None or (t - 1) - epoch_at >= epoch_length(epoch_at):
                weights = _pbest_mc(rng, succ, cnt, active)
                epoch_at = t - 1
            cum = weights.cumsum(1)
            arm = np.minimum((rng.random(seeds)[:, None] >= cum).sum(1), k - 1)
        elif name == "uniform":
            arm = rng.integers(k, size=seeds)
        else:
            mean = (
                np.where(cnt > 0, succ / np.maximum(cnt, 1), np.inf) + rng.random((seeds, k)) * 1e-9
            )
            arm = np.where(rng.random(seeds) < eps, rng.integers(k, size=seeds), mean.argmax(1))
        shift = sc.drift(t, sc.horizon) if sc.drift else 0.0
        rate = np.clip(base + shift, 0.01, 0.99)
        served = rate[arm]
        y = rng.random(seeds) < served
        regret += rate.max() - served
        cnt[rows, arm] += 1
        succ[rows, arm] += y
    return float(regret.mean())


def _rate_by(arr: np.ndarray, h: int) -> float:
    return float((arr <= h).mean()) if arr.size else float("nan")


def _wilson_hi(p: float, n: int) -> float:
    z = 1.96
    den = 1 + z * z / n
    c = p + z * z / (2 * n)
    r = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (c + r) / den


def main() -> None:
    """Run every scenario and print (and optionally write) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=500, help="seeds per scenario with a winner")
    ap.add_argument("--null-seeds", type=int, default=2000, help="seeds per null scenario")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="run only scenarios whose title contains this")
    ap.add_argument("--routing", default=",".join(ROUTINGS), help="our routings to run")
    ap.add_argument(
        "--write", action="store_true", help="update the Selection section of BENCHMARKS.md"
    )
    ap.add_argument("--baseline-floor", type=float, default=None, help="override (exploration)")
    ap.add_argument("--rho-rewards", type=float, default=None, help="override (exploration)")
    ap.add_argument("--screen", type=float, default=None, help="override (exploration; 0: off)")
    args = ap.parse_args()
    routings = [r for r in args.routing.split(",") if r]
    if args.write and (
        args.only
        or args.routing != ",".join(ROUTINGS)
        or args.baseline_floor is not None
        or args.rho_rewards is not None
        or args.screen is not None
    ):
        ap.error("--write publishes the standard run only")
    st = PolicySettings()
    if args.baseline_floor is not None:
        st = dataclasses.replace(st, baseline_floor=args.baseline_floor)
    if args.rho_rewards is not None:
        st = dataclasses.replace(st, rho_rewards=args.rho_rewards)
    if args.screen is not None:
        st = dataclasses.replace(st, screen_probability=args.screen)
    t0 = time.perf_counter()
    head = (
        "| scenario | routing | seeds | false promotion (worst horizon) | named by 600 / 2,000 / 8,000 "
        "| median rollouts to name | winner archived | regret @1,000 (vs plain TS) |"
    )
    lines = [
        "## Selection",
        "",
        "Promotion and routing on simulated sessions with known success rates (Bernoulli",
        "rewards; the first rate is the baseline's), every decision taken after every reward",
        "with the engine's own functions (`benchmarks/selection.py` doc). Defaults:",
        f"`promotion_confidence` {st.promotion_confidence} (family-wise, anytime-valid),",
        f"`min_rollouts_for_best` {st.min_rollouts_for_best}, baseline floor {st.baseline_floor},",
        f"routing floor {st.routing_floor}. One run:",
        "",
        "```sh",
        f".venv/bin/python benchmarks/selection.py --seeds {args.seeds} --null-seeds {args.null_seeds} --write",
        "```",
        "",
        "False promotion: share of seeds in which a candidate not truly better than the",
        "baseline was named at any point up to the horizon (all horizons up to it included:",
        "the share can only grow with the horizon, so this is the worst), with the upper end of",
        "its 95% Wilson interval. Named by N: share of seeds whose truly best candidate was",
        "named within N rollouts. Regret: expected cumulative regret at 1,000 rollouts (the",
        "horizon when shorter), ours and, in brackets, its ratio to plain Thompson sampling on",
        "the same rates (no floors, no evidence).",
        "",
        f"Measured on {machine()}.",
        "",
        head,
        "| " + " | ".join(["---"] * 8) + " |",
    ]
    print("\n".join(lines[-2:]), flush=True)
    alt_lines = [
        "",
        "| scenario | plain thompson | uniform | epsilon-greedy (0.1) |",
        "| --- | --- | --- | --- |",
    ]
    for si, sc in enumerate(scenarios()):
        if args.only not in sc.title:
            continue
        seeds = args.null_seeds if sc.null else args.seeds
        alt = {
            name: simulate_alternative(sc, seeds, name, args.seed + 7919 * si + 13 * j)
            for j, name in enumerate(ALTERNATIVES)
        }
        alt_lines.append(
            f"| {sc.title} | " + " | ".join(f"{alt[n]:.1f}" for n in ALTERNATIVES) + " |"
        )
        for ri, routing in enumerate(routings):
            r = simulate(sc, seeds, routing, args.seed + 7919 * si + 101 * ri, st)
            fp = float(np.isfinite(r["false_at"]).mean())
            fp_txt = f"{fp:.3f} (<= {_wilson_hi(fp, seeds):.3f}) @{sc.horizon:,}"
            if r["named_at"].size:
                named = " / ".join(f"{_rate_by(r['named_at'], h):.2f}" for h in (600, 2000, 8000))
                med = float(np.median(r["named_at"]))
                med_txt = f"{med:,.0f}" if math.isfinite(med) else f"> {sc.horizon:,}"
                arch = f"{float(r['winner_archived'].mean()):.3f}"
            else:
                named, med_txt, arch = "-", "-", "-"
            reg = float(r["regret"].mean())
            if alt["plain thompson"] > 0:
                reg_txt = f"{reg:.1f} ({reg / alt['plain thompson']:.2f}x)"
            else:  # every arm is as good as the others: no regret to compare
                reg_txt = f"{reg:.1f}"
            row = (
                f"| {sc.title} | {routing} | {seeds} | {fp_txt} | {named} | {med_txt} | {arch} "
                f"| {reg_txt} |"
            )
            lines.append(row)
            print(row, flush=True)
    lines += alt_lines
    lines.append("")
    lines.append(f"Run time: {time.perf_counter() - t0:.0f} s.")
    lines.append("")
    text = "\n".join(lines)
    print("\n".join(alt_lines))
    print(f"Run time: {time.perf_counter() - t0:.0f} s.")
    if args.write:
        _write_section(ROOT / "BENCHMARKS.md", text)


def _write_section(path: Path, section: str) -> None:
    """Replace the generated part of the ``## Selection`` section (up to its "Run
    time" line) and keep the hand-written reading after it; append the section if
    there is none. Other sections are left alone."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    generated = re.compile(r"^## Selection\n.*?^Run time: [^\n]*\n", re.S | re.M)
    whole = re.compile(r"^## Selection\n.*?(?=^## |\Z)", re.S | re.M)
    if generated.search(current):
        new = generated.sub(lambda _: section.rstrip() + "\n", current, count=1)
    elif whole.search(current):
        new = whole.sub(lambda _: section.rstrip() + "\n\n", current, count=1)
    else:
        new = current.rstrip() + "\n\n" + section
    path.write_text(new.rstrip() + "\n")


if __name__ == "__main__":
    main()
