"""The proposer: answer parsing, prompt contents, where keys go, real HTTP calls."""

from __future__ import annotations

from typing import Any

import pytest

from synth_middleware.engine.config import parse_session_config
from synth_middleware.engine.optimizers.base import Trace, traces_from_records
from synth_middleware.engine.proposer import (
    ENV_ALLOWED_HOSTS,
    ENV_API_KEY,
    ENV_URL,
    Proposer,
    ProposerError,
    ProposerFactory,
    api_key_for,
    dataset_summary,
    extract_instruction,
    gepa_merge_prompt,
    gepa_reflection_prompt,
    mipro_instruction_prompt,
    normalize_base_url,
    scrub_secrets,
)


def trace(i: int, reward: float, feedback: str | None = None, **kw: Any) -> Trace:
    return Trace(
        rollout_id=f"r{i}",
        candidate_id="c",
        input=kw.get("input", f"user question {i}"),
        output=kw.get("output", f"model answer {i}"),
        reward=reward,
        feedback=feedback,
        bucket=None,
        expected=kw.get("expected"),
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("```\nBe precise.\n```", "Be precise."),
        ("Here:\n```text\nBe precise.\nAlways.\n```\nDone.", "Be precise.\nAlways."),
        ("```a``` and then ```b```", "a``` and then ```b"),  # first to last fence
        ("``` Be brief. ```", "Be brief."),
        ("no fences at all", None),
        ("only one ``` fence", None),
        ("```\n   \n```", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_instruction(answer: str | None, expected: str | None) -> None:
    assert extract_instruction(answer) == expected


def test_reflection_prompt_shows_failures_and_feedback() -> None:
    batch = [
        trace(1, 0.0, "wrong: expected refund", input="where is my money", output="card_lost"),
        trace(2, 1.0, None, input="I lost my card", output="card_lost"),
    ]
    prompt = gepa_reflection_prompt(instruction="Classify the request.", examples=batch)
    assert "Classify the request." in prompt
    for text in ("where is my money", "card_lost", "wrong: expected refund", "I lost my card"):
        assert text in prompt
    assert "## Reward\n0" in prompt and "## Feedback" in prompt
    assert "within ``` blocks" in prompt


def test_prompts_without_traces_contain_no_examples_or_feedback() -> None:
    # send_traces=False: rollouts carry ids and rewards (and reward feedback) only
    records = [
        {
            "rollout_id": f"r{i}",
            "candidate_id": "c",
            "input": None,
            "output": None,
            "rewards": [{"value": 0.0, "feedback": "SECRET-FEEDBACK", "metadata": None}],
        }
        for i in range(5)
    ]
    traces = traces_from_records(records)
    assert all(t.input is None and t.feedback == "SECRET-FEEDBACK" for t in traces)
    gepa = gepa_reflection_prompt(instruction="Classify.", examples=traces)
    mipro = mipro_instruction_prompt(
        instruction="Classify.", summary=dataset_summary(traces), examples=traces, tip="Be bold."
    )
    for prompt in (gepa, mipro):
        assert "SECRET-FEEDBACK" not in prompt
        assert "# Example" not in prompt
    assert "No inputs were recorded" in mipro and "(no examples)" in gepa


def test_mipro_prompt_contents() -> None:
    traces = [
        trace(i, 1.0 if i % 2 else 0.0, input=f"question {i}", expected=f"label{i % 3}")
        for i in range(10)
    ]
    summary = dataset_summary(traces)
    assert "10 recorded inputs (10 distinct)" in summary
    assert "Mean reward so far: 0.5" in summary and "label0" in summary
    assert "- question 0" in summary
    prompt = mipro_instruction_prompt(
        instruction="CURRENT-INSTRUCTION", summary=summary, examples=traces[1:4:2], tip="TIP-TEXT"
    )
    for text in ("DATASET SUMMARY", "CURRENT-INSTRUCTION", "question 1", "question 3", "TIP-TEXT"):
        assert text in prompt
    merge = gepa_merge_prompt(ancestor="ORIG", first="AAA", second="BBB")
    assert all(t in merge for t in ("ORIG", "AAA", "BBB"))


def test_key_goes_only_to_allowed_hosts() -> None:
    env = {ENV_API_KEY: "sk-proposer-1234567", "OPENAI_API_KEY": "sk-openai-7654321"}
    assert api_key_for("https://api.openai.com/v1", env) == "sk-proposer-1234567"
    assert api_key_for("https://evil.example/v1", env) is None  # named in a session config
    env2 = {**env, ENV_URL: "https://llm.internal:8443/v1", ENV_ALLOWED_HOSTS: "a.b, C.D"}
    assert api_key_for("https://llm.internal:8443/v1", env2) == "sk-proposer-1234567"
    assert api_key_for("http://c.d/v1", env2) == "sk-proposer-1234567"
    assert api_key_for("https://api.openai.com/v1", {"OPENAI_API_KEY": "k"}) == "k"
    assert api_key_for("not a url", env) is None
    assert normalize_base_url("https://api.openai.com/v1/chat/completions") == (
        "https://api.openai.com/v1"
    )
    masked = scrub_secrets("bad key sk-proposer-1234567 and sk-abcdefghijkl", env)
    assert "1234567" not in masked and "abcdefghijkl" not in masked


def test_proposer_over_http_sends_the_key_only_where_allowed(server: Any) -> None:
    server.reply = lambda body: "```\nA better instruction.\n```"
    env = {ENV_API_KEY: "sk-test-proposer-key"}
    cfg = parse_session_config({"proposer_model": "prop-model", "proposer_url": server.url})
    proposer = ProposerFactory(env=env).for_config(cfg)
    assert proposer is not None
    assert extract_instruction(proposer.complete("hello")) == "A better instruction."
    auth = server.headers[-1].get("authorization", "")
    assert "sk-test-proposer-key" not in auth  # 127.0.0.1 is not an allowed host
    body = server.last_request()
    assert body["model"] == "prop-model" and body["messages"][0]["content"] == "hello"

    allowed = {**env, ENV_ALLOWED_HOSTS: "127.0.0.1"}
    proposer = ProposerFactory(env=allowed).for_config(cfg)
    assert proposer is not None
    proposer.complete("again")
    assert server.headers[-1].get("authorization") == "Bearer sk-test-proposer-key"

    server.reply = lambda body: ""
    with pytest.raises(ProposerError):
        proposer.complete("empty")


def test_no_model_means_no_proposer_and_injected_client_is_used() -> None:
    assert ProposerFactory(env={}).for_config(parse_session_config({})) is None
    calls: list[dict[str, Any]] = []

    class Fake:
        class chat:
            class completions:
                @staticmethod
                def create(**kw: Any) -> Any:
                    calls.append(kw)
                    msg = type("M", (), {"content": "```x```"})
                    return type("R", (), {"choices": [type("C", (), {"message": msg})]})

    factory = ProposerFactory(client=Fake(), default_model="m", env={})
    p = factory.for_config(parse_session_config({"proposer_temperature": 0.1}))
    assert isinstance(p, Proposer)
    assert p.complete("q") == "```x```"
    assert calls[0]["model"] == "m" and calls[0]["temperature"] == 0.1
    # a session naming its own URL does not get the injected client
    other = factory.for_config(parse_session_config({"proposer_url": "http://127.0.0.1:9/v1"}))
    assert other is not None and other.client is not factory._client


def test_a_long_instruction_is_kept_whole_or_cut_with_a_marker_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from synth_middleware.engine.proposer import INSTRUCTION_CHARS

    long = "Describe each label. " + " ".join(f"- label_{i}: text {i}" for i in range(1500))
    assert 8000 < len(long) < INSTRUCTION_CHARS
    batch = [trace(1, 0.0, input="q", expected="label_1")]
    with caplog.at_level("WARNING", logger="synth_middleware.proposer"):
        prompts = [
            gepa_reflection_prompt(instruction=long, examples=batch),
            mipro_instruction_prompt(instruction=long, summary="s", examples=batch, tip="t"),
            gepa_merge_prompt(ancestor=long, first=long, second=long),
        ]
    assert all(long in p for p in prompts) and not caplog.records  # whole, no warning
    huge = "x" * (INSTRUCTION_CHARS + 123)
    with caplog.at_level("WARNING", logger="synth_middleware.proposer"):
        prompt = gepa_reflection_prompt(instruction=huge, examples=batch)
    assert huge not in prompt
    assert "[... 123 more characters of this instruction were cut here ...]" in prompt
    assert any("was cut" in r.getMessage() for r in caplog.records)


def test_mipro_prompt_shows_failures_with_the_expected_answer() -> None:
    good = [trace(1, 1.0, input="question ok", expected="right")]
    bad = [trace(2, 0.0, input="question missed", output="wrong_label", expected="right_label")]
    prompt = mipro_instruction_prompt(
        instruction="I", summary="s", examples=good, tip="t", failures=bad
    )
    assert "EXAMPLES THAT SCORED POORLY" in prompt
    tail = prompt.split("EXAMPLES THAT SCORED POORLY")[1]
    assert "# Example 2" in tail and "question missed" in tail and "wrong_label" in tail
    assert "## Expected\nright_label" in tail
    assert "SCORED POORLY" not in mipro_instruction_prompt(
        instruction="I", summary="s", examples=good, tip="t"
    )
