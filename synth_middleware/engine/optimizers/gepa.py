"""GEPA online: Pareto-front parents, reflective mutation, optional merge.

Each round (see :func:`~synth_middleware.engine.optimizers.base.trigger` for
when):

1. **Instances.** Every recent rollout gets an instance key
   (:func:`~synth_middleware.engine.optimizers.base.instance_key`): its
   ``bucket``, else the expected label from reward metadata, else a hash
   cluster of its input. Per candidate and instance, the score is the mean
   reward shrunk towards the candidate's overall mean (two pseudo-rollouts),
   so a sparse cell does not decide the front alone.
2. **Parent.** Candidates that may parent: the baseline, and active
   candidates with at least ``online_rollouts_per_candidate`` rewards (the
   ones live traffic has accepted so far). For each instance the best-scoring
   ones form its front; dominated candidates are dropped; the parent is drawn
   with probability proportional to the number of instances whose front it
   belongs to.
3. **Reflective mutation.** The proposer reads the parent's instruction and a
   minibatch (``reflection_minibatch_size``) of the parent's recent rollouts
   with inputs, outputs, rewards and feedback (low rewards preferred) and
   writes a new instruction between the first and last triple backticks. A
   malformed answer is discarded and counted; an unchanged or duplicate one is
   discarded.
4. **Merge** (``use_merge``, at most ``max_merge_invocations``): on
   alternate rounds, two front members with a common ancestor, neither
   descending from the other, are combined by the proposer.
5. **Acceptance** happens on live traffic: the child is served by P(best)
   routing, archived by the policy only when anytime-valid evidence shows it
   worse than the baseline or the named best (:mod:`synth_middleware.engine.policy`),
   and parents once it has enough rewards.

Without traces (``send_traces=False``) there is nothing to reflect on: the
round waits (selection and pruning go on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synth_middleware.engine.optimizers.base import (
    Optimizer,
    Proposal,
    RoundContext,
    RoundResult,
    Trace,
    instance_key,
    instruction_of,
)
from synth_middleware.engine.proposer import (
    extract_instruction,
    gepa_merge_prompt,
    gepa_reflection_prompt,
)
from synth_middleware.engine.state import CandidateState, SessionStateMachine

__all__ = ["GepaOptimizer", "bucket_scores", "pareto_membership"]

_SHRINK = 2.0  # pseudo-rollouts at the candidate's overall mean
_RECENT_PER_PARENT = 50


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def bucket_scores(
    traces: Sequence[Trace], candidates: Sequence[CandidateState], hash_buckets: int
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """``(instances, scores)``: ``scores[candidate_id][instance]`` for every candidate
    and every instance seen in ``traces`` (shrunk means; see the module doc)."""
    cells: dict[str, dict[str, list[float]]] = {}
    instances: dict[str, None] = {}
    ids = {c.candidate_id for c in candidates}
    for t in traces:
        if t.reward is None:
            continue
        key = instance_key(t, hash_buckets)
        instances[key] = None
        if t.candidate_id in ids:
            cell = cells.setdefault(t.candidate_id, {}).setdefault(key, [0.0, 0.0])
            cell[0] += 1.0
            cell[1] += t.reward
    out: dict[str, dict[str, float]] = {}
    for c in candidates:
        overall = c.mean if c.reward_count else 0.0
        mine = cells.get(c.candidate_id, {})
        out[c.candidate_id] = {
            b: (mine[b][1] + _SHRINK * overall) / (mine[b][0] + _SHRINK) if b in mine else overall
            for b in instances
        }
    return list(instances), out


def pareto_membership(
    instances: Sequence[str], scores: Mapping[str, Mapping[str, float]]
) -> dict[str, int]:
    """For each non-dominated candidate, the number of instances whose best set it is in."""
    ids = list(scores)
    if not instances:
        return dict.fromkeys(ids, 1)
    eps = 1e-9
    members: dict[str, int] = dict.fromkeys(ids, 0)
    for b in instances:
        top = max(scores[c][b] for c in ids)
        for c in ids:
            if scores[c][b] >= top - eps:
                members[c] += 1

    def dominated(c: str) -> bool:
        for d in ids:
            if d == c:
                continue
            ge = all(scores[d][b] >= scores[c][b] - eps for b in instances)
            gt = any(scores[d][b] > scores[c][b] + eps for b in instances)
            if ge and gt:
                return True
        return False

    return {c: n for c, n in members.items() if n > 0 and not dominated(c)}


def _ancestors(state: SessionStateMachine, cid: str) -> list[str]:
    """``cid`` and its parents, nearest first."""
    out: list[str] = []
    cur: str | None = cid
    while cur is not None and cur not in out and len(out) < 1000:
        out.append(cur)
        cand = state.candidates.get(cur)
        cur = cand.parent_id if cand is not None else None
    return out


class GepaOptimizer(Optimizer):
    """GEPA online (``kind="gepa_online"``); see the module docstring."""

    kind = "gepa_online"

    def propose(self, ctx: RoundContext) -> RoundResult:
        """One round: a merge (when enabled and due) or a reflective mutation."""
        state, cfg = ctx.state, ctx.config
        pool = self._load_pool(ctx.pool, state.generation)
        result = RoundResult(pool=pool)
        if ctx.proposer is None:
            result.note = "no_proposer"
            return result
        traced = ctx.traced
        if not traced:
            result.note = "no_traces"
            return result
        parents = [
            c
            for c in state.candidates.values()
            if c.status == "active"
            and c.generation == state.generation
            and instruction_of(c) is not None
            and (c.is_baseline or c.reward_count >= cfg.online_rollouts_per_candidate)
        ]
        if not parents:
            result.note = "no_parents"
            return result
        instances, scores = bucket_scores(ctx.traces, parents, cfg.gepa_hash_buckets)
        front = pareto_membership(instances, scores)
        pool["rounds"] = int(pool.get("rounds", 0)) + 1
        pool["front"] = sorted(front)
        known = {_norm(t) for c in state.candidates.values() if (t := instruction_of(c))}

        if cfg.use_merge and pool["merges"] < cfg.max_merge_invocations and pool["rounds"] % 2 == 0:
            pair = self._merge_pair(state, front, pool)
            if pair is not None:
                return self._merge(ctx, pool, result, pair, known)

        by_id = {c.candidate_id: c for c in parents}
        with_traces = {t.candidate_id for t in traced if t.reward is not None}
        choices = [(cid, n) for cid, n in front.items() if cid in with_traces]
        if not choices:  # the front has no traced rollouts yet: any parent that has some
            choices = [(c.candidate_id, 1) for c in parents if c.candidate_id in with_traces]
        if not choices:
            result.note = "no_traces_for_parents"
            return result
        parent = by_id[self._weighted(ctx, choices)]
        minibatch = self._minibatch(ctx, parent, traced, cfg.reflection_minibatch_size)
        instruction = instruction_of(parent) or ""
        prompt = gepa_reflection_prompt(instruction=instruction, examples=minibatch)
        result.proposer_calls += 1
        text = extract_instruction(ctx.proposer.complete(prompt))
        if text is None:
            result.malformed += 1
            result.note = "malformed"
            return result
        if _norm(text) in known:
            result.note = "duplicate"
            return result
        result.proposals.append(
            Proposal(
                content=text,
                parent_id=parent.candidate_id,
                metadata={
                    "optimizer": "gepa",
                    "operation": "mutation",
                    "instruction": text,
                    "parents": [parent.candidate_id],
                    "minibatch": [t.rollout_id for t in minibatch],
                    "front_size": len(front),
                },
            )
        )
        result.note = "ok"
        return result

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def _load_pool(saved: Mapping[str, Any], generation: int) -> dict[str, Any]:
        if saved.get("algo") == "gepa" and saved.get("generation") == generation:
            return {**saved, "merged": [list(p) for p in saved.get("merged") or []]}
        return {"algo": "gepa", "generation": generation, "rounds": 0, "merges": 0, "merged": []}

    @staticmethod
    def _weighted(ctx: RoundContext, choices: list[tuple[str, int]]) -> str:
        total = sum(n for _, n in choices)
        u = ctx.rng.random() * total
        for cid, n in choices:
            u -= n
            if u < 0:
                return cid
        return choices[-1][0]

    @staticmethod
    def _minibatch(
        ctx: RoundContext, parent: CandidateState, traced: Sequence[Trace], size: int
    ) -> list[Trace]:
        """Up to ``size`` of the parent's recent traced rollouts with distinct inputs:
        failures first (reward below the parent's best; at most ``size - 1`` of them
        when a success exists, so the proposer also sees what works), then random."""
        mine: list[Trace] = []
        seen: set[str | None] = set()
        for t in traced:
            if (
                t.candidate_id == parent.candidate_id
                and t.reward is not None
                and t.input not in seen
            ):
                seen.add(t.input)
                mine.append(t)
            if len(mine) >= max(_RECENT_PER_PARENT, 2 * size):
                break
        if len(mine) <= size:
            return mine
        top = max(t.reward or 0.0 for t in mine)
        failures = [t for t in mine if (t.reward or 0.0) < top]
        others = [t for t in mine if (t.reward or 0.0) >= top]
        ctx.rng.shuffle(failures)
        ctx.rng.shuffle(others)
        n_fail = min(len(failures), size - 1 if others and size > 1 else size)
        return failures[:n_fail] + others[: size - n_fail]

    @staticmethod
    def _merge_pair(
        state: SessionStateMachine, front: Mapping[str, int], pool: Mapping[str, Any]
    ) -> tuple[str, str, str] | None:
        """``(a, b, common_ancestor)`` of two front members, or ``None``."""
        done = {tuple(sorted(p)) for p in pool.get("merged") or []}
        ids = sorted(front, key=lambda c: -front[c])
        for i, a in enumerate(ids):
            anc_a = _ancestors(state, a)
            for b in ids[i + 1 :]:
                if tuple(sorted((a, b))) in done:
                    continue
                anc_b = _ancestors(state, b)
                if a in anc_b or b in anc_a:
                    continue  # one descends from the other
                common = next((x for x in anc_a if x in anc_b), None)
                if common is None:
                    continue
                ta = instruction_of(state.candidates[a])
                tb = instruction_of(state.candidates[b])
                if ta and tb and _norm(ta) != _norm(tb):
                    return a, b, common
        return None

    @staticmethod
    def _merge(
        ctx: RoundContext,
        pool: dict[str, Any],
        result: RoundResult,
        pair: tuple[str, str, str],
        known: set[str],
    ) -> RoundResult:
        a, b, common = pair
        cands = ctx.state.candidates
        prompt = gepa_merge_prompt(
            ancestor=instruction_of(cands[common]) or "",
            first=instruction_of(cands[a]) or "",
            second=instruction_of(cands[b]) or "",
        )
        pool["merges"] = int(pool.get("merges", 0)) + 1
        pool["merged"] = [*pool.get("merged", []), [a, b]]
        result.proposer_calls += 1
        assert ctx.proposer is not None
        text = extract_instruction(ctx.proposer.complete(prompt))
        if text is None:
            result.malformed += 1
            result.note = "malformed"
            return result
        if _norm(text) in known:
            result.note = "duplicate"
            return result
        result.proposals.append(
            Proposal(
                content=text,
                parent_id=a,
                metadata={
                    "optimizer": "gepa",
                    "operation": "merge",
                    "instruction": text,
                    "parents": [a, b],
                    "ancestor": common,
                },
            )
        )
        result.note = "ok"
        return result
