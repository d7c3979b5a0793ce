"""MIPRO online: (instruction, demo set) candidates, chosen by factored Thompson sampling.

After ``online_proposer_min_rollouts`` rewards, each round:

1. **Pools.** Instructions start with the baseline's text (``i0``); demo sets
   with the empty set (``d0``). When every combination has been tried the
   pools grow: ``demo_sets_per_batch`` demo sets of up to
   ``max_bootstrapped_demos`` examples each, bootstrapped from high-reward
   traces (reward >= ``demo_min_reward``, default the upper quartile of the
   traced rewards and above the lowest), and ``instructions_per_batch``
   instructions from the proposer model, each prompted with a dataset
   summary built from observed inputs, the current best instruction, the
   high-reward examples (``proposer_max_examples``, default 3), the low-reward
   ones with their expected answers (``proposer_max_failures``, default 8:
   what the instruction must fix) and a randomly drawn tip (MIPROv2's
   grounded proposal). Raising both lets one proposal describe most of a
   large label set, at the cost of a longer proposer prompt. No proposer configured: demo sets only. No traces (the client
   runs with ``send_traces=False``): no demos and nothing about the data
   in the prompt.
2. **Choice.** Factored Thompson sampling: every instruction and every demo
   set has its own posterior of the mean reward of the candidates that use it
   (Beta for rewards in [0, 1], Normal otherwise; unseen ones keep the wide
   prior, i.e. optimism). One draw per factor; the untried combination with
   the highest sum of draws becomes the next candidate, which then gets
   ``online_rollouts_per_candidate`` rewards (the minibatch) before it counts
   as evaluated, while serving keeps routing by P(best) and the policy prunes
   losers.

Why not optuna TPE ask/tell (MIPROv2's offline choice)? Online, the
instruction and demo pools *grow* between rounds, and optuna's categorical
distributions are fixed per study; trials are also evaluated asynchronously
on noisy live traffic where a posterior is the natural summary. A factored
posterior is the same independence assumption TPE makes for categorical
parameters, costs nothing to update, needs no optional dependency, and uses
the same posterior math as selection and pruning.

Candidates render into payload shapes the client parses (``demo_format``):
``"text"`` (default) appends the demos to the instruction (works for chat and
the Responses API); ``"messages"`` is a ``transformation`` replacing the
baseline system text and injecting the demos as user/assistant messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from synth_middleware._posterior import Posterior, beta_posterior, normal_posterior
from synth_middleware.engine.optimizers.base import (
    Optimizer,
    Proposal,
    RoundContext,
    RoundResult,
    Trace,
    instruction_of,
)
from synth_middleware.engine.proposer import (
    MIPRO_TIPS,
    dataset_summary,
    extract_instruction,
    mipro_instruction_prompt,
)

__all__ = ["MiproOptimizer", "render_candidate"]

_DEMO_CHARS = 1500


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def render_candidate(
    instruction: str, demos: Sequence[Mapping[str, str]], *, baseline: str | None, fmt: str
) -> tuple[str | None, Any]:
    """``(content, payload)`` for an (instruction, demo set) combination."""
    if not demos:
        return instruction, None
    if fmt == "messages" and baseline:
        examples: list[dict[str, str]] = []
        for d in demos:
            examples.append({"role": "user", "content": d["input"]})
            examples.append({"role": "assistant", "content": d["output"]})
        payload: dict[str, Any] = {
            "object": "transformation",
            "payload_kind": "transformation",
            "example_injections": [{"examples": examples, "insert_after_role": "system"}],
        }
        if instruction != baseline:
            payload["text_replacements"] = [
                {"old_text": baseline, "new_text": instruction, "apply_to_role": "system"}
            ]
        return None, payload
    shots = "\n\n".join(
        f"Example {i}:\nInput:\n{d['input']}\nOutput:\n{d['output']}"
        for i, d in enumerate(demos, 1)
    )
    head = instruction.rstrip()
    return (f"{head}\n\n" if head else "") + f"Here are examples of good answers.\n\n{shots}", None


class MiproOptimizer(Optimizer):
    """MIPRO online (``kind="mipro_online"``); see the module docstring."""

    kind = "mipro_online"

    def propose(self, ctx: RoundContext) -> RoundResult:
        """One round: grow the pools if every combination was tried, then add the
        untried combination favoured by factored Thompson sampling."""
        state, cfg = ctx.state, ctx.config
        base = ctx.baseline
        base_text = base.content if base is not None and isinstance(base.content, str) else ""
        pool = self._load_pool(ctx.pool, state.generation, base_text)
        result = RoundResult(pool=pool)
        tried = self._tried(ctx)
        untried = self._untried(pool, tried)
        if not untried:
            result.note = self._grow(ctx, pool, result)
            untried = self._untried(pool, tried)
        if not untried:
            return result
        iid, did = self._choose(ctx, pool, untried)
        instr = next(i for i in pool["instructions"] if i["id"] == iid)
        dset = next(d for d in pool["demo_sets"] if d["id"] == did)
        content, payload = render_candidate(
            instr["text"], dset["demos"], baseline=base_text or None, fmt=cfg.demo_format
        )
        result.proposals.append(
            Proposal(
                content=content,
                payload=payload,
                parent_id=base.candidate_id if base is not None else None,
                metadata={
                    "optimizer": "mipro",
                    "instruction_id": iid,
                    "demo_set_id": did,
                    "instruction": instr["text"],
                    "demos": len(dset["demos"]),
                    "source": instr.get("source"),
                },
            )
        )
        result.note = "ok"
        return result

    # -- pools -----------------------------------------------------------------

    @staticmethod
    def _load_pool(saved: Mapping[str, Any], generation: int, base_text: str) -> dict[str, Any]:
        if saved.get("algo") == "mipro" and saved.get("generation") == generation:
            return {
                **saved,
                "instructions": [dict(i) for i in saved.get("instructions") or []],
                "demo_sets": [dict(d) for d in saved.get("demo_sets") or []],
            }
        return {  # new session or new generation (the app's prompt changed): start over
            "algo": "mipro",
            "generation": generation,
            "instructions": [{"id": "i0", "text": base_text, "source": "baseline"}],
            "demo_sets": [{"id": "d0", "demos": []}],
            "next_i": 1,
            "next_d": 1,
        }

    @staticmethod
    def _tried(ctx: RoundContext) -> set[tuple[str, str]]:
        tried = {("i0", "d0")}  # the baseline itself
        st = ctx.state
        for c in st.candidates.values():
            meta = c.metadata if isinstance(c.metadata, Mapping) else {}
            if c.generation == st.generation and meta.get("optimizer") == "mipro":
                tried.add((str(meta.get("instruction_id")), str(meta.get("demo_set_id"))))
        return tried

    @staticmethod
    def _untried(pool: Mapping[str, Any], tried: set[tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            (i["id"], d["id"])
            for i in pool["instructions"]
            for d in pool["demo_sets"]
            if (i["id"], d["id"]) not in tried
        ]

    def _grow(self, ctx: RoundContext, pool: dict[str, Any], result: RoundResult) -> str:
        """Add demo sets and instructions; return a status note for an empty round."""
        cfg = ctx.config
        traced = ctx.traced
        notes: list[str] = []
        # demo sets bootstrapped from high-reward traces
        if not traced:
            notes.append("no_traces")
        elif len(pool["demo_sets"]) - 1 < cfg.max_demo_sets and cfg.demo_sets_per_batch:
            good = self._demo_pool(traced, cfg.demo_min_reward)
            if not good:
                notes.append("no_good_traces")
            seen = {frozenset(d["input"] for d in s["demos"]) for s in pool["demo_sets"]}
            added = 0
            for _ in range(cfg.demo_sets_per_batch * 3):  # a few retries against duplicates
                if not good or added >= cfg.demo_sets_per_batch:
                    break
                if len(pool["demo_sets"]) - 1 >= cfg.max_demo_sets:
                    break
                k = min(cfg.max_bootstrapped_demos, len(good))
                picked = ctx.rng.sample(good, k)
                key = frozenset(d["input"] for d in picked)
                if key in seen:
                    continue
                seen.add(key)
                pool["demo_sets"].append({"id": f"d{pool['next_d']}", "demos": picked})
                pool["next_d"] += 1
                added += 1
        # instructions from the proposer
        proposer = ctx.proposer
        if proposer is None:
            notes.append("no_proposer")
        elif len(pool["instructions"]) - 1 < cfg.max_instructions:
            current = self._current_instruction(ctx, pool)
            summary = dataset_summary(traced)
            examples = self._examples(traced, cfg.proposer_max_examples)
            failures = self._failures(traced, cfg.proposer_max_failures)
            known = {_norm(i["text"]) for i in pool["instructions"]}
            for _ in range(cfg.instructions_per_batch):
                if len(pool["instructions"]) - 1 >= cfg.max_instructions:
                    break
                tip_key = ctx.rng.choice(sorted(MIPRO_TIPS))
                prompt = mipro_instruction_prompt(
                    instruction=current,
                    summary=summary,
                    examples=examples,
                    tip=MIPRO_TIPS[tip_key],
                    failures=failures,
                )
                result.proposer_calls += 1
                try:
                    answer = proposer.complete(prompt)
                except Exception as exc:  # demo sets still count; the runner backs off
                    result.error = exc
                    notes.append("proposer_error")
                    break
                text = extract_instruction(answer)
                if text is None:
                    result.malformed += 1
                    continue
                if _norm(text) in known:
                    continue
                known.add(_norm(text))
                pool["instructions"].append(
                    {"id": f"i{pool['next_i']}", "text": text, "source": "proposer", "tip": tip_key}
                )
                pool["next_i"] += 1
            if result.malformed and result.malformed == result.proposer_calls:
                notes.append("malformed")
        return "exhausted" if not notes else ",".join(notes)

    @staticmethod
    def _demo_pool(traced: Sequence[Trace], min_reward: float | None) -> list[dict[str, str]]:
        rewarded = [t for t in traced if t.reward is not None and t.output]
        if not rewarded:
            return []
        values = sorted(t.reward for t in rewarded)  # type: ignore[type-var]
        if min_reward is None:
            q75 = values[min(len(values) - 1, math.floor(0.75 * len(values)))]
            ok = [t for t in rewarded if t.reward >= q75 and t.reward > values[0]]  # type: ignore[operator]
        else:
            ok = [t for t in rewarded if t.reward >= min_reward]  # type: ignore[operator]
        out: list[dict[str, str]] = []
        seen: set[str] = set()
        for t in ok:
            inp = (t.input or "")[:_DEMO_CHARS]
            if inp in seen:
                continue
            seen.add(inp)
            out.append({"input": inp, "output": (t.output or "")[:_DEMO_CHARS]})
        return out

    @staticmethod
    def _examples(traced: Sequence[Trace], limit: int) -> list[Trace]:
        """Up to ``limit`` (``proposer_max_examples``) rollouts with distinct inputs that
        scored above the lowest reward seen, highest first."""
        scored = _scored(traced)
        if len({r for r, _ in scored}) > 1:
            low = min(r for r, _ in scored)
            scored = [(r, t) for r, t in scored if r > low]
        return _distinct([t for _, t in sorted(scored, key=lambda p: -p[0])], limit)

    @staticmethod
    def _failures(traced: Sequence[Trace], limit: int) -> list[Trace]:
        """Up to ``limit`` (``proposer_max_failures``) recent rollouts with distinct inputs
        whose reward is below the best seen, lowest first (what the proposer should learn
        from)."""
        scored = _scored(traced)
        if not scored:
            return []
        top = max(r for r, _ in scored)
        low = sorted(((r, t) for r, t in scored if r < top), key=lambda p: p[0])
        return _distinct([t for _, t in low], limit)

    @staticmethod
    def _current_instruction(ctx: RoundContext, pool: Mapping[str, Any]) -> str:
        best = ctx.state.candidates.get(ctx.decision.best_id or "")
        text = instruction_of(best) if best is not None else None
        return text if text is not None else pool["instructions"][0]["text"]

    # -- choice ------------------------------------------------------------------

    @staticmethod
    def _choose(
        ctx: RoundContext, pool: Mapping[str, Any], untried: list[tuple[str, str]]
    ) -> tuple[str, str]:
        st = ctx.state
        by_i: dict[str, list[tuple[int, float, float]]] = {}
        by_d: dict[str, list[tuple[int, float, float]]] = {}
        base = st.baseline
        for c in st.candidates.values():
            if c.generation != st.generation or c.reward_count == 0:
                continue
            meta = c.metadata if isinstance(c.metadata, Mapping) else {}
            if base is not None and c.candidate_id == base.candidate_id:
                iid, did = "i0", "d0"
            elif meta.get("optimizer") == "mipro":
                iid, did = str(meta.get("instruction_id")), str(meta.get("demo_set_id"))
            else:
                continue
            row = (c.reward_count, c.mean, c.m2)
            by_i.setdefault(iid, []).append(row)
            by_d.setdefault(did, []).append(row)
        bounded = st.rewards_bounded
        n_all, prior_mean, m2_all = _combine([r for rows in by_i.values() for r in rows])
        prior_var = m2_all / (n_all - 1) if n_all > 1 and m2_all > 0 else 1.0

        def post(rows: list[tuple[int, float, float]]) -> Posterior:
            n, mean, m2 = _combine(rows) if rows else (0, 0.0, 0.0)
            if bounded:
                return beta_posterior(n, mean)
            return normal_posterior(n, mean, m2, prior_mean, prior_var)

        theta = {i["id"]: post(by_i.get(i["id"], [])).sample(ctx.rng) for i in pool["instructions"]}
        phi = {d["id"]: post(by_d.get(d["id"], [])).sample(ctx.rng) for d in pool["demo_sets"]}
        return max(untried, key=lambda c: (theta[c[0]] + phi[c[1]], ctx.rng.random()))


def _combine(rows: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    """Pool (n, mean, m2) rows into one (Chan et al.)."""
    n_tot, mean_tot, m2_tot = 0, 0.0, 0.0
    for n, mean, m2 in rows:
        if n == 0:
            continue
        delta = mean - mean_tot
        new = n_tot + n
        mean_tot += delta * n / new
        m2_tot += m2 + delta * delta * n_tot * n / new
        n_tot = new
    return n_tot, mean_tot, m2_tot


def _scored(traces: Sequence[Trace]) -> list[tuple[float, Trace]]:
    """``(reward, trace)`` of the rewarded traces, in their order."""
    return [(t.reward, t) for t in traces if t.reward is not None]


def _distinct(traces: Sequence[Trace], limit: int) -> list[Trace]:
    """The first ``limit`` traces with distinct inputs, in order."""
    out: list[Trace] = []
    seen: set[str] = set()
    for t in traces:
        key = t.input or ""
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
        if len(out) >= limit:
            break
    return out
