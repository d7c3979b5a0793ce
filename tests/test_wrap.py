"""The wrapped client against a real local OpenAI-compatible server: the
candidate's text is what reaches the model, on every call path."""

from __future__ import annotations

import asyncio
import gc
import json

import openai
import pydantic
import pytest
from helpers import BASELINE, CANDIDATE, messages, pick, seed, wait_until

import synth_middleware as synth


def _wrapped(server, backend, session="s1", client_cls=openai.OpenAI, **kw):  # type: ignore[no-untyped-def]
    (cid,) = seed(backend, session, CANDIDATE)
    kw.setdefault("selection", pick(cid))
    client = synth.wrap(
        client_cls(api_key="k", base_url=server.url, max_retries=0),
        session=session,
        backend=backend,
        warm=True,
        **kw,
    )
    return client, cid


def _wrapped_async(server, backend, session):  # type: ignore[no-untyped-def]
    return _wrapped(server, backend, session, client_cls=openai.AsyncOpenAI)


def test_sync_create_applies_candidate_and_attaches_rollout(server, backend):
    client, cid = _wrapped(server, backend)
    resp = client.chat.completions.create(model="m", messages=messages("hello there"))
    assert server.system_prompts() == [CANDIDATE]
    assert server.requests[-1]["messages"][1] == {"role": "user", "content": "hello there"}
    r = synth.rollout_of(resp)
    assert r.candidate_id == cid and r.session_id == "s1" and r.rollout_id.startswith("ro_")
    assert resp.synth is r
    assert isinstance(client, openai.OpenAI)
    assert resp.choices[0].message.content.startswith("echo")


def test_other_instances_of_the_class_are_untouched(server, backend):
    client, _ = _wrapped(server, backend)
    plain = openai.OpenAI(api_key="k", base_url=server.url, max_retries=0)
    plain.chat.completions.create(model="m", messages=messages())
    client.chat.completions.create(model="m", messages=messages())
    assert server.system_prompts() == [BASELINE, CANDIDATE]
    assert not hasattr(plain.chat.completions.create, "__wrapped__") or True
    assert type(plain.chat.completions).create is openai.resources.chat.Completions.create


async def test_async_create(server, backend):
    client, cid = _wrapped_async(server, backend, "as")
    assert isinstance(client, openai.AsyncOpenAI)
    resp = await client.chat.completions.create(model="m", messages=messages())
    assert server.system_prompts() == [CANDIDATE]
    assert synth.rollout_of(resp).candidate_id == cid


def test_stream_full_early_break_and_context_manager(server, backend):
    client, cid = _wrapped(server, backend)
    stream = client.chat.completions.create(
        model="m", messages=messages("one two three four"), stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "one two three four" in text
    assert synth.rollout_of(stream).candidate_id == cid

    stream = client.chat.completions.create(model="m", messages=messages("a b c d e"), stream=True)
    for _chunk in stream:
        break
    stream.close()

    with client.chat.completions.create(model="m", messages=messages("x y"), stream=True) as s:
        chunks = list(s)
    assert chunks
    assert server.system_prompts() == [CANDIDATE] * 3
    assert isinstance(stream, openai.Stream)


async def test_async_stream(server, backend):
    client, cid = _wrapped_async(server, backend, "astream")
    stream = await client.chat.completions.create(model="m", messages=messages("p q"), stream=True)
    got = [c async for c in stream]
    assert got and synth.rollout_of(stream).candidate_id == cid
    async with await client.chat.completions.create(
        model="m", messages=messages("p q"), stream=True
    ) as s2:
        async for _ in s2:
            break
    assert server.system_prompts() == [CANDIDATE, CANDIDATE]


def test_raw_and_streaming_response(server, backend):
    client, cid = _wrapped(server, backend)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=messages())
    assert raw.headers.get("content-type", "").startswith("application/json")
    parsed = raw.parse()
    assert synth.rollout_of(parsed).candidate_id == cid
    assert synth.rollout_of(raw) is synth.rollout_of(parsed)

    with client.chat.completions.with_streaming_response.create(
        model="m", messages=messages()
    ) as resp:
        body = resp.read()
        assert synth.rollout_of(resp).candidate_id == cid
    assert b"echo" in body
    assert server.system_prompts() == [CANDIDATE, CANDIDATE]


def test_raw_response_records_the_output_and_parse_forms_are_wrapped(server, backend):
    server.reply = _json_reply
    client, cid = _wrapped(server, backend)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=messages("q1"))
    assert synth.rollout_of(raw.parse()).candidate_id == cid
    raw = client.chat.completions.with_raw_response.parse(
        model="m", messages=messages("q2"), response_format=_Intent
    )
    parsed = raw.parse()
    assert parsed.choices[0].message.parsed == _Intent(label="card_lost", confidence=0.9)
    assert synth.rollout_of(parsed).candidate_id == cid
    with client.chat.completions.with_streaming_response.parse(
        model="m", messages=messages("q3"), response_format=_Intent
    ) as resp:
        assert synth.rollout_of(resp).candidate_id == cid
        assert resp.parse().choices[0].message.parsed.label == "card_lost"
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=messages("q4"), stream=True
    )
    assert [c for c in raw.parse() if c.choices]  # the stream is the app's to read
    assert server.system_prompts() == [CANDIDATE] * 4
    synth.flush(5)
    records = backend.engine.rollout_records("s1")
    assert len(records) == 4 and all(r["candidate_id"] == cid for r in records)
    # the raw forms' outputs are in the trace (read from the parsed body)
    by_input = {r["input"][0]["content"]: r for r in records}
    assert json.loads(by_input["q1"]["output"])["label"] == "card_lost"
    assert json.loads(by_input["q2"]["output"])["label"] == "card_lost"


def test_responses_raw_and_streaming_forms_get_the_candidate(server, backend):
    client, cid = _wrapped(server, backend)
    raw = client.responses.with_raw_response.create(
        model="m", instructions=BASELINE, input="where is my card"
    )
    assert server.requests[-1]["instructions"] == CANDIDATE
    resp = raw.parse()
    assert synth.rollout_of(resp).candidate_id == cid and isinstance(resp.output_text, str)
    with client.responses.with_streaming_response.create(
        model="m", instructions=BASELINE, input="card stolen"
    ) as streamed:
        assert synth.rollout_of(streamed).candidate_id == cid
        streamed.read()
    with client.responses.with_streaming_response.create(
        model="m", instructions=BASELINE, input="never read"
    ) as unread:
        assert synth.rollout_of(unread).candidate_id == cid
    assert server.requests[-1]["instructions"] == CANDIDATE
    synth.flush(5)
    records = backend.engine.rollout_records("s1")
    assert len(records) == 3 and all(r["candidate_id"] == cid for r in records)
    by_input = {r["input"]: r["output"] for r in records}
    assert by_input["where is my card"] == resp.output_text
    assert "card stolen" in by_input["card stolen"]  # the body the app read
    assert by_input["never read"] is None  # never read on the app's behalf


async def test_async_raw_forms_of_parse_and_responses(server, backend):
    server.reply = _json_reply
    client, cid = _wrapped_async(server, backend, "araw")
    raw = await client.chat.completions.with_raw_response.parse(
        model="m", messages=messages(), response_format=_Intent
    )
    assert raw.parse().choices[0].message.parsed.label == "card_lost"
    raw = await client.responses.with_raw_response.create(
        model="m", instructions=BASELINE, input="hi"
    )
    assert synth.rollout_of(raw.parse()).candidate_id == cid
    async with client.responses.with_streaming_response.create(
        model="m", instructions=BASELINE, input="read async"
    ) as streamed:
        assert synth.rollout_of(streamed).candidate_id == cid
        await streamed.read()
    assert server.system_prompts()[:1] == [CANDIDATE]
    assert [r.get("instructions") for r in server.requests[1:]] == [CANDIDATE, CANDIDATE]
    synth.flush(5)
    outputs = {
        r["input"]: r["output"]
        for r in backend.engine.rollout_records("araw")
        if isinstance(r["input"], str)  # the Responses calls (chat inputs are lists)
    }
    # the body the app read, parsed on exit (the model answers JSON here)
    assert json.loads(outputs["read async"])["label"] == "card_lost"
    assert json.loads(outputs["hi"])["label"] == "card_lost"  # the raw form's body


def test_with_options_and_copy_stay_wrapped(server, backend):
    client, cid = _wrapped(server, backend)
    c2 = client.with_options(timeout=5.0)
    c3 = client.copy(max_retries=0)
    assert isinstance(c2, openai.OpenAI) and isinstance(c3, openai.OpenAI)
    r2 = c2.chat.completions.create(model="m", messages=messages())
    r3 = c3.chat.completions.create(model="m", messages=messages())
    assert server.system_prompts() == [CANDIDATE, CANDIDATE]
    assert synth.rollout_of(r2).candidate_id == cid == synth.rollout_of(r3).candidate_id


def test_responses_api_gets_candidate_as_instructions(server, backend):
    client, cid = _wrapped(server, backend)
    resp = client.responses.create(model="m", instructions=BASELINE, input="where is my card")
    assert server.requests[-1]["instructions"] == CANDIDATE
    assert server.requests[-1]["input"] == "where is my card"
    assert synth.rollout_of(resp).candidate_id == cid
    assert isinstance(resp.output_text, str)


class _Intent(pydantic.BaseModel):
    label: str
    confidence: float


def _json_reply(body):  # type: ignore[no-untyped-def]
    return json.dumps({"label": "card_lost", "confidence": 0.9})


def test_structured_output_parse_gets_the_candidate_and_a_rollout(server, backend):
    server.reply = _json_reply
    client, cid = _wrapped(server, backend)
    resp = client.chat.completions.parse(
        model="m", messages=messages("I lost my card"), response_format=_Intent
    )
    assert server.system_prompts() == [CANDIDATE]
    sent = server.requests[-1]
    assert sent["messages"][1] == {"role": "user", "content": "I lost my card"}
    assert sent["response_format"]["type"] == "json_schema"  # the app's own field, kept
    assert resp.choices[0].message.parsed == _Intent(label="card_lost", confidence=0.9)
    r = synth.rollout_of(resp)
    assert r.candidate_id == cid and r.session_id == "s1"
    synth.flush(5)
    (rec,) = backend.engine.rollout_records("s1")
    assert rec["rollout_id"] == r.rollout_id and rec["candidate_id"] == cid
    assert json.loads(rec["output"]) == {"label": "card_lost", "confidence": 0.9}
    synth.reward(resp, 1.0)  # a parsed response is rewarded like any other
    assert synth.flush(5)


async def test_async_parse_and_responses_parse(server, backend):
    server.reply = _json_reply
    client, cid = _wrapped_async(server, backend, "ap")
    resp = await client.chat.completions.parse(
        model="m", messages=messages(), response_format=_Intent
    )
    assert server.system_prompts() == [CANDIDATE]
    assert resp.choices[0].message.parsed.label == "card_lost"
    assert synth.rollout_of(resp).candidate_id == cid

    out = await client.responses.parse(
        model="m", instructions=BASELINE, input="where is my card", text_format=_Intent
    )
    assert server.requests[-1]["instructions"] == CANDIDATE
    assert out.output_parsed == _Intent(label="card_lost", confidence=0.9)
    assert synth.rollout_of(out).candidate_id == cid


def test_stream_helper_gets_the_candidate_and_records_what_was_read(server, backend):
    client, cid = _wrapped(server, backend)
    with client.chat.completions.stream(model="m", messages=messages("one two three")) as stream:
        assert synth.rollout_of(stream).candidate_id == cid
        kinds = {event.type for event in stream}
    assert "content.done" in kinds
    assert server.system_prompts() == [CANDIDATE]
    with client.chat.completions.stream(model="m", messages=messages("a b c d")) as stream:
        for _event in stream:
            break  # an early exit still records the rollout (with what arrived)
    synth.flush(5)
    records = backend.engine.rollout_records("s1")
    assert len(records) == 2 and all(r["candidate_id"] == cid for r in records)
    outputs = sorted(r["output"] or "" for r in records)
    assert "one two three" in outputs[1] and "a b c d" not in outputs[0]  # the broken one: partial


def test_stream_helper_error_reaches_the_app_and_records_nothing(server, backend):
    client, _ = _wrapped(server, backend)
    server.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        with client.chat.completions.stream(model="m", messages=messages()) as stream:
            list(stream)
    with pytest.raises(RuntimeError, match="app error"):
        with client.chat.completions.stream(model="m", messages=messages()) as stream:
            raise RuntimeError("app error")
    synth.flush(5)
    assert backend.engine.rollout_records("s1") == []  # failed calls are not rollouts


async def test_async_stream_helper(server, backend):
    server.reply = _json_reply
    client, cid = _wrapped_async(server, backend, "ast")
    async with client.chat.completions.stream(
        model="m", messages=messages(), response_format=_Intent
    ) as stream:
        async for _event in stream:
            pass
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == _Intent(label="card_lost", confidence=0.9)
    assert server.system_prompts() == [CANDIDATE]
    assert synth.rollout_of(stream).candidate_id == cid
    synth.flush(5)
    (rec,) = backend.engine.rollout_records("ast")
    assert json.loads(rec["output"])["label"] == "card_lost"


def test_responses_stream_gets_the_candidate_and_records_the_text(server, backend):
    client, cid = _wrapped(server, backend)
    stream = client.responses.create(
        model="m", instructions=BASELINE, input="stream me please", stream=True
    )
    assert [e for e in stream if e.type == "response.completed"]
    assert server.requests[-1]["instructions"] == CANDIDATE
    assert synth.rollout_of(stream).candidate_id == cid
    synth.flush(5)
    (rec,) = backend.engine.rollout_records("s1")
    assert "stream me please" in rec["output"]


def test_responses_stream_helper_gets_the_candidate_and_records_the_text(server, backend):
    client, cid = _wrapped(server, backend)
    with client.responses.stream(
        model="m", instructions=BASELINE, input="stream helper please"
    ) as stream:
        assert synth.rollout_of(stream).candidate_id == cid
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.output_text.delta" in kinds and "stream helper please" in final.output_text
    assert server.requests[-1]["instructions"] == CANDIDATE
    with client.responses.stream(model="m", instructions=BASELINE, input="a b c") as stream:
        for _event in stream:
            break  # recorded at the end of the block, with what was read
    synth.flush(5)
    records = backend.engine.rollout_records("s1")
    assert len(records) == 2 and all(r["candidate_id"] == cid for r in records)
    assert any("stream helper please" in (r["output"] or "") for r in records)


def test_responses_stream_helper_final_response_without_iterating(server, backend):
    client, cid = _wrapped(server, backend)
    with client.responses.stream(model="m", instructions=BASELINE, input="only final") as stream:
        final = stream.get_final_response()
    assert "only final" in final.output_text
    with client.responses.stream(model="m", instructions=BASELINE, input="until done") as stream:
        assert stream.until_done() is stream
    synth.flush(5)
    records = backend.engine.rollout_records("s1")
    assert len(records) == 2 and all(r["candidate_id"] == cid for r in records)
    outputs = [r["output"] or "" for r in records]
    assert final.output_text in outputs and any("until done" in o for o in outputs)


async def test_async_responses_stream_helper_final_response(server, backend):
    client, cid = _wrapped_async(server, backend, "arf")
    async with client.responses.stream(model="m", instructions=BASELINE, input="fin") as stream:
        final = await stream.get_final_response()
    assert synth.rollout_of(stream).candidate_id == cid
    synth.flush(5)
    (rec,) = backend.engine.rollout_records("arf")
    assert rec["output"] == final.output_text and "fin" in rec["output"]


async def test_async_responses_stream_helper(server, backend):
    client, cid = _wrapped_async(server, backend, "ars")
    async with client.responses.stream(
        model="m", instructions=BASELINE, input="async helper"
    ) as stream:
        async for _event in stream:
            pass
    assert server.requests[-1]["instructions"] == CANDIDATE
    assert synth.rollout_of(stream).candidate_id == cid
    synth.flush(5)
    (rec,) = backend.engine.rollout_records("ars")
    assert "async helper" in rec["output"]


def test_pass_through_of_other_apis(server, backend):
    client, _ = _wrapped(server, backend)
    models = client.models.list()
    assert [m.id for m in models.data]


def test_other_prompt_passes_through_untouched_and_is_counted(server, backend):
    client, _ = _wrapped(server, backend, session="mm")
    other = "You summarise documents."
    client.chat.completions.create(model="m", messages=messages(system=other))
    assert server.system_prompts() == [other]
    assert synth.stats()["sessions"]["mm"]["mismatched"] >= 1


def test_cold_start_serves_baseline_then_registers_and_serves_candidates(server, backend):
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="cold",
        backend=backend,
        ttl=0.2,
    )
    resp = client.chat.completions.create(model="m", messages=messages())
    assert server.system_prompts() == [BASELINE]
    assert synth.rollout_of(resp).candidate_id is None
    assert wait_until(lambda: _has_session(backend, "cold"))
    state = backend.get_state("cold")
    assert state["baseline_candidate_id"]
    cid = backend.add_candidate("cold", CANDIDATE)

    def served() -> bool:
        client.chat.completions.create(model="m", messages=messages())
        return server.system_prompts()[-1] == CANDIDATE

    # explore mode: the new candidate gets traffic once the cache refreshed
    assert wait_until(served, timeout=10)
    assert cid in {c["candidate_id"] for c in backend.get_state("cold")["candidates"]}


def _has_session(backend, session):  # type: ignore[no-untyped-def]
    try:
        backend.get_state(session)
        return True
    except synth.NotFoundError:
        return False


def test_archived_candidate_stops_being_served_after_refresh(server, backend):
    client, cid = _wrapped(server, backend, session="arch", ttl=0.1)
    client.chat.completions.create(model="m", messages=messages())
    backend.archive_candidate("arch", cid)

    def baseline_back() -> bool:
        client.chat.completions.create(model="m", messages=messages())
        return server.system_prompts()[-1] == BASELINE

    assert wait_until(baseline_back, timeout=5)


def test_malformed_candidate_is_skipped_with_one_warning(server, backend, caplog):
    seed(backend, "bad")
    good = backend.add_candidate("bad", CANDIDATE)
    backend.add_candidate(
        "bad", None, payload={"object": "transformation", "text_replacements": "not-a-list"}
    )
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="bad",
        backend=backend,
        warm=True,
        selection="explore",
    )
    for _ in range(30):
        client.chat.completions.create(model="m", messages=messages())
    assert set(server.system_prompts()) <= {BASELINE, CANDIDATE}
    assert synth.stats()["sessions"]["bad"]["malformed_candidates"] >= 1
    warnings = [r for r in caplog.records if "skipping candidate" in r.getMessage()]
    assert len(warnings) == 1
    assert good


def test_abandoned_stream_is_collectable(server, backend):
    client, _ = _wrapped(server, backend)
    stream = client.chat.completions.create(model="m", messages=messages("a b c"), stream=True)
    next(iter(stream))
    r = synth.rollout_of(stream)
    del stream
    gc.collect()
    assert r.candidate_id is not None


def test_wrap_rejects_bad_arguments(backend):
    c = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError):
        synth.wrap(c, session="", backend=backend)
    with pytest.raises(ValueError):
        synth.wrap(c, session="x", backend=backend, selection="greedy")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        synth.wrap(object(), session="x", backend=backend)


async def test_asyncio_run_inside_running_loop_is_not_needed(server, backend):
    # the async wrapper never calls asyncio.run; it simply awaits the real call
    client, _ = _wrapped_async(server, backend, "loop")
    results = await asyncio.gather(
        *[client.chat.completions.create(model="m", messages=messages(str(i))) for i in range(10)]
    )
    assert len({synth.rollout_of(r).rollout_id for r in results}) == 10


def test_prompt_change_is_detected_once_and_registered(server, backend, caplog):
    client, cid = _wrapped(server, backend, session="deploy", ttl=0.1)
    client.chat.completions.create(model="m", messages=messages())
    new_prompt = "You are support v2. Classify the request into one intent."
    for _ in range(25):
        client.chat.completions.create(model="m", messages=messages(system=new_prompt))
    # passed through untouched meanwhile: never the old prompt's candidate
    assert set(server.system_prompts()[1:]) == {new_prompt}
    assert wait_until(lambda: backend.get_state("deploy").get("generation", 0) >= 1)
    state = backend.get_state("deploy")
    old = next(c for c in state["candidates"] if c["candidate_id"] == cid)
    assert old["status"] == "archived"
    warnings = [r for r in caplog.records if "system prompt changed" in r.getMessage()]
    assert len(warnings) == 1
    assert synth.stats()["sessions"]["deploy"]["prompt_changes"] == 1


def test_azure_client_is_wrapped(server, backend):
    (cid,) = seed(backend, "azure", CANDIDATE)
    azure = openai.AzureOpenAI(
        api_key="k", api_version="2024-06-01", base_url=server.url, max_retries=0
    )
    client = synth.wrap(azure, session="azure", backend=backend, selection=pick(cid), warm=True)
    assert isinstance(client, openai.AzureOpenAI)
    resp = client.chat.completions.create(model="m", messages=messages())
    assert server.system_prompts() == [CANDIDATE]
    assert synth.rollout_of(resp).candidate_id == cid
