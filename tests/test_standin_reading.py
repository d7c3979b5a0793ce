"""The stand-in model's reading rule (generic label sets, no dataset): which prompt text
goes to which label, and that it changes the answers of the real server."""

from __future__ import annotations

import json
import logging
import time

import openai
import pytest

from synth_middleware.demos.standin import StandInModel, standin_completion
from synth_middleware.demos.standin.parsing import LabelSet, extract_query
from synth_middleware.demos.standin.reading import label_mentions, read_prompt


def _tool(labels: list[str]) -> dict[str, object]:
    return {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {"answer": {"type": "string", "enum": labels}},
            },
        },
    }


def _ask(labels: list[str], query: str, system: str = "Classify the message.", **kw: str) -> str:
    user = kw.get("user", f"Query: {query}")
    body = {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "tools": [_tool(labels)],
    }
    answer = standin_completion(body)
    return str(
        json.loads(answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])[
            "answer"
        ]
    )


def test_a_label_description_changes_the_answer_over_http() -> None:
    labels = ["alpha", "beta"]
    query = "the printer jammed again"
    described = "Classify.\n- {}: hardware problems such as a printer jam or a broken screen"
    with StandInModel() as model:
        client = openai.OpenAI(base_url=model.url, api_key="none", max_retries=0)

        def ask(system: str) -> str:
            resp = client.chat.completions.create(
                model="standin",
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"Message: {query}"},
                ],
                tools=[_tool(labels)],  # type: ignore[list-item]
            )
            call = resp.choices[0].message.tool_calls[0]  # type: ignore[index]
            return str(json.loads(call.function.arguments)["answer"])  # type: ignore[union-attr]

        assert ask(described.format("alpha")) == "alpha"
        assert ask(described.format("beta")) == "beta"
        assert model.counts["classifications"] == 2


def test_the_reading_rule_attributes_text_to_labels() -> None:
    prompt = "\n".join(
        [
            "You are a careful assistant. Think step by step.",  # about no label: nobody
            "",
            "## beta",  # a heading: the lines under it, up to a blank line
            "hardware issues",
            "- printers",
            "",
            "Use `alpha` for billing questions.",  # a quoted one-word label in prose
            "- beta: screens. Not to be confused with alpha: invoices and refunds.",
            "  and keyboards",  # a continuation line (indented deeper)
            "1. **gamma_ray**: radiation",  # numbered, bold, separator
            "The delta_force team handles the rest.",  # a two-word label, bare
            "Input:",
            "Query: my bill",
            "Output:",
            '{"answer": "alpha"}',
        ]
    )
    reading = read_prompt([prompt], ["alpha", "beta", "gamma_ray", "delta_force"])
    assert reading.texts["beta"] == ["hardware issues", "printers", "screens", "and keyboards"]
    assert reading.texts["alpha"] == ["Use", "for billing questions", "invoices and refunds"]
    assert reading.texts["gamma_ray"] == ["radiation"]
    assert reading.texts["delta_force"] == ["The", "team handles the rest"]
    assert reading.examples == [("my bill", "alpha")]
    assert reading.document("gamma_ray") == "gamma ray. radiation"
    # a bare one-word label in prose is an ordinary word, a quoted one is a mention
    known = LabelSet(["yes", "no", "card_arrival"])
    assert label_mentions("yes, the card_arrival is late", known) == ["card_arrival"]
    assert label_mentions('answer "yes" or `no`', known) == ["yes", "no"]


def test_yes_no_labels_work() -> None:
    labels = ["yes", "no"]
    assert _ask(labels, "yes, absolutely") == "yes"
    assert _ask(labels, "no, not at all") == "no"
    assert _ask(labels[::-1], "sure, of course") == "yes"


@pytest.mark.parametrize("reverse", [False, True])
def test_queries_with_no_word_in_common_do_not_go_to_the_first_label(reverse: bool) -> None:
    labels = ["alarm_query", "weather_query", "play_music"]
    labels = labels[::-1] if reverse else labels
    assert _ask(labels, "will it rain tomorrow") == "weather_query"
    assert _ask(labels, "put on some jazz") == "play_music"
    assert _ask(labels, "wake me at six") == "alarm_query"


def test_templates_without_a_query_line_work() -> None:
    labels = ["alarm_query", "weather_query", "play_music"]
    listing = "\n".join(f"- {x}" for x in labels)
    for user in (
        "put on some jazz",
        f"put on some jazz\n\nChoose one of: {', '.join(labels)}",
        f"Pick the intent.\n{listing}\n\nput on some jazz",
        f"User message: put on some jazz\nLabels: {', '.join(labels)}",
    ):
        assert _ask(labels, "", user=user) == "play_music", user
    known = LabelSet(labels)
    assert extract_query("Text: hello there\nLabels: a, b") == "hello there"
    assert extract_query("Input:\nCustomer query: where is it\n\nList: a") == "where is it"
    assert extract_query(f"hello there\nOptions: {', '.join(labels)}", known) == "hello there"


def test_a_prompt_is_read_once_and_a_request_is_cheap() -> None:
    labels = [f"label_{i}_topic" for i in range(80)]
    system = "Classify.\n" + "\n".join(
        f"- {x}: things about topic number {i}" for i, x in enumerate(labels)
    )
    _ask(labels, "warm up", system)
    start = time.perf_counter()
    for i in range(200):
        _ask(labels, f"a question about topic {i}", system)
    per_request = (time.perf_counter() - start) / 200
    assert per_request < 0.01  # reading and embedding 80 documents happens once, not per call


def test_loading_the_encoder_leaves_the_apps_logging_alone() -> None:
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from synth_middleware.demos.standin.embedding import get_encoder\n"
        "get_encoder().embed(['hello'])\n"
        "print(len(logging.getLogger().handlers), logging.getLogger().level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", str(logging.WARNING)]
