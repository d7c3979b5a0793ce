"""The offline stand-in model on Banking77: nearest label by word embeddings over what the
prompt says about each label, chat-completions answers (tool calls too), the reflective
stand-in proposer's answers."""

from __future__ import annotations

import json
import random

import openai
import pytest
from conftest import BANKING77_DIR

from synth_middleware.demos.banking77 import data
from synth_middleware.demos.banking77.parsing import (
    LabelSet,
    extract_query,
    label_of,
    normalize_label,
)
from synth_middleware.demos.banking77.standin import (
    FINGERPRINT,
    MODEL_NAME,
    StandInModel,
    standin_completion,
)
from synth_middleware.demos.banking77.task import Banking77Task
from synth_middleware.engine.optimizers.base import Trace
from synth_middleware.engine.optimizers.mipro import render_candidate
from synth_middleware.engine.proposer import extract_instruction, mipro_instruction_prompt


@pytest.fixture(scope="module")
def ds() -> data.Banking77:
    return data.load(BANKING77_DIR)


@pytest.fixture(scope="module")
def task(ds: data.Banking77) -> Banking77Task:
    return Banking77Task(ds.labels)


def _ask(task: Banking77Task, query: str, system: str | None = None, **kw: object) -> str | None:
    body = {"messages": task.messages(query, system_prompt=system), **task.request_params(), **kw}
    return task.parse(standin_completion(body)).label


def _demo(task: Banking77Task, query: str, label: str) -> dict[str, str]:
    """A demo exactly as the optimizer records it: the user turn and the tool arguments."""
    return {"input": task.user_message(query), "output": json.dumps({"intent": label})}


def test_answers_a_forced_tool_call_and_says_what_it_is(task: Banking77Task) -> None:
    body = {"messages": task.messages("I want to activate my new card"), **task.request_params()}
    answer = standin_completion(body)
    assert answer["model"] == MODEL_NAME and answer["system_fingerprint"] == FINGERPRINT
    assert "not an LLM" in answer["synth_standin"]["note"]
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "banking77_classify"
    assert json.loads(call["function"]["arguments"]) == {"intent": "activate_my_card"}


def test_plain_text_mode_uses_the_default_labels(task: Banking77Task) -> None:
    body = {"messages": task.messages("I want to activate my new card")}
    answer = standin_completion(body, labels=task.labels)
    assert answer["choices"][0]["message"]["content"] == "activate_my_card"


def test_examples_in_the_system_prompt_change_the_answer(task: Banking77Task) -> None:
    query = "I still have not received my new card"
    assert _ask(task, query) != "card_arrival"  # label names alone get this one wrong
    content, payload = render_candidate(
        task.system_prompt,
        [_demo(task, "I still have not received my card, it has not arrived", "card_arrival")],
        baseline=task.system_prompt,
        fmt="text",
    )
    assert payload is None and content is not None
    assert _ask(task, query, system=content) == "card_arrival"


def test_examples_as_conversation_turns_count_too(task: Banking77Task) -> None:
    query = "I still have not received my new card"
    demo = _demo(task, "I still have not received my card, it has not arrived", "card_arrival")
    messages = task.messages(query)
    messages[1:1] = [
        {"role": "user", "content": demo["input"]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "banking77_classify", "arguments": demo["output"]},
                }
            ],
        },
    ]
    body = {"messages": messages, **task.request_params()}
    answer = standin_completion(body)
    assert answer["synth_standin"]["examples_in_prompt"] == 1
    assert task.parse(answer).label == "card_arrival"


def test_prose_about_no_label_changes_nothing(task: Banking77Task, ds: data.Banking77) -> None:
    other = f"{task.system_prompt} Think step by step and be careful; you are a world expert."
    for ex in ds.test[:50]:
        assert _ask(task, ex.text) == _ask(task, ex.text, system=other)


def test_a_description_in_prose_changes_the_answer(task: Banking77Task) -> None:
    query = "The ATM ate my card"
    assert _ask(task, query) != "card_swallowed"
    prose = f"{task.system_prompt} When a cash machine ate or kept the card, answer card_swallowed."
    assert _ask(task, query, system=prose) == "card_swallowed"
    line = f"{task.system_prompt}\n\n- card_swallowed: the ATM ate, kept or swallowed the card"
    assert _ask(task, query, system=line) == "card_swallowed"


def test_accuracy_depends_on_the_prompt_examples(task: Banking77Task, ds: data.Banking77) -> None:
    rng = random.Random(7)
    test = rng.sample(ds.test, 300)
    shots = rng.sample(ds.train, 300)
    blocks = "\n\n".join(f"Input:\n{e.text}\nOutput:\n{e.label}" for e in shots)
    with_examples = f"{task.system_prompt}\n\n{blocks}"

    def accuracy(system: str | None) -> float:
        return sum(_ask(task, e.text, system=system) == e.label for e in test) / len(test)

    base = accuracy(None)
    more = accuracy(with_examples)
    assert 0.4 < base < 0.7
    assert more > base + 0.05


def test_proposer_requests_get_a_reflective_instruction(task: Banking77Task) -> None:
    traces = [
        Trace(
            rollout_id=f"r{i}",
            candidate_id="c",
            input=task.user_message(q),
            output=json.dumps({"intent": said}),
            reward=float(said == label),
            feedback=None,
            bucket=None,
            expected=label,
        )
        for i, (q, said, label) in enumerate(
            [
                ("The ATM ate my card", "card_arrival", "card_swallowed"),
                ("what is the exchange rate", "exchange_rate", "exchange_rate"),
            ]
        )
    ]
    prompt = mipro_instruction_prompt(
        instruction=task.system_prompt,
        summary="2 inputs",
        examples=traces[1:],
        tip="Be brief.",
        failures=traces[:1],
    )
    answer = standin_completion({"messages": [{"role": "user", "content": prompt}]}, labels=None)
    text = answer["choices"][0]["message"]["content"]
    assert answer["synth_standin"]["kind"] == "proposer"
    assert text.startswith("Stand-in reflective proposer") and "not an LLM" in text
    instruction = extract_instruction(text)
    assert instruction is not None and instruction.startswith(task.system_prompt)
    assert '- card_swallowed: Examples: "The ATM ate my card".' in instruction
    assert "Not to be confused with `card_arrival`" in instruction
    # the proposed instruction is read back when it is served: the missed query is now right
    assert _ask(task, "The ATM ate my card") != "card_swallowed"
    assert _ask(task, "The ATM ate my card", system=instruction) == "card_swallowed"
    # asked again with that instruction as the current one: nothing new to add
    again = mipro_instruction_prompt(
        instruction=instruction,
        summary="2 inputs",
        examples=traces[1:],
        tip="Be brief.",
        failures=traces[:1],
    )
    answer = standin_completion({"messages": [{"role": "user", "content": again}]})
    assert extract_instruction(answer["choices"][0]["message"]["content"]) == instruction


def test_unrewarded_examples_without_a_label_are_not_used(task: Banking77Task) -> None:
    bad = Trace("r", "c", "where is my card?", '{"intent": "card_arrival"}', 0.0, None, None, None)
    prompt = mipro_instruction_prompt(
        instruction="Classify.", summary="", examples=[bad], tip="Be brief."
    )
    answer = standin_completion({"messages": [{"role": "user", "content": prompt}]})
    assert extract_instruction(answer["choices"][0]["message"]["content"]) == "Classify."


def test_parsing_helpers(task: Banking77Task) -> None:
    assert normalize_label("Reverted card payment?") == "reverted_card_payment"
    assert label_of('{"intent": "reverted_card_payment?"}', task.labels) == "reverted_card_payment?"
    assert label_of("refund not showing up", task.labels) == "Refund_not_showing_up"
    assert label_of("The intent is card_arrival.", task.labels) == "card_arrival"
    assert label_of("no idea", task.labels) is None
    assert label_of('{"intent": "nope"}', task.labels) is None
    assert extract_query(task.user_message("Hello\nthere")) == "Hello\nthere"
    assert extract_query(task.user_message("Hello"), LabelSet(task.labels)) == "Hello"
    assert extract_query("just text") == "just text"


def test_served_over_http_for_an_openai_client(task: Banking77Task) -> None:
    with StandInModel(task.labels) as model:
        client = openai.OpenAI(base_url=model.url, api_key="none", max_retries=0)
        resp = client.chat.completions.create(
            model="whatever",
            messages=task.messages("I want to activate my new card"),  # type: ignore[arg-type]
            **task.request_params(),  # type: ignore[arg-type]
        )
        assert resp.model == MODEL_NAME
        assert task.parse_message(resp.choices[0].message).label == "activate_my_card"
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages="nope")  # type: ignore[arg-type]
        assert model.counts["classifications"] == 1
