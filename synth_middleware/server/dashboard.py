"""The dashboard: one static page at ``/`` that draws the API's numbers.

The page holds no data itself (so it is served without a key); its script
reads the authenticated API, with the key the user types (kept in
``sessionStorage``) or passes in the URL fragment (``/#key=...``, never sent to
the server), and refreshes every few seconds. Two read-only routes exist for
it (behind the same key as every other route, left out of the OpenAPI schema):

- ``GET /api/v1/dashboard/sessions``: each session's status and when its last
  rollout arrived (a session nobody sends traffic to shows as idle);
- ``GET /api/v1/dashboard/sessions/{id}``: per candidate the 95% credible
  interval of its mean reward from the posterior the engine decides on (Beta
  for rewards in [0, 1], else the engine's Normal), the reward over time per
  candidate (cumulative mean at the end of each time bucket, over the latest
  rollouts), and the session state with the selection policy's evidence as
  the engine reports it (the page shows it, it decides nothing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import HTMLResponse, Response

from synth_middleware._posterior import Posterior, posteriors_from_stats, prob_below
from synth_middleware.server._responses import json_response
from synth_middleware.server.context import ServerContext, get_context
from synth_middleware.wire import validate_session_id

router = APIRouter(include_in_schema=False)
Ctx = Annotated[ServerContext, Depends(get_context)]

LEVEL = 0.95
"""Coverage of the intervals shown."""
MAX_ROLLOUTS = 5000
"""The reward chart covers at most this many of the latest rollouts."""


@cache
def _page() -> bytes:
    return resources.files("synth_middleware.server").joinpath("static/dashboard.html").read_bytes()


@router.get("/")
async def dashboard() -> HTMLResponse:
    """The dashboard page."""
    return HTMLResponse(
        _page(),
        headers={
            "cache-control": "no-cache",
            "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
        },
    )


def _quantile(post: Posterior, q: float) -> float:
    """The ``q`` quantile of a posterior of the mean reward."""
    if post.kind == "normal":
        # inverse of the normal CDF by bisection on erf (no scipy)
        lo, hi = post.mean - 12 * post.sd, post.mean + 12 * post.sd
    else:
        lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if prob_below(post, mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def credible_intervals(
    candidates: Sequence[Mapping[str, Any]], *, bounded: bool, level: float = LEVEL
) -> dict[str, list[float] | None]:
    """Per candidate id, the equal-tailed ``level`` credible interval of its mean reward
    under the engine's posterior (``None`` before its first reward).

    ``bounded`` (every reward in [0, 1]): Beta with a uniform prior, as the engine
    uses; else the engine's Normal posterior, pooled over the same candidates.
    Active candidates are pooled together (what the policy compares); an archived
    one on its own.
    """
    out: dict[str, list[float] | None] = {}
    active = [c for c in candidates if c.get("status", "active") == "active"]
    groups: list[list[Mapping[str, Any]]] = [active] if active else []
    groups += [[c] for c in candidates if c.get("status", "active") != "active"]
    tail = (1.0 - level) / 2
    for group in groups:
        posts = posteriors_from_stats(group, bounded=bounded)
        for c, post in zip(group, posts, strict=True):
            cid = str(c.get("candidate_id"))
            if not c.get("reward_count"):
                out[cid] = None
                continue
            lo, hi = _quantile(post, tail), _quantile(post, 1.0 - tail)
            out[cid] = [round(lo, 6), round(hi, 6)]
    return out


def reward_series(ctx: ServerContext, session_id: str, buckets: int) -> dict[str, Any]:
    """Reward over time per candidate, over the latest :data:`MAX_ROLLOUTS` rollouts:
    ``buckets`` equal time spans (by reward time), each with the rewards that
    arrived in it, and per candidate the mean in each bucket and the cumulative
    mean at its end (``None`` before the candidate's first reward)."""
    store = ctx.engine.store
    rows = store.recent_rollouts(session_id, MAX_ROLLOUTS)
    cand_of = {r.rollout_id: r.candidate_id for r in rows}
    points: list[tuple[float, str, float]] = []
    for ev in store.reward_events_for(list(cand_of)):
        p = ev.payload
        value = p.get("value")
        rid = p.get("rollout_id")
        cid = p.get("candidate_id") or (cand_of.get(rid) if isinstance(rid, str) else None)
        if cid is None or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        points.append((float(p.get("created_at") or ev.created_at), str(cid), float(value)))
    if not points:
        return {"buckets": [], "candidates": {}, "rewards": 0}
    points.sort()
    t0, t1 = points[0][0], points[-1][0]
    width = max((t1 - t0) / buckets, 1e-9)
    sums: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for t, cid, v in points:
        i = min(int((t - t0) / width), buckets - 1)
        sums.setdefault(cid, [0.0] * buckets)[i] += v
        counts.setdefault(cid, [0] * buckets)[i] += 1
    series: dict[str, Any] = {}
    for cid in sums:
        s, n = sums[cid], counts[cid]
        cum_s, cum_n = 0.0, 0
        mean: list[float | None] = []
        cumulative: list[float | None] = []
        for i in range(buckets):
            cum_s += s[i]
            cum_n += n[i]
            mean.append(round(s[i] / n[i], 6) if n[i] else None)
            cumulative.append(round(cum_s / cum_n, 6) if cum_n else None)
        series[cid] = {"n": n, "mean": mean, "cumulative": cumulative}
    total = [sum(counts[c][i] for c in counts) for i in range(buckets)]
    return {
        "buckets": [
            {"start": t0 + i * width, "end": t0 + (i + 1) * width, "rewards": total[i]}
            for i in range(buckets)
        ],
        "candidates": series,
        "rewards": len(points),
    }


def _last_rollout_at(ctx: ServerContext, session_id: str) -> float | None:
    rows = ctx.engine.store.recent_rollouts(session_id, 1)
    return rows[0].created_at if rows else None


@router.get("/api/v1/dashboard/sessions")
def dashboard_sessions(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> Response:
    """Sessions with their status and the time of their last rollout, newest first."""
    engine = ctx.engine
    items = []
    for sid in list(reversed(engine.session_ids()))[:limit]:
        try:
            state = engine.get_state(sid)
        except Exception:  # a session being written right now: skip it this time
            continue
        items.append(
            {
                "session_id": sid,
                "kind": state.get("kind"),
                "status": state.get("status"),
                "rollout_count": state.get("rollout_count"),
                "reward_count": state.get("reward_count"),
                "best_candidate_id": state.get("best_candidate_id"),
                "best_reward": state.get("best_reward"),
                "last_rollout_at": _last_rollout_at(ctx, sid),
            }
        )
    return json_response({"items": items, "now": time.time()})


@router.get("/api/v1/dashboard/sessions/{session_id}")
def dashboard_session(
    session_id: str, ctx: Ctx, buckets: Annotated[int, Query(ge=1, le=200)] = 30
) -> Response:
    """One session for the page: state (with the policy's evidence), credible intervals,
    reward over time."""
    validate_session_id(session_id)
    ctx.require_session(session_id)
    state: dict[str, Any] = dict(ctx.engine.get_state(session_id))
    rr = state.get("reward_range")
    bounded = not rr or (rr[0] >= 0.0 and rr[1] <= 1.0)
    return json_response(
        {
            "session_id": session_id,
            "state": state,
            "posterior": "beta" if bounded else "normal",
            "level": LEVEL,
            "intervals": credible_intervals(state.get("candidates") or [], bounded=bounded),
            "series": reward_series(ctx, session_id, buckets),
            "last_rollout_at": _last_rollout_at(ctx, session_id),
            "now": time.time(),
        }
    )
