"""What every online optimizer shares: traces, the trigger, and the interface.

An optimizer round is a pure-ish function of a session snapshot, its recent
traces and a proposer: :meth:`Optimizer.propose` returns new candidates (and
the pool state it wants persisted); the runner
(:mod:`synth_middleware.engine._optimizer_runner`) writes them. Optimizers
never touch the store, so a round can be tested with a plain state object.

When does a round run? :func:`trigger` answers ``None`` (go) or the reason to
wait, in this order:

``disabled`` (``online_optimizer_enabled = false``), the session status when
it is not ``running``, ``waiting_for_rollouts`` (fewer than
``online_proposer_min_rollouts`` rewards in the current generation),
``max_candidates`` (``online_proposer_max_candidates`` reached this
generation), ``spacing`` (fewer than ``online_proposal_spacing`` times the
generation's rewards at the last proposal: each proposal is written from
more data than the one before, and the family's error budget is not spent on
a burst of early, thinly informed candidates), ``live_limit`` (``online_max_live_candidates`` optimizer
candidates active), ``evaluating`` (``online_parallel_trials`` candidates
still short of ``online_rollouts_per_candidate`` rewards).

A candidate whose P(best) fell below ``online_dormant_probability`` is
*dormant*: Thompson routing gives it (almost) no traffic, so waiting for its
minibatch would stall the optimizer. Its evaluation counts as done (the
posterior already says it is implausible) and it holds no live slot; it
keeps its small share of traffic and wakes up if the leader falters.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synth_middleware.engine.trace import Trace  # re-exported: its old import path

if TYPE_CHECKING:
    from synth_middleware.engine.config import SessionConfig
    from synth_middleware.engine.policy import PolicyDecision
    from synth_middleware.engine.proposer import Proposer
    from synth_middleware.engine.state import CandidateState, SessionStateMachine

__all__ = [
    "EXPECTED_KEYS",
    "Optimizer",
    "Proposal",
    "RoundContext",
    "RoundResult",
    "Trace",
    "generation_rewards",
    "instance_key",
    "instruction_of",
    "optimizer_candidates",
    "render_content",
    "traces_from_records",
    "trigger",
]

# Reward (then rollout) metadata keys that name the expected answer of an instance.
EXPECTED_KEYS = ("expected", "expected_label", "label", "gold", "answer")


def render_content(value: Any) -> str | None:
    """A recorded ``input`` (chat messages without the system prompt, or a Responses
    ``input``) or ``output`` as plain text; ``None`` when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        msgs = [m for m in value if isinstance(m, Mapping)]
        if not msgs:
            return json.dumps(value, ensure_ascii=False, default=str)
        texts = [(str(m.get("role") or "user"), _text(m.get("content"))) for m in msgs]
        if len(texts) == 1 and texts[0][0] == "user":
            return texts[0][1]
        return "\n".join(f"{role}: {text}" for role, text in texts)
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                out.append(part["text"])
        return "".join(out)
    return "" if content is None else str(content)


def _expected(*metas: Any) -> str | None:
    for meta in metas:
        if not isinstance(meta, Mapping):
            continue
        for key in EXPECTED_KEYS:
            value = meta.get(key)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                text = str(value).strip()
                if text:
                    return text[:200]
    return None


def traces_from_records(records: Iterable[Mapping[str, Any]]) -> list[Trace]:
    """:meth:`Engine.rollout_records` items -> traces (newest first, as given).

    The reward is the mean of the rollout's rewards (``None`` if unrewarded);
    feedback texts are joined; ``expected`` comes from reward metadata, else
    rollout metadata.
    """
    out: list[Trace] = []
    for r in records:
        rewards = r.get("rewards") or []
        values = [float(x["value"]) for x in rewards if isinstance(x.get("value"), int | float)]
        feedback = "; ".join(
            x["feedback"] for x in rewards if isinstance(x.get("feedback"), str) and x["feedback"]
        )
        expected = _expected(*(x.get("metadata") for x in rewards), r.get("metadata"))
        bucket = r.get("bucket")
        out.append(
            Trace(
                rollout_id=str(r.get("rollout_id")),
                candidate_id=r.get("candidate_id"),
                input=render_content(r.get("input")),
                output=render_content(r.get("output")),
                reward=math.fsum(values) / len(values) if values else None,
                feedback=feedback or None,
                bucket=str(bucket) if bucket not in (None, "") else None,
                expected=expected,
                created_at=float(r.get("created_at") or 0.0),
            )
        )
    return out


def instance_key(trace: Trace, hash_buckets: int = 16) -> str:
    """GEPA's instance key: the rollout's bucket, else the expected label from
    reward metadata, else a hash cluster of the normalised input, else ``"all"``."""
    if trace.bucket:
        return f"bucket:{trace.bucket}"
    if trace.expected:
        return f"label:{trace.expected}"
    if trace.input:
        norm = " ".join(trace.input.lower().split())
        digest = hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return f"hash:{int.from_bytes(digest, 'big') % max(1, hash_buckets)}"
    return "all"


def instruction_of(cand: CandidateState) -> str | None:
    """The instruction (system text) a candidate stands for: ``metadata.instruction``
    (optimizer candidates), else its plain-text content."""
    meta = cand.metadata or {}
    text = meta.get("instruction")
    if isinstance(text, str):
        return text
    return cand.content if isinstance(cand.content, str) else None


def optimizer_candidates(state: SessionStateMachine) -> list[CandidateState]:
    """Candidates an optimizer added in the current generation (any status)."""
    return [
        c
        for c in state.candidates.values()
        if c.generation == state.generation
        and not c.is_baseline
        and isinstance(c.metadata, Mapping)
        and c.metadata.get("optimizer")
    ]


def generation_rewards(state: SessionStateMachine) -> int:
    """Rewards of the current generation's candidates (what ``after_rewards`` records)."""
    return sum(
        c.reward_count for c in state.candidates.values() if c.generation == state.generation
    )


def trigger(
    state: SessionStateMachine, cfg: SessionConfig, decision: PolicyDecision | None = None
) -> str | None:
    """``None`` when a proposal round should run now, else why not (module doc).

    ``decision`` defaults to ``state.policy()`` (it says who is dormant)."""
    if not cfg.online_optimizer_enabled:
        return "disabled"
    if state.status != "running":
        return state.status
    rewards = generation_rewards(state)
    if rewards < cfg.online_proposer_min_rollouts:
        return "waiting_for_rollouts"
    mine = optimizer_candidates(state)
    if len(mine) >= cfg.online_proposer_max_candidates:
        return "max_candidates"
    if cfg.online_proposal_spacing > 1.0 and mine:
        last = max(_after_rewards(c) for c in mine)
        if rewards < cfg.online_proposal_spacing * last:
            return "spacing"
    verdicts = (decision or state.policy()).verdicts
    dormant = {cid for cid, v in verdicts.items() if v.p_best < cfg.online_dormant_probability}
    live = [c for c in mine if c.status == "active" and c.candidate_id not in dormant]
    if len(live) >= cfg.online_max_live_candidates:
        return "live_limit"
    pending = [c for c in live if c.reward_count < cfg.online_rollouts_per_candidate]
    if len(pending) >= cfg.online_parallel_trials:
        return "evaluating"
    return None


def _after_rewards(cand: CandidateState) -> int:
    meta = cand.metadata if isinstance(cand.metadata, Mapping) else {}
    value = meta.get("after_rewards")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class Proposal:
    """A candidate to add: plain ``content``, or a structured ``payload``."""

    content: str | None
    payload: Any = None
    parent_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RoundContext:
    """Everything one optimizer round may read."""

    state: SessionStateMachine
    config: SessionConfig
    decision: PolicyDecision
    traces: Sequence[Trace]
    proposer: Proposer | None
    rng: random.Random
    pool: Mapping[str, Any]  # what the optimizer persisted last round (may be empty)

    @property
    def baseline(self) -> CandidateState | None:
        """The current generation's baseline candidate."""
        return self.state.baseline

    @property
    def traced(self) -> list[Trace]:
        """Traces with content (inputs recorded)."""
        return [t for t in self.traces if t.input is not None]


@dataclass(slots=True)
class RoundResult:
    """What a round produced. ``pool`` (if not ``None``) replaces the persisted pool;
    ``note`` becomes the optimizer status when nothing was proposed."""

    proposals: list[Proposal] = field(default_factory=list)
    pool: dict[str, Any] | None = None
    malformed: int = 0
    proposer_calls: int = 0
    note: str = "ok"
    error: BaseException | None = None  # a proposer failure after partial progress


class Optimizer(ABC):
    """An online optimizer: one proposal round at a time."""

    kind: str = ""

    @abstractmethod
    def propose(self, ctx: RoundContext) -> RoundResult:
        """Run one round; may call ``ctx.proposer`` (network). Raise to back off."""
