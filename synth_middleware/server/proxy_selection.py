"""Which candidate the proxy serves: Thompson sampling prepared per state change.

Per session, :class:`CandidateChooser` keeps the parsed active candidates and
a :class:`~synth_middleware.client.selection.Categorical` over the
probability that each one is best (the same selection the client middleware
uses). It is rebuilt when the session's version changes, checked at most
every ``refresh_interval`` seconds under load (and every
``recheck_interval`` when idle, to see writes of other processes), so a
request costs one draw, not a posterior computation.

A running session explores (Thompson); a paused, cancelled or completed one
serves its best candidate. The calls of one rollout id all get the same
candidate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cachetools

from synth_middleware._logonce import LogOnce
from synth_middleware.client.candidates import Candidate, parse_candidate
from synth_middleware.client.selection import Categorical, routing_from_state
from synth_middleware.engine import Engine
from synth_middleware.errors import CandidateError
from synth_middleware.server.feed import ChangeFeed
from synth_middleware.wire import SessionState

logger = logging.getLogger("synth_middleware.server")


@dataclass(slots=True)
class SessionChoice:
    """One session's serving snapshot."""

    session_id: str
    version: int
    status: str
    baseline_id: str | None
    baseline: Candidate | None
    baseline_text: str | None
    candidates: dict[str, Candidate]
    explore: Categorical | None
    best: Candidate | None
    hint: int = 0
    checked_at: float = 0.0


class CandidateChooser:
    """Per-session serving snapshots, refreshed on state changes, not per request."""

    def __init__(
        self,
        engine: Engine,
        feed: ChangeFeed,
        sticky: cachetools.LRUCache[str, tuple[str, str | None]],
        *,
        refresh_interval: float = 0.25,
        recheck_interval: float = 1.0,
    ) -> None:
        self._engine = engine
        self._feed = feed
        self._sticky = sticky
        self._refresh = refresh_interval
        self._recheck = recheck_interval
        self._cache: dict[str, SessionChoice] = {}
        self._logged = LogOnce(logger)  # one line per malformed candidate, not per rebuild
        self.rebuilds = 0

    def current(self, session_id: str) -> SessionChoice:
        """The session's snapshot (raises ``NotFoundError`` for an unknown session)."""
        now = time.monotonic()
        choice = self._cache.get(session_id)
        hint = self._feed.hint(session_id)
        if choice is not None:
            age = now - choice.checked_at
            if (choice.hint == hint and age < self._recheck) or age < self._refresh:
                return choice
        state = self._engine.get_state(session_id)
        if choice is None or state["version"] != choice.version:
            choice = self._build(state)
            self._cache[session_id] = choice
            self.rebuilds += 1
        choice.hint = hint
        choice.checked_at = now
        return choice

    def invalidate(self, session_id: str) -> None:
        """Forget a session's snapshot (the next request rebuilds it)."""
        self._cache.pop(session_id, None)

    def _build(self, state: SessionState) -> SessionChoice:
        sid = state["session_id"]
        page = self._engine.list_candidates(sid, status="active", limit=1000)
        stats: dict[str, Mapping[str, Any]] = {c["candidate_id"]: c for c in state["candidates"]}
        parsed: dict[str, Candidate] = {}
        baseline_id = state.get("baseline_candidate_id")
        baseline_text: str | None = None
        for item in page["items"]:
            if item.get("candidate_id") == baseline_id:
                baseline_text = item.get("candidate_content")
            try:
                cand = parse_candidate(item)
            except CandidateError as exc:
                cid = str(item.get("candidate_id"))
                if not item.get("is_baseline"):
                    self._logged.warning(cid, "proxy: skipping candidate %s: %s", cid, exc)
                continue
            parsed[cand.candidate_id] = cand
        ids = list(parsed)
        explore = None
        if ids:
            explore = Categorical(
                [parsed[cid] for cid in ids], routing_from_state(state, ids, stats)
            )
        baseline = parsed.get(baseline_id) if baseline_id else None
        best_id = state.get("best_candidate_id")
        best = parsed.get(best_id) if best_id else None
        return SessionChoice(
            session_id=sid,
            version=state["version"],
            status=state["status"],
            baseline_id=baseline_id,
            baseline=baseline,
            baseline_text=baseline_text,
            candidates=parsed,
            explore=explore,
            best=best or baseline,
        )

    def choose(self, choice: SessionChoice, rollout_id: str | None) -> Candidate | None:
        """The candidate for one call (``None``: send the app's messages unchanged)."""
        if rollout_id is not None:
            seen = self._sticky.get(rollout_id)
            if seen is not None and seen[0] == choice.session_id:
                if seen[1] is None:
                    return None
                cand = choice.candidates.get(seen[1])
                if cand is not None:
                    return cand
        if choice.status == "running" and choice.explore is not None:
            return choice.explore.draw()  # type: ignore[no-any-return]
        return choice.best
