"""Simulated environments with known ground truth for the optimizer tests.

* :class:`Task`: a classification task whose success probability depends only
  on the prompt actually sent: an instruction carrying a ``[q=0.80]`` marker
  succeeds with probability 0.80, anything else with ``base_rate``; few-shot
  demos (appended text or injected messages) add ``demo_bonus`` each, up to
  three. Candidates are applied with the client's own parser, so what is
  simulated is what the middleware would send.
* :class:`ScriptedProposer`: a ``reply`` function for
  :class:`~synth_middleware.testing.FakeOpenAIServer` (or a direct fake
  client) that answers proposer prompts with instructions of known quality.
* :func:`simulate`: routes rollouts like the client (Thompson sampling:
  :func:`~synth_middleware.client.selection.routing_weights` from the session
  state's statistics), rewards them from the task's known rates, records
  inputs/outputs/feedback and steps the optimizer runner.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from synth_middleware._posterior import SHARPENED_ROUTING, top_two_weights
from synth_middleware.client.candidates import parse_candidate
from synth_middleware.client.selection import probability_best, routing_from_state, routing_weights
from synth_middleware.engine import Engine

BASELINE = "You are a support assistant. Classify the user's request."
LABELS = ("card_lost", "refund", "top_up", "transfer", "pin_blocked", "exchange_rate")
_Q = re.compile(r"\[q=([01](?:\.\d+)?)\]")


@dataclass
class Task:
    """Known success rates as a function of the prompt sent."""

    base_rate: float = 0.5
    demo_bonus: float = 0.0
    inputs: Sequence[tuple[str, str]] = field(
        default_factory=lambda: [
            (f"request {i}: please help with {lab}", lab) for i, lab in enumerate(LABELS * 5)
        ]
    )

    def rate(self, messages: Sequence[dict[str, Any]]) -> float:
        """Success probability of one call with these (already applied) messages."""
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        m = _Q.search(system or "")
        p = float(m.group(1)) if m else self.base_rate
        demos = (system or "").count("Example ") + sum(
            1 for m in messages if m.get("role") == "assistant"
        )
        return min(1.0, p + self.demo_bonus * min(demos, 3))


class ScriptedProposer:
    """Answers proposer prompts with ``[q=...]`` instructions from ``qualities``, in order.

    ``malformed`` lists call indexes (0-based) answered without triple backticks.
    Every prompt is kept in ``prompts``.
    """

    def __init__(self, qualities: Sequence[float], *, malformed: Sequence[int] = ()) -> None:
        self.qualities = list(qualities)
        self.malformed = set(malformed)
        self.prompts: list[str] = []

    def answer(self, prompt: str) -> str:
        """The scripted answer to one prompt."""
        i = len(self.prompts)
        self.prompts.append(prompt)
        if i in self.malformed:
            return "I think the instruction should be more careful, but here is no code block."
        q = self.qualities[i % len(self.qualities)]
        return (
            f"Sure.\n```text\nYou are a careful banking intent classifier v{i}. [q={q:.2f}]\n```\n"
        )

    def reply(self, body: dict[str, Any]) -> str:
        """A ``FakeOpenAIServer`` reply function."""
        msgs = body.get("messages") or []
        return self.answer(str(msgs[-1].get("content") if msgs else ""))

    def client(self) -> Any:
        """A minimal in-process stand-in for an OpenAI client (no HTTP)."""

        def create(**kwargs: Any) -> Any:
            text = self.reply(kwargs)
            return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])

        return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))


@dataclass
class SimResult:
    """What a simulation did."""

    served: dict[str, int] = field(default_factory=dict)
    best_trace: list[str | None] = field(default_factory=list)  # named best after each chunk
    total_reward: float = 0.0


def simulate(
    engine: Engine,
    session_id: str,
    task: Task,
    n: int,
    rng: random.Random,
    *,
    step: Callable[[], Any] | None = None,
    chunk: int = 10,
    send_traces: bool = True,
    rate_override: Callable[[str, float], float] | None = None,
    start: int = 0,
    routing: str = "thompson",
) -> SimResult:
    """Serve ``n`` rollouts; ``step`` (e.g. the runner's step) runs after every chunk.

    ``rate_override(candidate_id, rate)`` lets a test change a candidate's true
    rate (regression). Rollout ids start at ``start`` so runs can continue.
    ``routing`` is ``"thompson"`` (the client's default: the engine's published
    routing weights), ``"plain"`` (Thompson on the statistics alone), ``"sharpened"``
    (sharpened Thompson sampling at ``SHARPENED_ROUTING``), ``"top_two"`` (top-two
    Thompson weights of P(best)) or ``"floor:f:k"`` (P(best) with a share ``f`` for
    the baseline until it has ``k`` rewards).
    """
    out = SimResult()
    done = 0
    while done < n:
        state = engine.get_state(session_id)
        items = engine.list_candidates(session_id, status="active", limit=1000)["items"]
        stats_by = {s["candidate_id"]: s for s in state["candidates"]}
        cands = [parse_candidate(it) for it in items]
        base = next((c for c in cands if c.is_baseline), None)
        stats = [dict(stats_by[c.candidate_id]) for c in cands]
        if routing == "thompson":  # what the client does: the engine's published weights
            probs = routing_from_state(state, [c.candidate_id for c in cands], stats_by)
        elif routing == "plain":
            probs = routing_weights(stats)
        elif routing == "sharpened":
            probs = routing_weights(stats, SHARPENED_ROUTING)
        elif routing == "top_two":
            probs = top_two_weights(probability_best(stats))
        elif routing.startswith("floor"):
            probs = probability_best(stats)
            _, f, k = routing.split(":")
            bi = next(i for i, c in enumerate(cands) if c.is_baseline)
            if int(stats_by[cands[bi].candidate_id]["reward_count"] or 0) < int(k):
                rest = sum(p for i, p in enumerate(probs) if i != bi)
                if probs[bi] < float(f) and rest > 0:
                    probs = [
                        float(f) if i == bi else p * (1 - float(f)) / rest
                        for i, p in enumerate(probs)
                    ]
        else:
            raise ValueError(f"unknown routing {routing!r}")
        rollouts, rewards = [], []
        for _ in range(min(chunk, n - done)):
            i = start + done
            done += 1
            cand = rng.choices(cands, weights=probs)[0]
            text, label = task.inputs[rng.randrange(len(task.inputs))]
            msgs = [{"role": "system", "content": BASELINE}, {"role": "user", "content": text}]
            applied = cand.apply(msgs, baseline=base) if not cand.is_baseline else msgs
            if applied is None:
                applied, cand = msgs, base  # does not fit: the client serves the baseline
            assert cand is not None
            p = task.rate(applied)
            if rate_override is not None:
                p = rate_override(cand.candidate_id, p)
            ok = rng.random() < p
            out.served[cand.candidate_id] = out.served.get(cand.candidate_id, 0) + 1
            out.total_reward += ok
            rid = f"ro_{i}"
            rec: dict[str, Any] = {
                "session_id": session_id,
                "rollout_id": rid,
                "candidate_id": cand.candidate_id,
                "created_at": float(i),
            }
            if send_traces:
                rec["input"] = [{"role": "user", "content": text}]
                rec["output"] = label if ok else "unknown"
            rollouts.append(rec)
            rewards.append(
                {
                    "idempotency_key": f"k_{rid}",
                    "rollout_id": rid,
                    "value": 1.0 if ok else 0.0,
                    "created_at": float(i),
                    "feedback": None if ok else f"wrong: expected {label}",
                    "metadata": {"expected": label},
                }
            )
        engine.record_rollouts(rollouts)
        engine.record_rewards(rewards)
        if step is not None:
            step()
        out.best_trace.append(engine.get_state(session_id)["best_candidate_id"])
    return out


def true_rate(engine: Engine, session_id: str, candidate_id: str, task: Task) -> float:
    """The known success rate of a candidate (applied to a typical message list)."""
    items = engine.list_candidates(session_id, status="all", limit=1000)["items"]
    cands = {it["candidate_id"]: parse_candidate(it) for it in items}
    base = next((c for c in cands.values() if c.is_baseline), None)
    msgs = [{"role": "system", "content": BASELINE}, {"role": "user", "content": "x"}]
    cand = cands[candidate_id]
    applied = cand.apply(msgs, baseline=base) if not cand.is_baseline else msgs
    return task.rate(applied or msgs)
