"""Selection policies side by side on simulations with known ground truth.

Each scenario is a set of candidates with known success rates (Bernoulli
rewards); the first is the baseline. The four named scenarios are fixed; the
held-out ones draw every seed's rates from a Beta distribution (the same draws
for every strategy) and were not used to choose the routing rule. Every
strategy serves the same number of rollouts, over many seeds, vectorised with
numpy:

* ``uniform``: uniform random routing (what the hosted online GEPA demo does),
  names the highest observed mean;
* ``epsilon-greedy``: 10% uniform, else the highest mean (each arm once first),
  names the highest mean;
* ``greedy``: the highest observed mean (each arm once first), names it;
* ``ours (thompson)``: the client's default routing, Thompson sampling. At
  each refresh (every ``--refresh`` rollouts, as the client's cache does; the
  alternatives above are *not* frozen, they see every reward at once) the
  routing posteriors come from the real
  :func:`synth_middleware._posterior.routing_posteriors_from_rows`, per seed,
  over the candidates the policy keeps; each rollout then takes one numpy
  Thompson draw from them, which serves each candidate with exactly its routing
  P(best) (the client computes that P(best) on a grid and draws from it). The
  engine's pruning rules (worse than the leader with P >= 0.95 after 20
  rewards; retired when P(best) < 1% after 5) are applied at each refresh on
  the sound posteriors, vectorised here with Monte Carlo probabilities (the
  engine's default ``online_prune_margin`` of 0.01 is not modelled). It names
  the best with the engine's real policy
  (:func:`synth_middleware.engine.policy.evaluate`: promotion needs >= 20
  rewards and P(beats baseline) >= 0.9, Bonferroni over contenders, else the
  baseline);
* ``ours (sharpened x6)``: the opt-in routing (``online_routing_sharpness`` =
  ``SHARPENED_ROUTING``): the same, on posteriors with the prior centred on the
  pooled mean and the variance divided by 6; same pruning and naming;
* ``ours (top-two)``: top-two Thompson routing on the sound posterior, for
  identification, same naming.

Metrics at budgets of 100, 300 and 1000 rollouts: cumulative (expected) regret
``sum_t (best rate - rate served)``, the probability of naming the truly best
candidate, and the probability of naming a candidate worse than the baseline
("false promotion"). For ours, also the unguarded name (highest P(best)).

    .venv/bin/python benchmarks/selection.py               # prints the tables
    .venv/bin/python benchmarks/selection.py --write       # also updates BENCHMARKS.md

``--frozen-alternatives`` freezes epsilon-greedy and greedy like ours (their
choice of leader is recomputed only at each refresh) for a side measurement.
``--ids`` adds two evaluated, not adopted, routings (:mod:`_ids_routing`):
``ours (ids)``, information-directed sampling on the routing posterior, and
``ours (ids batch)``, its batch variant for the frozen posterior; same pruning
and naming as ours. ``--guard-alternatives`` also names the alternatives' best
with our guard (the engine's pruning and naming over the evidence their routing
gathered), printed as ``[g ...]`` after their own P(correct) and false
promotion: which routing gathers the evidence a guarded name needs, apart from
how it names.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

from synth_middleware._posterior import (  # noqa: E402
    DEFAULT_ROUTING_SHARPNESS,
    SHARPENED_ROUTING,
    routing_posteriors_from_rows,
)
from synth_middleware.engine.policy import PolicySettings, evaluate  # noqa: E402

BUDGETS = (100, 300, 1000)
SCENARIOS: dict[str, list[float]] = {
    # The published online GEPA Banking77 figures: baseline ~0.44, children 0.57 and 0.50.
    "banking77-like": [0.44, 0.41, 0.57, 0.50, 0.30, 0.52],
    "close race": [0.50, 0.52, 0.55, 0.48, 0.53],
    "baseline is best": [0.60, 0.50, 0.45, 0.52, 0.40],
    "ten candidates": [0.50, 0.30, 0.35, 0.40, 0.45, 0.48, 0.52, 0.55, 0.58, 0.66],
}
# Rates drawn per seed: Beta(a, b) for each of k candidates (held out from tuning).
HELD_OUT: dict[str, tuple[float, float, int]] = {
    "random rates": (2.0, 2.0, 6),
    "random high rates": (8.0, 2.0, 8),
    "random low rates": (1.0, 9.0, 5),
}
# ours, routed on the real routing posteriors: the default, and the opt-in sharpened one
ROUTING_SHARPNESS = {
    "ours (thompson)": DEFAULT_ROUTING_SHARPNESS,
    f"ours (sharpened x{SHARPENED_ROUTING:g})": SHARPENED_ROUTING,
}
STRATEGIES: tuple[str, ...] = (
    "uniform",
    "epsilon-greedy",
    "greedy",
    *ROUTING_SHARPNESS,
    "ours (top-two)",
)
IDS_STRATEGIES = ("ours (ids)", "ours (ids batch)")  # --ids: evaluated, not adopted


@dataclass
class _Cand:
    candidate_id: str
    reward_count: int
    mean: float
    m2: float
    status: str = "active"
    is_baseline: bool = False


def _prune(
    rng: np.random.Generator,
    succ: np.ndarray,
    cnt: np.ndarray,
    active: np.ndarray,
    settings: PolicySettings,
    draws: int = 256,
) -> None:
    """Apply the policy's pruning and retiring to ``active`` in place (Monte Carlo P's)."""
    s, k = cnt.shape
    a, b = 1.0 + succ, 1.0 + cnt - succ
    x = rng.beta(a[None], b[None], size=(draws, s, k))
    x = np.where(active[None], x, -1.0)
    lead = x.argmax(2)
    pbest = np.stack([(lead == j).mean(0) for j in range(k)], 1)
    leader = pbest.argmax(1)
    lv = x[:, np.arange(s), leader]
    p_worse = (lv[:, :, None] > x).mean(0)
    retire = (pbest < settings.dormant_probability) & (cnt >= settings.retire_min_rollouts)
    prune = (cnt >= settings.prune_min_rollouts) & (p_worse >= settings.prune_confidence)
    kill = retire | prune
    kill[:, 0] = False  # never the baseline
    kill[np.arange(s), leader] = False  # never the leader
    active &= ~kill


def _routing_params(
    succ: np.ndarray, cnt: np.ndarray, active: np.ndarray, sharpness: float
) -> tuple[np.ndarray, np.ndarray]:
    """Beta parameters of the routing posteriors, per seed, from the real
    :func:`routing_posteriors_from_rows` over the active candidates (archived
    ones get a placeholder; routing masks them out)."""
    a, b = np.ones_like(cnt), np.ones_like(cnt)
    for i in range(cnt.shape[0]):
        js = np.flatnonzero(active[i])
        rows = [(int(cnt[i, j]), succ[i, j] / cnt[i, j] if cnt[i, j] else 0.0, 0.0) for j in js]
        posts = routing_posteriors_from_rows(rows, bounded=True, sharpness=sharpness)
        for j, post in zip(js, posts, strict=True):
            a[i, j], b[i, j] = post.a, post.b
    return a, b


def _route(
    name: str,
    rng: np.random.Generator,
    succ: np.ndarray,
    cnt: np.ndarray,
    frozen: tuple[np.ndarray, np.ndarray] | None,
    eps: float,
    active: np.ndarray,
) -> np.ndarray:
    """The arm each seed serves next (shape ``[S]``). ``frozen``: the routing
    posterior's Beta parameters for ours, the observed means for frozen greedy."""
    s, k = cnt.shape
    rows = np.arange(s)
    if name == "uniform":
        return rng.integers(k, size=s)
    if name in ("epsilon-greedy", "greedy"):
        if frozen is not None:  # --frozen-alternatives: the means as of the last refresh
            mean = frozen[0]
        else:
            mean = np.where(cnt > 0, succ / np.maximum(cnt, 1), np.inf)  # each arm once first
        mean = mean + rng.random((s, k)) * 1e-9  # random tie-break
        arm = mean.argmax(1)
        if name == "epsilon-greedy":
            explore = rng.random(s) < eps
            arm = np.where(explore, rng.integers(k, size=s), arm)
        return arm
    assert frozen is not None
    a, b = frozen

    def thompson() -> np.ndarray:
        return np.where(active, rng.beta(a, b), -1.0).argmax(1)

    if name in IDS_STRATEGIES:  # a categorical draw from the frozen IDS weights
        u = rng.random(s)[:, None] * a[:, -1:]
        return np.minimum((u >= a).sum(1), k - 1)
    leader = thompson()
    if name in ROUTING_SHARPNESS:
        return leader
    # top-two: with prob 1/2 the leader, else resample until a different arm leads
    challenger = leader.copy()
    pending = np.ones(s, dtype=bool)
    for _ in range(30):
        draw = thompson()
        take = pending & (draw != leader)
        challenger[take] = draw[take]
        pending &= ~take
        if not pending.any():
            break
    use_leader = rng.random(s) < 0.5
    return np.where(use_leader | pending, leader, challenger)[rows]


def _name_greedy(succ: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    mean = np.where(cnt > 0, succ / np.maximum(cnt, 1), -np.inf)
    return mean.argmax(1)


def _name_ours(
    succ: np.ndarray, cnt: np.ndarray, settings: PolicySettings, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(guarded name, highest-P(best) name) per seed, with the engine's real policy
    over the candidates still active."""
    s, k = cnt.shape
    guarded = np.zeros(s, dtype=int)
    leader = np.zeros(s, dtype=int)
    for i in range(s):
        cands = []
        for j in range(k):
            n = int(cnt[i, j])
            m = float(succ[i, j]) / n if n else 0.0
            status = "active" if active[i, j] else "archived"
            cands.append(_Cand(str(j), n, m, n * m * (1 - m), status, is_baseline=j == 0))
        d = evaluate(cands, "0", settings, bounded=True)
        guarded[i] = int(d.best_id or 0)
        leader[i] = int(d.leader_id or 0)
    return guarded, leader


def scenario_rates(spec: list[float] | tuple[float, float, int], seeds: int) -> np.ndarray:
    """Each seed's true rates (shape ``[S, k]``): a fixed list, or drawn from
    ``Beta(a, b)`` per seed for a held-out ``(a, b, k)`` (the same draws for every
    strategy)."""
    if isinstance(spec, tuple):
        a, b, k = spec
        return np.random.default_rng(12345).beta(a, b, size=(seeds, int(k)))
    return np.tile(np.asarray(spec, dtype=float), (seeds, 1))


def run_scenario(
    rates: list[float] | tuple[float, float, int],
    seeds: int,
    refresh: int,
    eps: float,
    rng_seed: int,
    frozen_alternatives: bool = False,
    strategies: tuple[str, ...] = STRATEGIES,
    guard_alternatives: bool = False,
) -> dict[str, dict[int, dict[str, float]]]:
    """``{strategy: {budget: {regret, correct, false_promotion[, correct_unguarded]}}}``."""
    mu = scenario_rates(rates, seeds)
    k = mu.shape[1]
    rows = np.arange(seeds)
    best = mu.argmax(1)
    best_rate = mu[rows, best]
    settings = PolicySettings()
    out: dict[str, dict[int, dict[str, float]]] = {}
    for si, name in enumerate(strategies):
        rng = np.random.default_rng(rng_seed + 1000 * si)
        succ = np.zeros((seeds, k))
        cnt = np.zeros((seeds, k))
        regret = np.zeros(seeds)
        frozen = None
        active = np.ones((seeds, k), dtype=bool)
        out[name] = {}
        for t in range(1, max(BUDGETS) + 1):
            if (t - 1) % refresh == 0:
                if name.startswith("ours"):
                    _prune(rng, succ, cnt, active, settings)
                if name in ROUTING_SHARPNESS:
                    frozen = _routing_params(succ, cnt, active, ROUTING_SHARPNESS[name])
                elif name == "ours (top-two)":
                    frozen = (1.0 + succ, 1.0 + cnt - succ)  # the sound posterior
                elif name in IDS_STRATEGIES:
                    from _ids_routing import ids_batch_weights, ids_weights_grid

                    ra, rb = _routing_params(succ, cnt, active, DEFAULT_ROUTING_SHARPNESS)
                    if name == "ours (ids batch)":
                        w = ids_batch_weights(ra, rb, active, refresh, 1.0)
                    else:
                        w = ids_weights_grid(ra, rb, active)
                    frozen = (np.cumsum(w, 1), w)
                elif frozen_alternatives and name in ("epsilon-greedy", "greedy"):
                    mean = np.where(cnt > 0, succ / np.maximum(cnt, 1), np.inf)
                    frozen = (mean, mean)
            arm = _route(name, rng, succ, cnt, frozen, eps, active)
            served = mu[rows, arm]
            reward = rng.random(seeds) < served
            cnt[rows, arm] += 1
            succ[rows, arm] += reward
            regret += best_rate - served
            if t in BUDGETS:
                row: dict[str, float] = {"regret": float(regret.mean())}
                if name.startswith("ours"):
                    named, lead = _name_ours(succ, cnt, settings, active)
                    row["correct_unguarded"] = float((lead == best).mean())
                else:
                    named = _name_greedy(succ, cnt)
                    if guard_alternatives:
                        # the engine's policy on their evidence: its pruning rules, then
                        # its guarded name (their routing is not changed by either)
                        kept = np.ones_like(active)
                        _prune(np.random.default_rng(rng_seed + t), succ, cnt, kept, settings)
                        guarded, _ = _name_ours(succ, cnt, settings, kept)
                        row["correct_guarded"] = float((guarded == best).mean())
                        worse = mu[rows, guarded] < mu[:, 0]
                        row["false_promotion_guarded"] = float(worse.mean())
                row["correct"] = float((named == best).mean())
                row["false_promotion"] = float((mu[rows, named] < mu[:, 0]).mean())
                out[name][t] = row
    return out


def _table(results: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    head = "| strategy | " + " | ".join(f"regret @{b}" for b in BUDGETS)
    head += " | " + " | ".join(f"P(correct) @{b}" for b in BUDGETS)
    head += " | " + " | ".join(f"false promo @{b}" for b in BUDGETS) + " |"
    lines = [head, "| " + " | ".join(["---"] * (1 + 3 * len(BUDGETS))) + " |"]
    for name, by_budget in results.items():
        cells = [f"{by_budget[b]['regret']:.1f}" for b in BUDGETS]
        for b in BUDGETS:
            c = f"{by_budget[b]['correct']:.3f}"
            if "correct_unguarded" in by_budget[b]:
                c += f" ({by_budget[b]['correct_unguarded']:.3f})"
            if "correct_guarded" in by_budget[b]:
                c += f" [g {by_budget[b]['correct_guarded']:.3f}]"
            cells.append(c)
        for b in BUDGETS:
            c = f"{by_budget[b]['false_promotion']:.3f}"
            if "false_promotion_guarded" in by_budget[b]:
                c += f" [g {by_budget[b]['false_promotion_guarded']:.3f}]"
            cells.append(c)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _verdict(results: dict[str, dict[int, dict[str, float]]]) -> str:
    ours = [n for n in results if n.startswith("ours")]
    others = [n for n in results if not n.startswith("ours")]
    notes = []
    for o in ours:
        wins_r = all(
            results[o][b]["regret"] < results[x][b]["regret"] for b in BUDGETS for x in others
        )
        wins_c = all(
            results[o][b]["correct"] > results[x][b]["correct"] for b in BUDGETS for x in others
        )
        notes.append(
            f"{o}: lower regret than every alternative at every budget: "
            f"{'yes' if wins_r else 'no'}; higher P(correct): {'yes' if wins_c else 'no'}"
        )
    return "; ".join(notes)


def main() -> None:
    """Run every scenario and print (and optionally write) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2000)
    ap.add_argument("--refresh", type=int, default=10, help="rollouts between posterior refreshes")
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--write", action="store_true", help="update the Selection section of BENCHMARKS.md"
    )
    ap.add_argument(
        "--frozen-alternatives",
        action="store_true",
        help="freeze epsilon-greedy and greedy between refreshes too (side measurement)",
    )
    ap.add_argument("--only", default="", help="run only scenarios whose title contains this")
    ap.add_argument(
        "--ids", action="store_true", help="add the evaluated IDS routings (side measurement)"
    )
    ap.add_argument(
        "--guard-alternatives",
        action="store_true",
        help="also name the alternatives' best with our guard (side measurement)",
    )
    args = ap.parse_args()
    strategies = STRATEGIES + (IDS_STRATEGIES if args.ids else ())
    if args.write and (
        args.frozen_alternatives or args.only or args.ids or args.guard_alternatives
    ):
        ap.error("--write publishes the standard run only")
    t0 = time.perf_counter()
    lines = [
        "## Selection",
        "",
        "Routing and naming policies side by side on simulated candidates with known",
        "success rates (Bernoulli rewards; the first rate is the baseline's), "
        f"{args.seeds} seeds per scenario, in one run:",
        "",
        "```sh",
        f".venv/bin/python benchmarks/selection.py --seeds {args.seeds} --write",
        "```",
        "",
        "Regret is the expected cumulative regret (sum over rollouts of best rate minus",
        "served rate). P(correct) is the probability of naming the truly best candidate at",
        "that budget; for ours, the guarded name the engine publishes (promotion needs 20",
        "rewards and P(beats baseline) >= 0.9, Bonferroni over contenders, else the",
        "baseline), and in brackets the unguarded highest-P(best) name. False promo is the",
        "probability of naming a candidate worse than the baseline. Ours (thompson) is the",
        "default routing; ours (sharpened) the opt-in `online_routing_sharpness` =",
        f"{SHARPENED_ROUTING:g} (variance / {SHARPENED_ROUTING:g}, prior centred on the pooled mean). "
        "Ours routes on a",
        f"posterior frozen for {args.refresh} rollouts at a time, as the client's cache does;",
        "the alternatives are not frozen (they see every reward at once; see the freeze",
        f"note below). Epsilon-greedy uses epsilon = {args.epsilon}. The sharpness was chosen on",
        "the four named scenarios; the three random ones (rates drawn per seed) are held",
        "out.",
        "",
        f"Measured on {machine()}.",
        "",
    ]
    scenarios: dict[str, list[float] | tuple[float, float, int]] = {**SCENARIOS, **HELD_OUT}
    for title, rates in scenarios.items():
        if args.only not in title:
            continue
        res = run_scenario(
            rates,
            args.seeds,
            args.refresh,
            args.epsilon,
            args.seed,
            args.frozen_alternatives,
            strategies,
            args.guard_alternatives,
        )
        if isinstance(rates, tuple):
            a, b, k = rates
            head = f"**{title}** (held out): {k} candidates, rates drawn per seed from Beta({a:g}, {b:g})"
        else:
            head = f"**{title}**: rates {rates} (best {max(rates)})"
        lines.append(head)
        lines.append("")
        lines += _table(res)
        lines.append("")
        lines.append(f"_{_verdict(res)}._")
        lines.append("")
        print("\n".join(lines[-(len(res) + 6) :]), flush=True)
    lines.append(f"Run time: {time.perf_counter() - t0:.0f} s.")
    lines.append("")
    text = "\n".join(lines)
    print(text)
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
