"""Numbers and pictures for the classification demos: paired accuracy differences with a
95% confidence interval, a text table, and the run's plot (online curves beside the
held-out result)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PairedDiff", "format_table", "paired_diff", "plot_rollouts", "wilson"]

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class PairedDiff:
    """``b - a`` over the same items: mean, 95% CI (normal approximation of the paired
    differences), and how many items only ``a`` / only ``b`` got right."""

    n: int
    a: float
    b: float
    diff: float
    low: float
    high: float
    only_a: int
    only_b: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "n": self.n,
            "baseline": self.a,
            "candidate": self.b,
            "diff": self.diff,
            "ci95": [self.low, self.high],
            "only_baseline_right": self.only_a,
            "only_candidate_right": self.only_b,
        }


def paired_diff(a: Sequence[float], b: Sequence[float]) -> PairedDiff:
    """The paired difference ``mean(b) - mean(a)`` with its 95% CI."""
    if len(a) != len(b) or not a:
        raise ValueError("need two non-empty sequences of the same length")
    n = len(a)
    d = [y - x for x, y in zip(a, b, strict=True)]
    mean = math.fsum(d) / n
    var = math.fsum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    return PairedDiff(
        n=n,
        a=math.fsum(a) / n,
        b=math.fsum(b) / n,
        diff=mean,
        low=mean - half,
        high=mean + half,
        only_a=sum(1 for x, y in zip(a, b, strict=True) if x > y),
        only_b=sum(1 for x, y in zip(a, b, strict=True) if y > x),
    )


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (centre - half, centre + half)


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain fixed-width table."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def plot_rollouts(
    rollouts: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
    path: Path,
    *,
    title: str,
    proposals: Sequence[Mapping[str, Any]] = (),
    promotions: Sequence[Mapping[str, Any]] = (),
    evaluation: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path | None:
    """The run in one picture; ``None`` without matplotlib.

    Left: reward over rollouts per candidate (running mean of each candidate's
    rewards at the rollouts it served; the baseline's line is carried on, dotted,
    past its last served rollout, so a starved baseline stays visible), a moving
    average of all rewards, each proposal marked and labelled (``P1``...) where
    it appeared and each change of the named best (``named: ...``). Right: the
    held-out test accuracy (95% CI) of the baseline and of the named best, with
    the paired difference, from ``evaluation`` (the results' ``evaluation.test``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    held_out = dict(evaluation or {})
    fig, (ax, side) = plt.subplots(
        1,
        2,
        figsize=(13, 6.6),
        dpi=110,
        gridspec_kw={"width_ratios": [4.2, 1.0]},
    )
    per: dict[str, tuple[list[int], list[float]]] = {}
    sums: dict[str, tuple[float, int]] = {}
    overall: list[float] = []
    for i, r in enumerate(rollouts):
        reward = r.get("reward")
        if reward is None:
            continue
        overall.append(float(reward))
        cid = str(r.get("candidate_id") or "?")
        total, count = sums.get(cid, (0.0, 0))
        total, count = total + float(reward), count + 1
        sums[cid] = (total, count)
        xs, ys = per.setdefault(cid, ([], []))
        xs.append(i + 1)
        ys.append(total / count)
    colors = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
    small = len(rollouts) > 200
    end = max(1, len(rollouts))
    others = 0
    color_of: dict[str, Any] = {}

    def order(item: tuple[str, Any]) -> tuple[int, int, str]:
        name = names.get(item[0], item[0])
        number = name.rsplit(" ", 1)[-1]
        return (name != "baseline", int(number) if number.isdigit() else 10**9, name)

    for cid, (xs, ys) in sorted(per.items(), key=order):
        name = names.get(cid, cid)
        label = f"{name} (online n={len(xs)}, mean {ys[-1]:.2f})"
        if name == "baseline":
            style: dict[str, Any] = {"color": "black", "linewidth": 2.0, "zorder": 3}
        else:
            style = {"color": colors[others % len(colors)], "linewidth": 1.2}
            others += 1
        color_of[cid] = style["color"]
        marker = None if small else "o"
        ax.plot(xs, ys, marker=marker, markersize=2.5, label=label, **style)
        if name == "baseline" and xs[-1] < end:
            ax.plot(
                [xs[-1], end],
                [ys[-1], ys[-1]],
                color="black",
                linewidth=1.4,
                linestyle=":",
                zorder=3,
                label=f"baseline, not served after rollout {xs[-1]}",
            )
    if overall:
        window = max(5, len(overall) // 10)
        moving = [
            math.fsum(overall[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(overall))
        ]
        ax.plot(
            range(1, len(moving) + 1),
            moving,
            color="grey",
            linewidth=1.0,
            alpha=0.6,
            linestyle="--",
            label=f"all rollouts, moving mean ({window})",
        )
    for k, p in enumerate(proposals, start=1):
        at = p.get("after_rollouts")
        if isinstance(at, int):
            ax.axvline(at, color="grey", alpha=0.3, linewidth=0.8)
            ax.annotate(
                f"P{k}",
                (at, 1.0),
                xytext=(2, -2 - 9 * ((k - 1) % 3)),
                textcoords="offset points",
                fontsize=6.5,
                color="dimgrey",
                va="top",
            )
    for k, p in enumerate(promotions):
        at = p.get("after_rollouts")
        if isinstance(at, int):
            ax.axvline(at, color="tab:green", alpha=0.7, linewidth=1.2, linestyle="-.")
            ax.annotate(
                "back to the baseline"
                if str(p.get("action", "")).startswith("rolled back")
                else f"named: {p.get('name')}",
                (at, 0.02 + 0.3 * (k % 3)),
                xytext=(3, 2),
                textcoords="offset points",
                fontsize=7,
                color="tab:green",
                rotation=90,
                va="bottom",
            )
    ax.set_xlabel("rollout (P1, P2...: proposals; green: the backend names a best)")
    ax.set_ylabel("online reward (running mean per candidate)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, end + 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.2)
    ax.legend(
        fontsize=6.5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=3,
        frameon=False,
    )

    _plot_held_out(side, held_out, color_of)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_held_out(
    ax: Any, held_out: Mapping[str, Mapping[str, Any]], colors: Mapping[str, Any]
) -> None:
    ax.set_title("held-out test accuracy\n(95% CI)", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.2, axis="y")
    if not held_out:
        ax.text(0.5, 0.5, "no held-out\nevaluation", ha="center", va="center", fontsize=8)
        ax.set_xticks([])
        return
    labels = list(held_out)
    for i, label in enumerate(labels):
        e = held_out[label]
        acc = float(e["accuracy"])
        lo, hi = e.get("accuracy_ci95") or (acc, acc)
        color = (
            "black" if label == "baseline" else colors.get(str(e.get("candidate_id")), "tab:blue")
        )
        ax.errorbar(
            [i],
            [acc],
            yerr=[[acc - lo], [hi - acc]],
            fmt="o",
            color=color,
            capsize=5,
            markersize=6,
        )
        ax.annotate(f"{acc:.3f}", (i, acc), xytext=(8, -3), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7.5)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    best = held_out.get("named best")
    n = held_out["baseline"].get("n")
    if best is not None and best.get("vs_baseline"):
        d = best["vs_baseline"]
        lo, hi = d["ci95"]
        text = f"n={n}\ndiff {100 * d['diff']:+.1f} pts\n95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    else:
        text = f"n={n}\nno candidate named:\nthe baseline is kept"
    ax.text(0.5, 0.03, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=7)
