"""Tests for candidate parsing and just-in-time application."""

from __future__ import annotations

import copy
import json
import timeit
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth_middleware.client.candidates import (
    Candidate,
    extract_prompt_text,
    parse_candidate,
    system_text,
)
from synth_middleware.errors import CandidateError

SYS = {"role": "system", "content": "You are a helpful assistant."}
USER = {"role": "user", "content": "Where is my card?"}


def _text_item(**fields: Any) -> dict[str, Any]:
    return {"candidate_id": "c1", **fields}


# --------------------------------------------------------------------------- plain text


@pytest.mark.parametrize(
    "key", ["candidate_content", "candidate_code", "prompt_text", "instruction", "text"]
)
def test_each_top_level_text_key(key: str) -> None:
    cand = parse_candidate(_text_item(**{key: "Be terse."}))
    assert cand.kind == "text"
    assert cand.text == "Be terse."
    assert cand.candidate_id == "c1"
    assert cand.instructions() == "Be terse."


def test_text_key_order_candidate_content_first() -> None:
    item = _text_item(
        text="fifth",
        instruction="fourth",
        prompt_text="third",
        candidate_code="second",
        candidate_content="first",
    )
    assert parse_candidate(item).text == "first"
    del item["candidate_content"]
    assert parse_candidate(item).text == "second"
    del item["candidate_code"]
    assert parse_candidate(item).text == "third"


def test_blank_text_falls_through_to_next_key() -> None:
    cand = parse_candidate(_text_item(candidate_content="   ", prompt_text="real"))
    assert cand.text == "real"


def test_top_level_text_wins_over_artifact_payload() -> None:
    cand = parse_candidate(
        _text_item(prompt_text="top", artifact_payload={"prompt_text": "nested"})
    )
    assert cand.text == "top"


def test_artifact_payload_string_is_the_text() -> None:
    assert parse_candidate(_text_item(artifact_payload="From payload.")).text == "From payload."


@pytest.mark.parametrize(
    "key", ["candidate_content", "candidate_code", "prompt_text", "instruction", "text"]
)
def test_artifact_payload_dict_text_keys(key: str) -> None:
    cand = parse_candidate(_text_item(artifact_payload={key: "Nested text."}))
    assert (cand.kind, cand.text) == ("text", "Nested text.")


def test_artifact_payload_nested_data_text() -> None:
    cand = parse_candidate(_text_item(artifact_payload={"data": {"prompt_text": "Deep."}}))
    assert cand.text == "Deep."


def test_is_baseline_flag() -> None:
    assert parse_candidate(_text_item(text="x", is_baseline=True)).is_baseline is True
    assert parse_candidate(_text_item(text="x")).is_baseline is False
    assert parse_candidate(_text_item(text="x", is_baseline="true")).is_baseline is True


def test_json_string_that_is_not_structured_stays_text() -> None:
    raw = '{"not": "a payload"}'
    assert parse_candidate(_text_item(candidate_content=raw)).text == raw
    assert parse_candidate(_text_item(candidate_content="{oops")).text == "{oops"


def test_json_string_with_text_key() -> None:
    raw = json.dumps({"prompt_text": "Unwrapped."})
    assert parse_candidate(_text_item(candidate_content=raw)).text == "Unwrapped."


# --------------------------------------------------------------------------- text apply


def test_apply_replaces_system_message_only() -> None:
    cand = parse_candidate(_text_item(candidate_content="New prompt."))
    out = cand.apply([SYS, USER])
    assert out == [{"role": "system", "content": "New prompt."}, USER]
    assert out[1] is USER  # untouched messages are shared, not copied


def test_apply_inserts_system_when_absent() -> None:
    cand = parse_candidate(_text_item(candidate_content="New prompt."))
    assert cand.apply([USER]) == [{"role": "system", "content": "New prompt."}, USER]
    assert cand.apply([]) == [{"role": "system", "content": "New prompt."}]


def test_apply_keeps_developer_role_and_extra_keys() -> None:
    dev = {"role": "developer", "content": "old", "name": "ops"}
    cand = parse_candidate(_text_item(candidate_content="New."))
    out = cand.apply([dev, USER])
    assert out[0] == {"role": "developer", "content": "New.", "name": "ops"}
    assert dev == {"role": "developer", "content": "old", "name": "ops"}


def test_apply_replaces_only_first_system_message() -> None:
    second = {"role": "system", "content": "second"}
    cand = parse_candidate(_text_item(candidate_content="New."))
    out = cand.apply([USER, SYS, second])
    assert out == [USER, {"role": "system", "content": "New."}, second]


def test_apply_content_parts_become_string() -> None:
    parts_sys = {
        "role": "system",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    cand = parse_candidate(_text_item(candidate_content="New."))
    assert cand.apply([parts_sys, USER])[0] == {"role": "system", "content": "New."}


def test_apply_does_not_mutate_and_preserves_tool_messages() -> None:
    messages = [
        SYS,
        USER,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "t1", "content": "42"},
    ]
    before = copy.deepcopy(messages)
    out = parse_candidate(_text_item(candidate_content="New.")).apply(messages)
    assert messages == before
    assert out is not messages
    assert out[1:] == before[1:]
    assert all(a is b for a, b in zip(out[1:], messages[1:], strict=True))


def test_apply_tolerates_non_dict_messages() -> None:
    # Apps sometimes pass SDK message objects back in; they must pass through untouched.
    obj = SimpleNamespace(role="assistant", content="hi")
    sys_obj = SimpleNamespace(role="system", content="old", name="n")
    cand = parse_candidate(_text_item(candidate_content="New."))
    out = cand.apply([USER, obj])  # type: ignore[list-item]
    assert out == [{"role": "system", "content": "New."}, USER, obj]
    out = cand.apply([sys_obj, obj])  # type: ignore[list-item]
    assert out == [{"role": "system", "content": "New.", "name": "n"}, obj]
    assert sys_obj.content == "old"


def test_apply_accepts_tuple_input() -> None:
    out = parse_candidate(_text_item(candidate_content="New.")).apply((SYS, USER))
    assert isinstance(out, list)
    assert out[0]["content"] == "New."


# --------------------------------------------------------------------------- system_text


def test_system_text() -> None:
    assert system_text([USER, SYS]) == SYS["content"]
    assert system_text([USER]) is None
    assert system_text([{"role": "developer", "content": "dev"}]) == "dev"
    parts = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "b"},
    ]
    assert system_text([{"role": "system", "content": parts}]) == "ab"
    assert system_text([{"role": "system"}]) == ""


# --------------------------------------------------------------------------- transformation


def _transformation(**body: Any) -> dict[str, Any]:
    return {"candidate_id": "t1", "artifact_payload": {"object": "transformation", **body}}


def test_transformation_text_replacement_on_system_by_default() -> None:
    cand = parse_candidate(
        _transformation(text_replacements=[{"old_text": "helpful", "new_text": "precise"}])
    )
    assert cand.kind == "transformation"
    assert cand.text is None
    assert cand.instructions() is None
    user = {"role": "user", "content": "helpful?"}
    out = cand.apply([SYS, user])
    assert out == [{"role": "system", "content": "You are a precise assistant."}, user]
    assert out[1] is user  # default role is system: the user message is untouched
    assert SYS["content"] == "You are a helpful assistant."


def test_transformation_replacement_on_user_role() -> None:
    cand = parse_candidate(
        _transformation(
            text_replacements=[
                {"old_text": "card", "new_text": "debit card", "apply_to_role": "user"}
            ]
        )
    )
    out = cand.apply([SYS, USER])
    assert out == [SYS, {"role": "user", "content": "Where is my debit card?"}]
    assert USER["content"] == "Where is my card?"


def test_transformation_replacement_in_content_parts_and_developer() -> None:
    parts = [
        {"type": "text", "text": "Be helpful."},
        {"type": "image_url", "image_url": {"url": "u"}},
    ]
    msg = {"role": "developer", "content": parts}
    cand = parse_candidate(
        _transformation(text_replacements=[{"old_text": "helpful", "new_text": "brief"}])
    )
    out = cand.apply([msg, USER])
    assert out[0]["role"] == "developer"
    assert out[0]["content"] == [{"type": "text", "text": "Be brief."}, parts[1]]
    assert parts[0]["text"] == "Be helpful."


def test_transformation_example_injection_after_system() -> None:
    examples = [
        {"role": "user", "content": "lost card"},
        {"role": "assistant", "content": "card_lost"},
    ]
    cand = parse_candidate(
        _transformation(example_injections=[{"examples": examples, "insert_after_role": "system"}])
    )
    out = cand.apply([SYS, USER])
    assert out == [SYS, *examples, USER]


def test_transformation_example_injection_defaults() -> None:
    examples = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    cand = parse_candidate(_transformation(example_injections=[{"examples": examples}]))
    # Default insert_after_role is system; with no system message, examples go first.
    assert cand.apply([USER]) == [*examples, USER]
    assert cand.apply([SYS, USER]) == [SYS, *examples, USER]


def test_transformation_injection_after_user() -> None:
    ex = [{"role": "assistant", "content": "noted"}]
    cand = parse_candidate(
        _transformation(example_injections=[{"examples": ex, "insert_after_role": "user"}])
    )
    second = {"role": "user", "content": "again"}
    assert cand.apply([SYS, USER, second]) == [SYS, USER, ex[0], second]


def test_transformation_replacements_then_injections_and_no_mutation() -> None:
    cand = parse_candidate(
        _transformation(
            text_replacements=[
                {"old_text": "helpful", "new_text": "strict", "apply_to_role": "system"}
            ],
            example_injections=[{"examples": [{"role": "user", "content": "helpful"}]}],
        )
    )
    messages = [SYS, USER]
    before = copy.deepcopy(messages)
    out = cand.apply(messages)
    assert out == [
        {"role": "system", "content": "You are a strict assistant."},
        {"role": "user", "content": "helpful"},  # injected verbatim, after replacements
        USER,
    ]
    assert messages == before


def test_transformation_that_changes_nothing_returns_none() -> None:
    cand = parse_candidate(
        _transformation(text_replacements=[{"old_text": "absent words", "new_text": "x"}])
    )
    assert cand.apply([SYS, USER]) is None


def test_transformation_nested_under_data_and_object_dict() -> None:
    body = {"text_replacements": [{"old_text": "helpful", "new_text": "kind"}]}
    for item in (
        {"candidate_id": "t", "artifact_payload": {"payload_kind": "transformation", "data": body}},
        {"candidate_id": "t", "artifact_payload": {"data": {"object": "transformation", **body}}},
        {"candidate_id": "t", "object": "transformation", "data": body},  # the item itself
        {
            "candidate_id": "t",
            "candidate_content": json.dumps({"object": "transformation", **body}),
        },
    ):
        cand = parse_candidate(item)
        assert cand.kind == "transformation", item
        assert cand.apply([SYS])[0]["content"] == "You are a kind assistant."


def test_unmarked_transformation_body_is_inferred_when_no_text() -> None:
    body = {"text_replacements": [{"old_text": "helpful", "new_text": "kind"}]}
    cand = parse_candidate({"candidate_id": "t", "object": body})
    assert cand.kind == "transformation"


# --------------------------------------------------------------------------- pattern


BASELINE_PATTERN = {
    "candidate_id": "base",
    "is_baseline": True,
    "artifact_payload": {
        "object": "pattern",
        "messages": [
            {"role": "system", "order": 0, "pattern": "Classify the query."},
            {"role": "user", "order": 1, "pattern": "Query: {query}"},
        ],
    },
}

CANDIDATE_PATTERN = {
    "candidate_id": "p1",
    "artifact_payload": {
        "object": "pattern",
        "messages": [
            # Deliberately out of order: `order` decides.
            {
                "role": "user",
                "order": 1,
                "pattern": "Customer message:\n{query}\nAnswer with one label.",
            },
            {
                "role": "system",
                "order": 0,
                "pattern": "You are a banking intent classifier. Use {{label}}.",
            },
        ],
    },
}


def test_pattern_parse_sorts_by_order_and_exposes_system_text() -> None:
    cand = parse_candidate(CANDIDATE_PATTERN)
    assert cand.kind == "pattern"
    assert cand.text == "You are a banking intent classifier. Use {label}."
    assert cand.instructions() == cand.text


def test_pattern_matched_against_baseline_pattern() -> None:
    base = parse_candidate(BASELINE_PATTERN)
    cand = parse_candidate(CANDIDATE_PATTERN)
    user = {"role": "user", "content": "Query: my card {is} stuck\nin the ATM", "name": "alice"}
    messages = [{"role": "system", "content": "Classify the query."}, user]
    before = copy.deepcopy(messages)
    out = cand.apply(messages, baseline=base)
    assert out == [
        {"role": "system", "content": "You are a banking intent classifier. Use {label}."},
        {
            "role": "user",
            "content": "Customer message:\nmy card {is} stuck\nin the ATM\nAnswer with one label.",
            "name": "alice",
        },
    ]
    assert messages == before


def test_pattern_mismatch_returns_none() -> None:
    base = parse_candidate(BASELINE_PATTERN)
    cand = parse_candidate(CANDIDATE_PATTERN)
    assert cand.apply([SYS, {"role": "user", "content": "no prefix here"}], baseline=base) is None
    # Wrong number of non-system messages.
    two_users = [
        SYS,
        {"role": "user", "content": "Query: a"},
        {"role": "user", "content": "Query: b"},
    ]
    assert cand.apply(two_users, baseline=base) is None
    # Wrong role.
    assert cand.apply([SYS, {"role": "assistant", "content": "Query: a"}], baseline=base) is None
    # Non-text content cannot be matched.
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
    assert cand.apply([SYS, image], baseline=base) is None


def test_pattern_without_baseline_matches_its_own_messages() -> None:
    cand = parse_candidate(CANDIDATE_PATTERN)
    own = [SYS, {"role": "user", "content": "Customer message:\nhello\nAnswer with one label."}]
    out = cand.apply(own)
    assert out is not None
    assert out[1]["content"] == own[1]["content"]
    assert out[1] is own[1]  # same text: the app's dict is reused
    assert cand.apply([SYS, {"role": "user", "content": "Query: hello"}]) is None


def test_pattern_baseline_that_is_text_is_ignored() -> None:
    cand = parse_candidate(CANDIDATE_PATTERN)
    text_base = parse_candidate(_text_item(candidate_content="x", is_baseline=True))
    assert cand.apply([SYS, {"role": "user", "content": "Query: hi"}], baseline=text_base) is None


def test_pattern_inserts_system_and_keeps_developer_role() -> None:
    base = parse_candidate(BASELINE_PATTERN)
    cand = parse_candidate(CANDIDATE_PATTERN)
    out = cand.apply([{"role": "user", "content": "Query: hi"}], baseline=base)
    assert out is not None and out[0]["role"] == "system"
    dev = {"role": "developer", "content": "Classify the query."}
    out = cand.apply([dev, {"role": "user", "content": "Query: hi"}], baseline=base)
    assert out is not None and out[0]["role"] == "developer"


def test_pattern_repeated_and_multiple_placeholders() -> None:
    base = parse_candidate(
        {
            "candidate_id": "b",
            "artifact_payload": {
                "object": "pattern",
                "messages": [
                    {"role": "system", "pattern": "S"},
                    {"role": "user", "pattern": "From {who} to {who}: {msg}"},
                ],
            },
        }
    )
    cand = parse_candidate(
        {
            "candidate_id": "c",
            "artifact_payload": {
                "object": "pattern",
                "messages": [
                    {"role": "system", "pattern": "T"},
                    {"role": "user", "pattern": "{msg} (sender: {who})"},
                ],
            },
        }
    )
    ok = cand.apply([SYS, {"role": "user", "content": "From bo to bo: hi"}], baseline=base)
    assert ok is not None and ok[1]["content"] == "hi (sender: bo)"
    assert (
        cand.apply([SYS, {"role": "user", "content": "From bo to al: hi"}], baseline=base) is None
    )


def test_pattern_candidate_placeholder_missing_from_baseline_returns_none() -> None:
    base = parse_candidate(BASELINE_PATTERN)
    cand = parse_candidate(
        {
            "candidate_id": "c",
            "artifact_payload": {
                "object": "pattern",
                "messages": [
                    {"role": "system", "pattern": "S"},
                    {"role": "user", "pattern": "{other}"},
                ],
            },
        }
    )
    assert cand.apply([SYS, {"role": "user", "content": "Query: x"}], baseline=base) is None


def test_pattern_with_only_system_message_acts_like_text() -> None:
    cand = parse_candidate(
        {
            "candidate_id": "s",
            "artifact_payload": {
                "object": "pattern",
                "messages": [{"role": "system", "pattern": "Only system."}],
            },
        }
    )
    assert cand.text == "Only system."
    messages = [SYS, USER, {"role": "assistant", "content": "hi"}]
    out = cand.apply(messages, baseline=parse_candidate(BASELINE_PATTERN))
    assert out == [{"role": "system", "content": "Only system."}, *messages[1:]]


def test_pattern_json_string_candidate_content_nested_data() -> None:
    content = json.dumps(
        {
            "data": {
                "payload_kind": "pattern",
                "messages": CANDIDATE_PATTERN["artifact_payload"]["messages"],
            }
        }
    )
    cand = parse_candidate({"candidate_id": "p2", "candidate_content": content})
    assert cand.kind == "pattern"
    out = cand.apply(
        [SYS, {"role": "user", "content": "Query: q"}], baseline=parse_candidate(BASELINE_PATTERN)
    )
    assert out is not None and "q" in out[1]["content"]


def test_pattern_content_key_is_accepted() -> None:
    cand = parse_candidate(
        {
            "candidate_id": "p",
            "artifact_payload": {
                "object": "pattern",
                "messages": [
                    {"role": "system", "content": "Sys"},
                    {"role": "user", "content": "{q}"},
                ],
            },
        }
    )
    assert cand.apply([SYS, {"role": "user", "content": "anything"}]) == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "anything"},
    ]


def test_structured_payload_wins_over_plain_text() -> None:
    item = {**CANDIDATE_PATTERN, "candidate_content": "plain text"}
    assert parse_candidate(item).kind == "pattern"


# --------------------------------------------------------------------------- template (legacy)


def test_legacy_template_sections() -> None:
    item = {
        "candidate_id": "tpl",
        "artifact_payload": {
            "object": "template",
            "sections": [
                {"role": "system", "content": "Legacy system.", "name": "instructions"},
                {"role": "user", "content": "Q: {query}", "name": "question"},
            ],
        },
    }
    cand = parse_candidate(item)
    assert (cand.kind, cand.text) == ("template", "Legacy system.")
    out = cand.apply(
        [SYS, {"role": "user", "content": "Query: hi"}], baseline=parse_candidate(BASELINE_PATTERN)
    )
    assert out == [
        {"role": "system", "content": "Legacy system."},
        {"role": "user", "content": "Q: hi"},
    ]
    # The section `name` is a label, not a message field sent to the model.
    assert all("name" not in m for m in out)


def test_extract_prompt_text() -> None:
    assert extract_prompt_text(_text_item(prompt_text="T")) == "T"
    assert extract_prompt_text({"artifact_payload": "no id needed"}) == "no id needed"
    assert (
        extract_prompt_text(CANDIDATE_PATTERN)
        == "You are a banking intent classifier. Use {label}."
    )
    assert (
        extract_prompt_text(_transformation(text_replacements=[{"old_text": "a", "new_text": "b"}]))
        is None
    )
    assert extract_prompt_text({"candidate_id": "x"}) is None
    assert extract_prompt_text({"candidate_id": "x", "text": 5}) is None


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"candidate_content": "x"}, "candidate_id"),
        ({"candidate_id": "", "candidate_content": "x"}, "candidate_id"),
        ({"candidate_id": 7, "candidate_content": "x"}, "candidate_id"),
        ({"candidate_id": "bad1"}, "no prompt text"),
        ({"candidate_id": "bad1", "candidate_content": "  "}, "no prompt text"),
        ({"candidate_id": "bad1", "candidate_content": 42}, "candidate_content must be a string"),
        ({"candidate_id": "bad1", "artifact_payload": ["x"]}, "artifact_payload must be a string"),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {"object": "transformation", "text_replacements": {"a": "b"}},
            },
            "text_replacements must be a list",
        ),
        (
            {"candidate_id": "bad1", "artifact_payload": {"object": "transformation"}},
            "neither text_replacements",
        ),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {
                    "object": "transformation",
                    "text_replacements": [{"new_text": "x"}],
                },
            },
            "old_text",
        ),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {
                    "object": "transformation",
                    "text_replacements": [{"old_text": "a", "new_text": 3}],
                },
            },
            "new_text",
        ),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {
                    "object": "transformation",
                    "example_injections": [{"examples": "x"}],
                },
            },
            "examples must be a list",
        ),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {
                    "object": "transformation",
                    "example_injections": [{"examples": [{"role": "user", "content": ["x"]}]}],
                },
            },
            "content must be a string",
        ),
        (
            {"candidate_id": "bad1", "artifact_payload": {"object": "pattern"}},
            "pattern has no messages",
        ),
        (
            {"candidate_id": "bad1", "artifact_payload": {"object": "pattern", "messages": []}},
            "non-empty list",
        ),
        (
            {"candidate_id": "bad1", "artifact_payload": {"object": "pattern", "messages": ["x"]}},
            "must be an object",
        ),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {
                    "object": "pattern",
                    "messages": [{"role": "user", "pattern": 3}],
                },
            },
            "pattern must be a string",
        ),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {"object": "pattern", "messages": [{"pattern": "x"}]},
            },
            "role must be a non-empty string",
        ),
        (
            {
                "candidate_id": "bad1",
                "artifact_payload": {
                    "object": "pattern",
                    "messages": [{"role": "user", "pattern": "x", "order": "1"}],
                },
            },
            "order must be an integer",
        ),
        (
            {"candidate_id": "bad1", "artifact_payload": {"object": "template", "sections": "x"}},
            "sections must be a non-empty list",
        ),
    ],
)
def test_malformed_candidates_raise_clear_errors(item: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CandidateError) as info:
        parse_candidate(item)
    message = str(info.value)
    assert fragment in message
    if item.get("candidate_id") == "bad1":
        assert "'bad1'" in message  # the error names the candidate


def test_non_mapping_item_raises() -> None:
    with pytest.raises(CandidateError, match="JSON object"):
        parse_candidate(["not", "a", "dict"])  # type: ignore[arg-type]


def test_candidate_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_candidate({"candidate_id": "x"})


def test_hand_built_candidate_is_validated() -> None:
    assert Candidate("c", "text", "ok").apply([]) == [{"role": "system", "content": "ok"}]
    with pytest.raises(CandidateError):
        Candidate("c", "text", None)
    with pytest.raises(CandidateError):
        Candidate("c", "pattern", "x", payload={"messages": []})
    with pytest.raises(CandidateError):
        Candidate("c", "mystery", "x")


def test_candidates_are_hashable_and_comparable() -> None:
    a = parse_candidate(CANDIDATE_PATTERN)
    b = parse_candidate(copy.deepcopy(CANDIDATE_PATTERN))
    assert a == b
    assert hash(a) == hash(b)
    t = parse_candidate(
        _transformation(example_injections=[{"examples": [{"role": "user", "content": "x"}]}])
    )
    assert hash(t) == hash(
        parse_candidate(
            _transformation(example_injections=[{"examples": [{"role": "user", "content": "x"}]}])
        )
    )


# --------------------------------------------------------------------------- properties


_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "other"])
_text = st.text(max_size=40)
_content = st.one_of(
    st.none(),
    _text,
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
            st.fixed_dictionaries(
                {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": _text})}
            ),
        ),
        max_size=3,
    ),
)
_message = st.fixed_dictionaries(
    {"role": _roles, "content": _content},
    optional={
        "name": _text,
        "tool_call_id": _text,
        "tool_calls": st.lists(st.fixed_dictionaries({"id": _text}), max_size=2),
    },
)
_messages = st.lists(_message, max_size=8)
_prompt = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "")


def _non_system(messages: list[Any]) -> list[Any]:
    """Everything except the first system/developer message, in order."""
    out = []
    skipped = False
    for m in messages:
        if not skipped and m.get("role") in ("system", "developer"):
            skipped = True
            continue
        out.append(m)
    return out


@settings(max_examples=300, deadline=None)
@given(messages=_messages, prompt=_prompt)
def test_property_text_apply_is_pure_and_keeps_other_messages(
    messages: list[Any], prompt: str
) -> None:
    cand = parse_candidate({"candidate_id": "h", "candidate_content": prompt})
    before = copy.deepcopy(messages)
    out = cand.apply(messages)
    assert messages == before  # never mutates the input
    assert out is not None and out is not messages
    assert system_text(out) == prompt
    kept = _non_system(out)
    original = _non_system(messages)
    assert kept == original
    assert all(a is b for a, b in zip(kept, original, strict=True))
    assert len(out) == len(messages) + (0 if system_text(messages) is not None else 1)


@settings(max_examples=200, deadline=None)
@given(messages=_messages, old=_prompt, new=_text, role=st.sampled_from(["system", "user", "all"]))
def test_property_transformation_never_mutates(
    messages: list[Any], old: str, new: str, role: str
) -> None:
    cand = parse_candidate(
        _transformation(
            text_replacements=[{"old_text": old, "new_text": new, "apply_to_role": role}]
        )
    )
    before = copy.deepcopy(messages)
    out = cand.apply(messages)
    assert messages == before
    if out is not None:
        assert len(out) == len(messages)
        assert [m.get("role") for m in out] == [m.get("role") for m in messages]


@settings(max_examples=200, deadline=None)
@given(messages=_messages)
def test_property_pattern_apply_never_raises_or_mutates(messages: list[Any]) -> None:
    base = parse_candidate(BASELINE_PATTERN)
    cand = parse_candidate(CANDIDATE_PATTERN)
    before = copy.deepcopy(messages)
    out = cand.apply(messages, baseline=base)
    assert messages == before
    assert out is None or isinstance(out, list)


@settings(max_examples=200, deadline=None)
@given(query=st.text(max_size=80))
def test_property_pattern_roundtrips_any_query(query: str) -> None:
    base = parse_candidate(BASELINE_PATTERN)
    cand = parse_candidate(CANDIDATE_PATTERN)
    out = cand.apply([SYS, {"role": "user", "content": f"Query: {query}"}], baseline=base)
    assert out is not None
    assert out[1]["content"] == f"Customer message:\n{query}\nAnswer with one label."


# --------------------------------------------------------------------------- timing (reported)


def test_report_text_apply_time(capsys: pytest.CaptureFixture[str]) -> None:
    cand = parse_candidate({"candidate_id": "perf", "candidate_content": "You are terse."})
    messages = [SYS, USER]
    apply = cand.apply
    n = 100_000
    best = min(timeit.repeat(lambda: apply(messages), number=n, repeat=5)) / n
    with capsys.disabled():
        print(f"\ncandidate text apply(): {best * 1e6:.3f} us per call (2 messages)")
