"""One session's state, materialised in memory from its event log.

:class:`SessionStateMachine` is pure: :meth:`~SessionStateMachine.apply` only
reads the event, never the clock, the disk or a random source, so replaying
the same events (from the start, or from a snapshot) always gives the same
state. Validation happens before an event is written (in the engine), so
``apply`` trusts its input and stays cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synth_middleware.engine.evidence import EvidenceLedger
from synth_middleware.engine.policy import epoch_length, screen_pick  # per reward/epoch
from synth_middleware.wire import CandidateItem, CandidateStats, SessionState, clamp_reward

if TYPE_CHECKING:
    from synth_middleware.engine.policy import PolicyDecision, PolicySettings

_log = logging.getLogger(__name__)

# Event types (the ``type`` column of the log).
SESSION_CREATED = "session_created"
CANDIDATE_ADDED = "candidate_added"
CANDIDATE_ARCHIVED = "candidate_archived"
BASELINE_CHANGED = "baseline_changed"
ROLLOUT = "rollout"
REWARD = "reward"
SESSION_STATUS = "session_status"
CONFIG_UPDATED = "config_updated"
OPTIMIZER = "optimizer"  # optimizer status, pools and lease: a shallow patch of ``optimizer``

EVENT_TYPES = frozenset(
    {
        SESSION_CREATED,
        CANDIDATE_ADDED,
        CANDIDATE_ARCHIVED,
        BASELINE_CHANGED,
        ROLLOUT,
        REWARD,
        SESSION_STATUS,
        CONFIG_UPDATED,
        OPTIMIZER,
    }
)
# Keys of ``SessionStateMachine.optimizer`` that stay internal (not in the wire state).
OPTIMIZER_INTERNAL_KEYS = frozenset({"lease", "pool"})
SESSION_STATUSES = ("running", "paused", "cancelled", "completed")
CANDIDATE_STATUSES = ("active", "archived")
DEFAULT_MIN_REWARDS_FOR_BEST = 20
_SNAPSHOT_FORMAT = 3  # 2: the evidence ledger and the routing epoch; 3: screening entries
# The optimizer key naming the incumbent best (an input of the policy).
_INCUMBENT = "best_candidate_id"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the append-only log. ``seq`` is global and increasing."""

    seq: int
    session_id: str
    type: str
    payload: dict[str, Any]
    created_at: float


@dataclass(slots=True)
class CandidateState:
    """A candidate and its running statistics (Welford's mean and M2)."""

    candidate_id: str
    content: str | None
    payload: Any
    parent_id: str | None
    is_baseline: bool  # True only for the baseline of the current generation
    generation: int
    created_at: float
    seq: int  # seq of the event that added it: a stable creation order
    status: str = "active"
    archive_reason: str | None = None
    metadata: dict[str, Any] | None = None
    rollout_count: int = 0
    reward_count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def avg_reward(self) -> float | None:
        """Mean reward, ``None`` before the first reward."""
        return self.mean if self.reward_count else None

    @property
    def variance(self) -> float | None:
        """Sample variance of the rewards, ``None`` with fewer than two."""
        return self.m2 / (self.reward_count - 1) if self.reward_count > 1 else None

    def add_reward(self, value: float) -> None:
        """Welford's update: numerically stable, O(1), exact replay order matters.

        ``value`` is bounded to the reward range first (the engine refuses values
        outside it; an event log written before that may still hold one), so the
        mean stays within +-1e6 and ``m2`` below ``count * 4e12``: finite for any
        count a store can hold.
        """
        value = clamp_reward(value)
        if not (math.isfinite(self.mean) and math.isfinite(self.m2)):  # an old snapshot
            self.mean, self.m2 = clamp_reward(self.mean), 0.0
        self.reward_count += 1
        delta = value - self.mean
        self.mean += delta / self.reward_count
        self.m2 = max(self.m2 + delta * (value - self.mean), 0.0)

    def to_stats(self) -> CandidateStats:
        """The wire ``CandidateStats`` shape."""
        return {
            "candidate_id": self.candidate_id,
            "avg_reward": self.avg_reward,
            "rollout_count": self.rollout_count,
            "reward_count": self.reward_count,
            "reward_m2": self.m2,
            "is_baseline": self.is_baseline,
            "status": self.status,
            "parent_id": self.parent_id,
        }

    def to_item(self, *, content: bool = True, payload: bool = True) -> CandidateItem:
        """The wire ``CandidateItem`` shape; ``content``/``payload`` choose the heavy fields."""
        item: CandidateItem = {
            "candidate_id": self.candidate_id,
            "status": self.status,
            "avg_reward": self.avg_reward,
            "rollout_count": self.rollout_count,
            "reward_count": self.reward_count,
            "parent_id": self.parent_id,
            "is_baseline": self.is_baseline,
            "created_at": self.created_at,
            "generation": self.generation,
        }
        if content:
            item["candidate_content"] = self.content
        if payload:
            item["artifact_payload"] = self.payload
        return item

    def to_json(self) -> dict[str, Any]:
        """JSON-able snapshot form."""
        return {
            "candidate_id": self.candidate_id,
            "content": self.content,
            "payload": self.payload,
            "parent_id": self.parent_id,
            "is_baseline": self.is_baseline,
            "generation": self.generation,
            "created_at": self.created_at,
            "seq": self.seq,
            "status": self.status,
            "archive_reason": self.archive_reason,
            "metadata": self.metadata,
            "rollout_count": self.rollout_count,
            "reward_count": self.reward_count,
            "mean": self.mean,
            "m2": self.m2,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CandidateState:
        """Inverse of :meth:`to_json`."""
        return cls(**data)


def best_candidate(
    candidates: Mapping[str, CandidateState],
    baseline_id: str | None,
    min_rewards: int = DEFAULT_MIN_REWARDS_FOR_BEST,
) -> CandidateState | None:
    """The named best under :func:`synth_middleware.engine.policy.evaluate` with
    default settings and ``min_rewards`` as the promotion minimum.

    Without the session's evidence ledger no challenger can show it beats the
    baseline, so this names the baseline unless there is none (then the
    candidate with ``min_rewards`` rewards and the highest P(best)); use
    :meth:`SessionStateMachine.best` for a session.
    """
    from synth_middleware.engine.policy import PolicySettings, evaluate

    decision = evaluate(
        candidates.values(), baseline_id, PolicySettings(min_rollouts_for_best=min_rewards)
    )
    if decision.best_id is None:
        return candidates.get(baseline_id) if baseline_id else None
    return candidates.get(decision.best_id)


class SessionStateMachine:
    """The in-memory materialisation of one session's events.

    ``version`` is the seq of the last applied event; ``applied_events`` counts
    them (the engine snapshots every N events per session).
    """

    __slots__ = (
        "_pbest",
        "_policy",
        "_policy_inputs",
        "_routing",
        "_routing_at",
        "_settings",
        "applied_events",
        "baseline_candidate_id",
        "candidates",
        "config",
        "created_at",
        "evidence",
        "generation",
        "kind",
        "min_rewards_for_best",
        "optimizer",
        "reward_count",
        "reward_max",
        "reward_min",
        "rollout_count",
        "session_id",
        "status",
        "version",
    )

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.kind: str | None = None  # None until session_created is applied
        self.status = "running"
        self.created_at = 0.0
        self.config: dict[str, Any] = {}
        self.generation = 0
        self.baseline_candidate_id: str | None = None
        self.candidates: dict[str, CandidateState] = {}
        self.rollout_count = 0
        self.reward_count = 0
        self.version = 0
        self.applied_events = 0
        self.min_rewards_for_best = DEFAULT_MIN_REWARDS_FOR_BEST
        self.optimizer: dict[str, Any] = {}  # see OPTIMIZER; written by the optimizer runner
        self.reward_min: float | None = None
        self.reward_max: float | None = None
        # The policy reads only rewards, the candidate set (status, baseline), the
        # config and the incumbent, not rollout counts (see policy.CandidateLike):
        # its cache is keyed by a counter of the events that change those, so
        # rollouts (most events under load) do not make the next state read
        # re-evaluate the posterior. A new policy input must bump this counter.
        self._policy_inputs = 0
        self._policy: tuple[int, PolicyDecision] | None = None  # (_policy_inputs, decision)
        self._settings: PolicySettings | None = None
        # Promotion evidence (engine.evidence) and the routing epoch it needs: routing
        # weights are recomputed only at deterministic points of the log (policy
        # doc, "Routing"), so each reward's propensity is known on replay.
        self.evidence = EvidenceLedger()
        self._routing: dict[str, float] | None = None
        self._pbest: dict[str, float] | None = None
        self._routing_at = 0

    @property
    def exists(self) -> bool:
        """Whether ``session_created`` has been applied."""
        return self.kind is not None

    @property
    def baseline(self) -> CandidateState | None:
        """The baseline candidate of the current generation."""
        bid = self.baseline_candidate_id
        return self.candidates.get(bid) if bid else None

    # -- applying events -------------------------------------------------

    def apply(self, event: Event) -> bool:
        """Apply one event; return False (and change nothing) if it is already applied.

        Unknown event types only advance ``version``, so an older reader can
        tail a log written by a newer one.
        """
        if event.session_id != self.session_id:
            raise ValueError(
                f"event for session {event.session_id!r} applied to {self.session_id!r}"
            )
        if event.seq <= self.version:
            return False
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event)  # each handler counts the policy inputs it changes
        else:  # a newer writer's event type: assume the policy may read it
            self._policy_inputs += 1
        self.version = event.seq
        self.applied_events += 1
        return True

    def _on_session_created(self, event: Event) -> None:
        p = event.payload
        self.kind = p.get("kind") or "mipro_online"
        self.config = dict(p.get("config") or {})
        self.created_at = event.created_at
        self.status = "running"
        self._config_changed()
        self._new_epoch()

    def _config_changed(self) -> None:
        from synth_middleware.engine.policy import PolicySettings

        self._settings = PolicySettings.from_mapping(self.config, self.kind)
        self.min_rewards_for_best = self._settings.min_rollouts_for_best
        self._policy_inputs += 1

    def _on_config_updated(self, event: Event) -> None:
        self.config = dict(event.payload.get("config") or {})
        self._config_changed()
        self._new_epoch()

    def _on_optimizer(self, event: Event) -> None:
        patch = event.payload.get("patch") or {}
        for key, value in patch.items():
            if value is None:
                self.optimizer.pop(key, None)
            else:
                self.optimizer[key] = value
        if _INCUMBENT in patch:  # leases and pools (most optimizer events) do not matter
            self._policy_inputs += 1
            self._new_epoch()

    def _on_candidate_added(self, event: Event) -> None:
        p = event.payload
        cid = p["candidate_id"]
        is_baseline = bool(p.get("is_baseline"))
        self._policy_inputs += 1
        if is_baseline:
            old = self.baseline
            if old is not None:
                old.is_baseline = False
            self.baseline_candidate_id = cid
        self.candidates[cid] = CandidateState(
            candidate_id=cid,
            content=p.get("content"),
            payload=p.get("payload"),
            parent_id=p.get("parent_id"),
            is_baseline=is_baseline,
            generation=int(p.get("generation", self.generation)),
            created_at=event.created_at,
            seq=event.seq,
            metadata=p.get("metadata"),
        )
        self.evidence.activate(cid)
        self._new_epoch()

    def _on_candidate_archived(self, event: Event) -> None:
        cand = self.candidates.get(event.payload["candidate_id"])
        if cand is not None:
            cand.status = "archived"
            cand.archive_reason = event.payload.get("reason")
            self._policy_inputs += 1
            self.evidence.deactivate(cand.candidate_id)
            self._new_epoch()

    def _on_baseline_changed(self, event: Event) -> None:
        self.generation = int(event.payload["generation"])

    def _on_rollout(self, event: Event) -> None:
        if event.payload.get("supplement"):  # details for an implicit rollout: counted already
            return
        self.rollout_count += 1
        cand = self.candidates.get(event.payload.get("candidate_id") or "")
        if cand is not None:
            cand.rollout_count += 1

    def _on_reward(self, event: Event) -> None:
        try:
            raw = float(event.payload["value"])
        except (KeyError, TypeError, ValueError, OverflowError):  # an old or damaged log
            _log.warning(
                "session %s: reward event %d has no numeric value; skipped",
                self.session_id,
                event.seq,
            )
            return
        self._policy_inputs += 1
        self.reward_count += 1
        value = clamp_reward(raw)
        if value != raw:
            _log.warning(
                "session %s: reward %r (event %d) is outside the reward range; counted as %r",
                self.session_id,
                raw,
                event.seq,
                value,
            )
        if self.reward_min is None or value < self.reward_min:
            self.reward_min = value
        if self.reward_max is None or value > self.reward_max:
            self.reward_max = value
        cand = self.candidates.get(event.payload.get("candidate_id") or "")
        if cand is not None:
            cand.add_reward(value)
        if cand is not None and cand.status == "active":
            routing = self._routing if self._routing is not None else self._new_epoch()
            self.evidence.observe(cand.candidate_id, value, routing.get(cand.candidate_id))
        else:  # advances the period and the control variate only
            self.evidence.observe(None, value, None)
        if self.reward_count - self._routing_at >= epoch_length(self._routing_at):
            self._new_epoch()

    def _on_session_status(self, event: Event) -> None:
        self.status = event.payload["status"]

    def _new_epoch(self) -> dict[str, float]:
        """Recompute the routing weights (and P(best)) now: a deterministic point
        of the log. The decision is also the cached policy for this version."""
        decision = self._evaluate(None, None)
        if self._screen(decision):  # the family changed: decide again with the entrant
            # (the posteriors did not change: P(best) is reused, not recomputed on a grid)
            decision = self._evaluate(None, decision.probabilities())
        self._routing = dict(decision.routing)
        self._pbest = decision.probabilities()
        self._routing_at = self.reward_count
        self._policy = (self._policy_inputs, decision)
        return self._routing

    def _screen(self, decision: PolicyDecision) -> bool:
        """Let the most promising untested challenger into the confirmatory family
        (engine.policy, "Screening"); at most one per epoch. Returns whether one entered."""
        if decision.baseline_id is None or decision.baseline_id not in decision.verdicts:
            return False
        rows = [v for v in decision.verdicts.values() if v.index > 0 and v.prune_reason is None]
        pick = screen_pick(
            [v.candidate_id for v in rows],
            [v.p_beats_baseline for v in rows],
            [v.n for v in rows],
            [v.entered for v in rows],
            self.policy_settings,
        )
        return pick is not None and self.evidence.enter(pick)

    # -- views -------------------------------------------------------------

    @property
    def reward_span(self) -> float:
        """The scale of the rewards: 1 for rewards in [0, 1], else their observed range."""
        if self.rewards_bounded:
            return 1.0
        lo, hi = self.reward_min, self.reward_max
        span = (hi - lo) if lo is not None and hi is not None else 1.0
        return span if span > 0 else 1.0

    @property
    def rewards_bounded(self) -> bool:
        """Whether every reward so far lies in [0, 1] (Beta posteriors apply)."""
        lo, hi = self.reward_min, self.reward_max
        return lo is None or hi is None or (lo >= 0.0 and hi <= 1.0)

    @property
    def policy_settings(self) -> PolicySettings:
        """The selection-policy settings from this session's config."""
        if self._settings is None:
            from synth_middleware.engine.policy import PolicySettings

            self._settings = PolicySettings.from_mapping(self.config, self.kind)
        return self._settings

    def policy(self) -> PolicyDecision:
        """The selection policy's decision for the current rewards, candidates, config and
        incumbent: computed once, then reused (the same object) until one of them changes."""
        cached = self._policy
        if cached is not None and cached[0] == self._policy_inputs:
            return cached[1]
        decision = self._evaluate(self._routing, self._pbest)
        self._policy = (self._policy_inputs, decision)
        return decision

    def _evaluate(
        self, routing: dict[str, float] | None, pbest: dict[str, float] | None
    ) -> PolicyDecision:
        from synth_middleware.engine.policy import evaluate

        incumbent = self.optimizer.get(_INCUMBENT)
        return evaluate(
            self.candidates.values(),
            self.baseline_candidate_id,
            self.policy_settings,
            bounded=self.rewards_bounded,
            incumbent=incumbent if isinstance(incumbent, str) else None,
            evidence=self.evidence,
            reward_range=self.reward_span,
            routing=routing,
            pbest=pbest,
        )

    def best(self) -> CandidateState | None:
        """The named best candidate under the selection policy
        (:mod:`synth_middleware.engine.policy`); the baseline until another
        candidate has the evidence to be promoted."""
        best_id = self.policy().best_id
        if best_id is None:
            return self.baseline
        return self.candidates.get(best_id)

    def to_wire(self) -> SessionState:
        """The state in the wire ``SessionState`` shape."""
        best = self.best()
        best_reward = best.avg_reward if best is not None else None
        wire: SessionState = {
            "session_id": self.session_id,
            "kind": self.kind or "mipro_online",
            "status": self.status,
            "version": self.version,
            "rollout_count": self.rollout_count,
            "reward_count": self.reward_count,
            "best_candidate_id": best.candidate_id if best is not None else None,
            "best_reward": best_reward,
            "best_objective_value": best_reward,
            "baseline_candidate_id": self.baseline_candidate_id,
            "generation": self.generation,
            "candidates": [c.to_stats() for c in self.candidates.values()],
        }
        # extensions: the policy's view and the optimizer's status
        wire["policy"] = self.policy().to_json()
        wire["optimizer"] = {
            k: v for k, v in self.optimizer.items() if k not in OPTIMIZER_INTERNAL_KEYS
        }
        wire["reward_range"] = (
            [self.reward_min, self.reward_max]
            if self.reward_min is not None and self.reward_max is not None
            else None
        )
        return wire

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able copy from which :meth:`from_snapshot` rebuilds this exact state."""
        return {
            "format": _SNAPSHOT_FORMAT,
            "session_id": self.session_id,
            "kind": self.kind,
            "status": self.status,
            "created_at": self.created_at,
            "config": self.config,
            "generation": self.generation,
            "baseline_candidate_id": self.baseline_candidate_id,
            "rollout_count": self.rollout_count,
            "reward_count": self.reward_count,
            "version": self.version,
            "applied_events": self.applied_events,
            "min_rewards_for_best": self.min_rewards_for_best,
            "optimizer": self.optimizer,
            "reward_min": self.reward_min,
            "reward_max": self.reward_max,
            "candidates": [c.to_json() for c in self.candidates.values()],
            "evidence": self.evidence.to_json(),
            "routing": self._routing,
            "pbest": self._pbest,
            "routing_at": self._routing_at,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> SessionStateMachine:
        """Rebuild a state from :meth:`to_snapshot` output."""
        if data.get("format") != _SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format {data.get('format')!r}")
        st = cls(data["session_id"])
        st.kind = data["kind"]
        st.status = data["status"]
        st.created_at = data["created_at"]
        st.config = dict(data["config"] or {})
        st.generation = data["generation"]
        st.baseline_candidate_id = data["baseline_candidate_id"]
        st.rollout_count = data["rollout_count"]
        st.reward_count = data["reward_count"]
        st.version = data["version"]
        st.applied_events = data["applied_events"]
        st.optimizer = dict(data.get("optimizer") or {})
        st.reward_min = data.get("reward_min")
        st.reward_max = data.get("reward_max")
        st._config_changed()
        for c in data["candidates"]:
            cand = CandidateState.from_json(c)
            st.candidates[cand.candidate_id] = cand
        st.evidence = EvidenceLedger.from_json(data.get("evidence") or {})
        st._routing = dict(data["routing"]) if data.get("routing") is not None else None
        st._pbest = dict(data["pbest"]) if data.get("pbest") is not None else None
        st._routing_at = int(data.get("routing_at") or 0)
        return st


_HANDLERS: dict[str, Callable[[SessionStateMachine, Event], None]] = {
    SESSION_CREATED: SessionStateMachine._on_session_created,
    CANDIDATE_ADDED: SessionStateMachine._on_candidate_added,
    CANDIDATE_ARCHIVED: SessionStateMachine._on_candidate_archived,
    BASELINE_CHANGED: SessionStateMachine._on_baseline_changed,
    ROLLOUT: SessionStateMachine._on_rollout,
    REWARD: SessionStateMachine._on_reward,
    SESSION_STATUS: SessionStateMachine._on_session_status,
    CONFIG_UPDATED: SessionStateMachine._on_config_updated,
    OPTIMIZER: SessionStateMachine._on_optimizer,
}
