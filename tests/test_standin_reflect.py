"""The reflective stand-in proposer: it writes label descriptions from failed rollouts
(query, answer, expected label), keeps what the parent said, and sees only the prompt."""

from __future__ import annotations

import json
import random

import openai
from conftest import BANKING77_DIR

from synth_middleware.demos.banking77 import data
from synth_middleware.demos.standin import StandInModel, standin_completion
from synth_middleware.demos.standin.reflect import GUIDE_HEADER, parse_rollouts
from synth_middleware.engine.optimizers.base import Trace
from synth_middleware.engine.proposer import (
    Proposer,
    extract_instruction,
    gepa_merge_prompt,
    gepa_reflection_prompt,
)

LABELS = ["billing_issue", "hardware_fault", "password_reset"]


def _trace(i: int, query: str, said: str, expected: str | None) -> Trace:
    return Trace(
        rollout_id=f"r{i}",
        candidate_id="c",
        input=f"Ticket: {query}\n\nLabels: {', '.join(LABELS)}",
        output=json.dumps({"label": said}),
        reward=float(said == expected) if expected else 0.0,
        feedback=None,
        bucket=None,
        expected=expected,
    )


def _propose(prompt: str, labels: list[str] | None = LABELS) -> str:
    answer = standin_completion({"messages": [{"role": "user", "content": prompt}]}, labels=labels)
    assert answer["synth_standin"]["kind"] == "proposer"
    text = extract_instruction(answer["choices"][0]["message"]["content"])
    assert text is not None
    return text


def _classify(system: str, query: str) -> str:
    body = {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Ticket: {query}"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "pick",
                    "parameters": {
                        "type": "object",
                        "properties": {"label": {"type": "string", "enum": LABELS}},
                    },
                },
            }
        ],
    }
    answer = standin_completion(body)
    return str(
        json.loads(answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])[
            "label"
        ]
    )


PARENT = "Route support tickets.\n\n- password_reset: the user cannot log in"
MISSED = "the keyboard keys stick"


def test_reflection_writes_what_the_failures_teach() -> None:
    batch = [
        _trace(1, MISSED, "password_reset", "hardware_fault"),
        _trace(2, "my keyboard does not type", "billing_issue", "hardware_fault"),
        _trace(3, "I was charged twice", "billing_issue", "billing_issue"),
    ]
    prompt = gepa_reflection_prompt(instruction=PARENT, examples=batch)
    assert [r.expected for r in parse_rollouts(prompt)] == [t.expected for t in batch]
    child = _propose(prompt)
    assert child.startswith("Route support tickets.")
    assert GUIDE_HEADER in child
    assert "- password_reset: the user cannot log in" in child  # the parent's text is kept
    line = next(x for x in child.splitlines() if x.startswith("- hardware_fault:"))
    assert f'"{MISSED}"' in line
    assert "Key words: keyboard." in line  # recurs in both missed queries
    assert "Not to be confused with `password_reset`, `billing_issue`." in line
    assert '- billing_issue: Examples: "I was charged twice".' in child  # what works
    # the stand-in model reads what the proposer wrote: the missed query is now right
    assert _classify(PARENT, MISSED) != "hardware_fault"
    assert _classify(child, MISSED) == "hardware_fault"
    # deterministic: the same prompt, the same instruction
    assert _propose(prompt) == child


def test_successive_reflections_accumulate() -> None:
    first = _propose(
        gepa_reflection_prompt(
            instruction=PARENT, examples=[_trace(1, MISSED, "billing_issue", "hardware_fault")]
        )
    )
    second = _propose(
        gepa_reflection_prompt(
            instruction=first,
            examples=[_trace(2, "I forgot my pin", "billing_issue", "password_reset")],
        )
    )
    assert f'"{MISSED}"' in second and '"I forgot my pin"' in second
    assert "- password_reset: the user cannot log in" in second
    assert second.count(GUIDE_HEADER) == 1
    # the labels the proposer writes about are the ones it learnt from, nothing else
    assert "billing_issue:" not in second


def test_nothing_to_learn_leaves_the_instruction_unchanged() -> None:
    unlabelled = [_trace(1, MISSED, "billing_issue", None)]
    prompt = gepa_reflection_prompt(instruction=PARENT, examples=unlabelled)
    assert _propose(prompt) == PARENT
    assert _propose(gepa_reflection_prompt(instruction=PARENT, examples=[])) == PARENT


def test_merge_unites_two_guides() -> None:
    a = _propose(
        gepa_reflection_prompt(
            instruction=PARENT, examples=[_trace(1, MISSED, "billing_issue", "hardware_fault")]
        )
    )
    b = _propose(
        gepa_reflection_prompt(
            instruction=PARENT,
            examples=[_trace(2, "refund my card fee", "hardware_fault", "billing_issue")],
        )
    )
    merged = _propose(gepa_merge_prompt(ancestor=PARENT, first=a, second=b))
    assert f'"{MISSED}"' in merged and '"refund my card fee"' in merged
    assert merged.count("- password_reset: the user cannot log in") == 1


def test_the_proposer_never_sees_a_test_query() -> None:
    ds = data.load(BANKING77_DIR)
    rng = random.Random(3)
    rollouts = rng.sample(ds.train, 40)
    traces = [
        Trace(
            f"r{i}",
            "c",
            f"Customer query: {ex.text}",
            json.dumps({"intent": ds.labels[(i * 7) % len(ds.labels)]}),
            0.0,
            None,
            None,
            ex.label,
        )
        for i, ex in enumerate(rollouts)
    ]
    prompt = gepa_reflection_prompt(instruction="Classify banking queries.", examples=traces)
    child = _propose(prompt, list(ds.labels))
    train_texts = {ex.text for ex in ds.train}
    test_only = [ex.text for ex in ds.test if ex.text not in train_texts and len(ex.text) > 20]
    assert test_only
    assert not [q for q in test_only if q in child]
    # every example it writes is a query of the prompt's (training) rollouts
    quoted = [q for line in child.splitlines() for q in line.split('"')[1::2]]
    flat = " ".join(prompt.split())
    assert quoted and all(q in flat for q in quoted)


def test_the_engine_proposer_calls_it_over_http() -> None:
    prompt = gepa_reflection_prompt(
        instruction=PARENT, examples=[_trace(1, MISSED, "billing_issue", "hardware_fault")]
    )
    with StandInModel(LABELS) as model:
        client = openai.OpenAI(base_url=model.url, api_key="none", max_retries=0)
        text = Proposer(client, "standin").complete(prompt)
        assert model.counts["proposals"] == 1
    assert "Stand-in reflective proposer" in text and "not an LLM" in text
    child = extract_instruction(text)
    assert child is not None and f'"{MISSED}"' in child
