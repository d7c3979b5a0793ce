"""Property-based tests: random and malformed candidates from the backend, through
the wrapped client, against the real local OpenAI-compatible server.

Whatever the backend sends as a candidate (random JSON, half-valid structured
payloads, hostile text), a call through the wrapped client:

* never raises into the app;
* never drops or alters the app's own non-system messages when the candidate
  only speaks about the system prompt (text candidates, system-only
  transformations), and otherwise sends exactly what the candidate's own
  ``apply`` defines (or the app's messages untouched);
* never loses tools, tool_choice, temperature, response_format or extra body
  keys on the way to the model;
* never mutates the app's own message list.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import synth_middleware as synth
from synth_middleware.client.candidates import parse_candidate
from synth_middleware.errors import CandidateError

BASELINE = "You are a support assistant. Classify the user's request."
_sessions = itertools.count()


class StubBackend:
    """An in-memory backend that answers one fixed (possibly hostile) candidate."""

    def __init__(self, item: Any) -> None:
        self.item = item

    def _state(self, session_id: str) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "baseline_candidate_id": "base",
            "best_candidate_id": "x",
            "generation": 1,
            "candidates": [
                {"candidate_id": "base", "trials": 0},
                {"candidate_id": "x", "trials": 0},
            ],
        }

    def ensure_session(self, session_id: str, **kw: Any) -> dict[str, Any]:
        return self._state(session_id)

    def get_state(self, session_id: str) -> dict[str, Any]:
        return self._state(session_id)

    def list_candidates(self, session_id: str, **kw: Any) -> dict[str, Any]:
        base = {"candidate_id": "base", "prompt_text": BASELINE, "is_baseline": True}
        return {"items": [base, self.item], "next_cursor": None}

    def get_candidate(self, candidate_id: str) -> Any:
        return self.item

    def record_rollouts(self, rollouts: Any) -> None:
        pass

    def record_rewards(self, rewards: Any) -> list[dict[str, Any]]:
        return [{"status": "accepted"} for _ in rewards]

    def close(self) -> None:
        pass


def _serve_x(candidates: Any, rollout: Any) -> str:
    return "x"


# --------------------------------------------------------------------------- strategies

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "", "SYSTEM", 7])
_replacement = st.fixed_dictionaries(
    {"old_text": _text | _json, "new_text": _text | _json},
    optional={"apply_to_role": _roles},
)
_injection = st.fixed_dictionaries(
    {"examples": st.lists(st.dictionaries(_text, _text | _json, max_size=3), max_size=3) | _json},
    optional={"insert_after_role": _roles},
)
_transformation = st.fixed_dictionaries(
    {"object": st.sampled_from(["transformation", "Transformation", "x"])},
    optional={
        "text_replacements": st.lists(_replacement, max_size=3) | _json,
        "example_injections": st.lists(_injection, max_size=2) | _json,
    },
)
_template_text = st.lists(
    st.sampled_from(["{text}", "{x}", "{", "}", "{{", "}}", "Intent: ", " ", "abc"]) | _text,
    max_size=5,
).map("".join)
_pattern_msg = st.fixed_dictionaries(
    {"role": _roles, "pattern": _template_text},
    optional={"order": st.integers(-3, 3) | _json, "name": _text},
)
_pattern = st.fixed_dictionaries(
    {
        "object": st.sampled_from(["pattern", "template"]),
        "messages": st.lists(_pattern_msg, max_size=4) | _json,
    },
    optional={"sections": st.lists(_pattern_msg, max_size=3) | _json},
)
_payload = _transformation | _pattern | _json | _text
_item = st.one_of(
    # well-formed text candidates with hostile text
    st.builds(lambda t: {"candidate_id": "x", "prompt_text": t}, _text),
    # structured payloads in every place the parser looks
    st.builds(lambda p: {"candidate_id": "x", "artifact_payload": p}, _payload),
    st.builds(lambda p: {"candidate_id": "x", "candidate_content": p}, _payload | _json),
    st.builds(lambda p: {"candidate_id": "x", "data": p, "object": "transformation"}, _payload),
    # wholly random objects (with and without the id)
    st.dictionaries(_text, _json, max_size=5).map(lambda d: {**d, "candidate_id": "x"}),
    _json,
)

_user_messages = st.lists(
    st.one_of(
        st.builds(lambda t: {"role": "user", "content": t}, _text),
        st.builds(lambda t: {"role": "user", "content": [{"type": "text", "text": t}]}, _text),
        st.builds(lambda t: {"role": "user", "name": "alice", "content": t}, _text),
        st.builds(lambda t: {"role": "assistant", "content": t}, _text),
    ),
    min_size=1,
    max_size=4,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_card",
            "description": "Look a card up.",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    }
]


def _system_only(item: Any) -> bool:
    """True when the parsed candidate can only touch the system prompt."""
    try:
        cand = parse_candidate(item)
    except (CandidateError, Exception):
        return True  # skipped: the app's own messages are sent
    if cand.kind == "text":
        return True
    if cand.kind == "transformation":
        tf = cand.payload
        return not tf.injections and all(
            r.apply_to_role in ("system", "developer") for r in tf.replacements
        )
    return False


@pytest.fixture(scope="module")
def model(model_server):  # type: ignore[no-untyped-def]
    return model_server


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(item=_item, users=_user_messages, temperature=st.floats(0, 2))
def test_random_candidate_never_breaks_the_call(model, item, users, temperature) -> None:  # type: ignore[no-untyped-def]
    model.reset()
    session = f"prop-{next(_sessions)}"
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=model.url, max_retries=0),
        session=session,
        backend=StubBackend(item),  # type: ignore[arg-type]
        selection=_serve_x,
        warm=True,
        ttl=3600,
    )
    messages = [{"role": "system", "content": BASELINE}, *users]
    sent = copy.deepcopy(messages)
    resp = client.chat.completions.create(
        model="m",
        messages=messages,
        tools=TOOLS,
        tool_choice="auto",
        temperature=temperature,
        response_format={"type": "json_object"},
        extra_body={"x_custom": {"keep": [1, 2, 3]}, "metadata_tag": "t"},
    )
    assert resp.choices  # the call went through
    assert messages == sent, "the app's own message list was mutated"

    body = model.last_request()
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == "auto"
    assert body["temperature"] == temperature
    assert body["response_format"] == {"type": "json_object"}
    assert body["x_custom"] == {"keep": [1, 2, 3]}
    assert body["metadata_tag"] == "t"
    assert body["model"] == "m"

    got = body["messages"]
    if _system_only(item):
        non_system = [m for m in got if m.get("role") not in ("system", "developer")]
        assert non_system == users, "the user's own messages were dropped or altered"
        try:
            cand = parse_candidate(item)
        except Exception:
            cand = None
        if cand is not None and cand.kind == "text":
            assert got[0] == {"role": "system", "content": cand.text}  # it was really served
    else:
        # a structured candidate may reshape messages, but only as its own apply() says
        cand = parse_candidate(item)
        applied = cand.apply(messages, baseline=None)
        allowed = [messages]
        if applied is not None:
            allowed.append(applied)
        base = parse_candidate({"candidate_id": "base", "prompt_text": BASELINE})
        applied_b = cand.apply(messages, baseline=base)
        if applied_b is not None:
            allowed.append(applied_b)
        assert got in [copy.deepcopy(a) for a in allowed]


@settings(max_examples=200, deadline=None)
@given(item=_item)
def test_parse_candidate_raises_only_candidate_error(item) -> None:  # type: ignore[no-untyped-def]
    try:
        cand = parse_candidate(item)
    except CandidateError:
        return
    msgs = [{"role": "system", "content": BASELINE}, {"role": "user", "content": "hi"}]
    before = copy.deepcopy(msgs)
    out = cand.apply(msgs)
    assert msgs == before
    assert out is None or isinstance(out, list)
    cand.instructions()
