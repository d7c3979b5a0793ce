"""Numbers and pictures for the Banking77 demo: paired accuracy differences with a 95%
confidence interval, a text table, and the reward-over-rollouts plot."""

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
) -> Path | None:
    """Reward over rollouts per candidate (running mean of each candidate's rewards at the
    rollouts it served) and a moving average of all rewards; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(11, 5.2), dpi=110)
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
    others = 0

    def order(item: tuple[str, Any]) -> tuple[int, int, str]:
        name = names.get(item[0], item[0])
        number = name.rsplit(" ", 1)[-1]
        return (name != "baseline", int(number) if number.isdigit() else 10**9, name)

    for cid, (xs, ys) in sorted(per.items(), key=order):
        name = names.get(cid, cid)
        label = f"{name} (n={len(xs)}, mean {ys[-1]:.2f})"
        if name == "baseline":
            style: dict[str, Any] = {"color": "black", "linewidth": 2.0, "zorder": 3}
        else:
            style = {"color": colors[others % len(colors)], "linewidth": 1.2}
            others += 1
        marker = None if small else "o"
        ax.plot(xs, ys, marker=marker, markersize=2.5, label=label, **style)
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
    for p in proposals:
        at = p.get("after_rollouts")
        if isinstance(at, int):
            ax.axvline(at, color="grey", alpha=0.25, linewidth=0.8)
    ax.set_xlabel("rollout")
    ax.set_ylabel("reward (running mean per candidate)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.2)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
