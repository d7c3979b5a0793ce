"""Tests for the FakeOpenAIServer test helper, driven by the real openai SDK clients."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from synth_middleware.testing import (
    FakeOpenAIServer,
    async_in_memory_http_client,
    default_reply,
    in_memory_http_client,
)

# Warnings are errors here, except unclosed-transport noise that other tests' servers
# may leave for the garbage collector to report at a random later point.
pytestmark = pytest.mark.filterwarnings(
    "error", "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def server(shared_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    shared_server.reset()
    yield shared_server
    shared_server.reset()


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[OpenAI]:
    with OpenAI(api_key="test-key", base_url=server.url, max_retries=0) as client:
        yield client


# --------------------------------------------------------------------------- chat


def test_chat_completion_non_streaming(server: FakeOpenAIServer, client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "system", "content": "Be brief."}, *USER],
    )

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-test"
    assert completion.created > 0
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello there"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4  # "Be brief." + "hello there"
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 7

    assert len(server.requests) == 1
    body = server.requests[0]
    assert body["_path"] == "/v1/chat/completions"
    assert body["model"] == "gpt-test"
    assert body["messages"][1] == USER[0]
    assert server.headers[0]["authorization"] == "Bearer test-key"
    assert server.system_prompts() == ["Be brief."]


def test_chat_completion_content_parts_and_custom_reply() -> None:
    seen: list[dict[str, Any]] = []

    def reply(body: dict[str, Any]) -> str:
        seen.append(body)
        return f"{len(body['messages'])} messages"

    with (
        FakeOpenAIServer(reply=reply, model="default-model") as server,
        OpenAI(api_key="k", base_url=server.url, max_retries=0) as client,
    ):
        completion = client.chat.completions.create(
            model="m",
            messages=[
                {"role": "developer", "content": [{"type": "text", "text": "Dev prompt."}]},
                {"role": "user", "content": [{"type": "text", "text": "part one"}]},
            ],
        )
        assert completion.choices[0].message.content == "2 messages"
        assert seen == server.requests
        assert server.system_prompts() == ["Dev prompt."]

    assert default_reply({"messages": [{"role": "user", "content": [{"text": "a"}]}]}) == "echo: a"
    assert default_reply({"input": "b"}) == "echo: b"
    assert default_reply({}) == "echo: "


def test_record_off_keeps_nothing_and_still_answers() -> None:
    with (
        FakeOpenAIServer(record=False) as server,
        OpenAI(api_key="k", base_url=server.url, max_retries=0) as client,
    ):
        for _ in range(3):
            completion = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert completion.choices[0].message.content == "echo: hi"
        assert server.requests == [] and server.headers == []
        server.record = True  # it can be switched on while the server runs
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert len(server.requests) == 1


def test_chat_streaming_with_usage(server: FakeOpenAIServer, client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "one two  three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 4
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two  three four"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop"
    assert all(reason is None for reason in finish[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == 4
    assert usage_chunk.usage.completion_tokens == 5
    assert usage_chunk.usage.total_tokens == 9
    assert server.requests[0]["stream"] is True


def test_chat_streaming_without_usage_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[call-overload]
    )
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello there"


def test_forced_tool_call(client: OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "answer",
                "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
            },
        }
    ]
    forced = client.chat.completions.create(
        model="m",
        messages=USER,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "answer"}},
    )
    message = forced.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "answer"
    assert json.loads(call.function.arguments) == {"text": "echo: hello there"}

    required = client.chat.completions.create(
        model="m", messages=USER, tools=tools, tool_choice="required"
    )
    assert required.choices[0].message.tool_calls is not None

    auto = client.chat.completions.create(model="m", messages=USER, tools=tools)
    assert auto.choices[0].message.content == "echo: hello there"
    assert auto.choices[0].message.tool_calls is None


def test_paths_without_v1_prefix(server: FakeOpenAIServer) -> None:
    with OpenAI(api_key="k", base_url=server.base_url, max_retries=0) as client:
        completion = client.chat.completions.create(model="m", messages=USER)
        response = client.responses.create(model="m", input="hi")
    assert completion.choices[0].message.content == "echo: hello there"
    assert response.output_text == "echo: hi"
    assert [body["_path"] for body in server.requests] == ["/chat/completions", "/responses"]


def test_models_list(client: OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["fake-model"]


# --------------------------------------------------------------------------- responses


def test_responses_api(server: FakeOpenAIServer, client: OpenAI) -> None:
    response = client.responses.create(
        model="gpt-test", instructions="Answer in French.", input="bonjour"
    )

    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-test"
    assert response.output_text == "echo: bonjour"
    assert response.instructions == "Answer in French."
    assert response.usage is not None
    assert response.usage.input_tokens == 4
    assert response.usage.output_tokens == 2
    assert server.requests[0]["_path"] == "/v1/responses"
    assert server.system_prompts() == ["Answer in French."]


def test_responses_message_input(server: FakeOpenAIServer, client: OpenAI) -> None:
    response = client.responses.create(
        model="m",
        input=[
            {"role": "system", "content": "From input."},
            {"role": "user", "content": [{"type": "input_text", "text": "list input"}]},
        ],
    )
    assert response.output_text == "echo: list input"
    assert server.system_prompts() == ["From input."]


def test_responses_streaming(client: OpenAI) -> None:
    events = list(client.responses.create(model="m", input="stream me please", stream=True))
    types = [event.type for event in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 3
    assert "".join(deltas) == "echo: stream me please"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "echo: stream me please"


def test_system_prompts_mixed_order(server: FakeOpenAIServer, client: OpenAI) -> None:
    client.chat.completions.create(
        model="m", messages=[{"role": "system", "content": "first"}, *USER]
    )
    client.chat.completions.create(model="m", messages=USER)
    client.models.list()  # not recorded: no body
    client.responses.create(model="m", instructions="third", input="x")
    client.responses.create(model="m", input="x")
    assert server.system_prompts() == ["first", None, "third", None]
    assert len(server.requests) == len(server.headers) == 4

    server.clear()
    assert server.requests == [] and server.headers == []
    assert server.system_prompts() == []


# --------------------------------------------------------------------------- failures


def test_fail_next_500(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.fail_next(500)
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model="m", messages=USER)
    assert excinfo.value.status_code == 500
    assert isinstance(excinfo.value.body, dict)
    assert excinfo.value.body["type"] == "server_error"

    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content
    assert len(server.requests) == 2  # failed requests are recorded too


def test_fail_next_429_count_and_retry_after(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.fail_next(429, count=2, retry_after=3)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as excinfo:
            client.responses.create(model="m", input="x")
        assert excinfo.value.status_code == 429
        assert excinfo.value.code == "rate_limit_exceeded"
        assert excinfo.value.response.headers["retry-after"] == "3"
    assert client.responses.create(model="m", input="x").output_text == "echo: x"


def test_fail_next_queue_and_custom_body(server: FakeOpenAIServer, client: OpenAI) -> None:
    custom = {"error": {"message": "nope", "type": "invalid_request_error", "code": "bad"}}
    server.fail_next(400, body=custom)
    server.fail_next(503)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=USER)
    assert bad.value.code == "bad"
    assert "nope" in str(bad.value)
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="m", messages=USER)
    assert unavailable.value.status_code == 503

    with pytest.raises(ValueError):
        server.fail_next(200)
    with pytest.raises(ValueError):
        server.fail_next(500, count=0)


def test_sdk_retries_honour_retry_after(server: FakeOpenAIServer) -> None:
    server.fail_next(429, count=2, retry_after=0.05)
    with OpenAI(api_key="k", base_url=server.url, max_retries=2) as client:
        completion = client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "echo: hello there"
    assert len(server.requests) == 3


def test_reply_errors_become_500() -> None:
    def broken(body: dict[str, Any]) -> str:
        raise KeyError("boom")

    with (
        FakeOpenAIServer(reply=broken) as server,
        OpenAI(api_key="k", base_url=server.url, max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError, match="boom"):
            client.chat.completions.create(model="m", messages=USER)


def test_invalid_json_and_unknown_route(server: FakeOpenAIServer) -> None:
    with httpx2.Client(base_url=server.url) as http:
        bad = http.post("/chat/completions", content=b"{not json")
        missing = http.get("/nope")
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert server.requests == []


# --------------------------------------------------------------------------- timing


def test_delay_is_honoured(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.delay = 0.3
    started = time.perf_counter()
    client.chat.completions.create(model="m", messages=USER)
    assert time.perf_counter() - started >= 0.3

    server.delay = 0.0
    started = time.perf_counter()
    client.chat.completions.create(model="m", messages=USER)
    assert time.perf_counter() - started < 0.3


def test_concurrent_requests_from_threads(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.delay = 0.2
    count = 32

    def call(i: int) -> str | None:
        completion = client.chat.completions.create(
            model="m",
            messages=[
                {"role": "system", "content": f"sys {i}"},
                {"role": "user", "content": str(i)},
            ],
        )
        return completion.choices[0].message.content

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        answers = list(pool.map(call, range(count)))
    elapsed = time.perf_counter() - started

    assert answers == [f"echo: {i}" for i in range(count)]
    assert elapsed < count * 0.2 / 4  # served concurrently, not one after another
    assert len(server.requests) == len(server.headers) == count
    assert sorted(server.system_prompts()) == sorted(f"sys {i}" for i in range(count))


async def test_async_client_concurrent_and_streaming(server: FakeOpenAIServer) -> None:
    server.delay = 0.2
    async with AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0) as client:
        started = time.perf_counter()
        completions = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": str(i)}]
                )
                for i in range(20)
            )
        )
        assert time.perf_counter() - started < 2.0
        assert [c.choices[0].message.content for c in completions] == [
            f"echo: {i}" for i in range(20)
        ]

        server.delay = 0.0
        stream = await client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "echo: hello there"
        )
        assert chunks[-1].usage is not None

        response = await client.responses.create(model="m", instructions="i", input="async")
        assert response.output_text == "echo: async"


# --------------------------------------------------------------------------- lifecycle


def test_lifecycle_no_leaked_threads() -> None:
    before = set(threading.enumerate())
    server = FakeOpenAIServer()
    with pytest.raises(RuntimeError):
        _ = server.url  # not started yet
    server.start()
    assert server.running
    assert server.start() is server  # idempotent
    port = server.port
    assert server.url == f"http://127.0.0.1:{port}/v1"
    with OpenAI(api_key="k", base_url=server.url, max_retries=0) as client:
        client.chat.completions.create(model="m", messages=USER)  # leaves a keep-alive conn
        started = time.perf_counter()
        server.stop()
        assert time.perf_counter() - started < 2.0
        server.stop()  # idempotent
        assert not server.running
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="m", messages=USER)
    assert set(threading.enumerate()) == before

    with server:  # restartable, keeps its recordings
        assert server.running
        assert len(server.requests) == 1
    assert set(threading.enumerate()) == before


def test_stop_interrupts_delayed_requests() -> None:
    server = FakeOpenAIServer(delay=30).start()
    errors: list[BaseException] = []

    with OpenAI(api_key="k", base_url=server.url, max_retries=0) as client:

        def call() -> None:
            try:
                client.chat.completions.create(model="m", messages=USER)
            except openai.APIError as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 5
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
        server.stop()
        assert time.perf_counter() - started < 1.5
        caller.join(5)
    assert not caller.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], openai.InternalServerError)
    assert errors[0].status_code == 503


def test_port_in_use_raises_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = FakeOpenAIServer(port=port)
        with pytest.raises(OSError, match=f"could not bind 127.0.0.1:{port}"):
            server.start()
        assert not server.running


# --------------------------------------------------------------------------- in-memory


def test_in_memory_client_fixed_reply() -> None:
    http_client = in_memory_http_client()
    assert isinstance(http_client, httpx2.Client)
    with OpenAI(api_key="x", base_url="http://fake/v1", http_client=http_client) as client:
        completion = client.chat.completions.create(model="m", messages=USER)
        assert completion.choices[0].message.content == "Hello from the in-memory fake."
        assert completion.model == "fake-model"
        assert client.responses.create(model="m", input="x").output_text == (
            "Hello from the in-memory fake."
        )
        assert [model.id for model in client.models.list()] == ["fake-model"]
        with pytest.raises(openai.BadRequestError, match="does not stream"):
            client.chat.completions.create(model="m", messages=USER, stream=True)

    with OpenAI(
        api_key="x", base_url="http://fake/v1", http_client=in_memory_http_client("fixed")
    ) as client:
        completion = client.chat.completions.create(model="m", messages=USER)
        assert completion.choices[0].message.content == "fixed"


def test_in_memory_client_callable_reply() -> None:
    bodies: list[dict[str, Any]] = []

    def reply(body: dict[str, Any]) -> str:
        bodies.append(body)
        return default_reply(body).upper()

    with OpenAI(
        api_key="x", base_url="http://fake/v1", http_client=in_memory_http_client(reply)
    ) as client:
        completion = client.chat.completions.create(model="gpt-x", messages=USER)
        assert completion.choices[0].message.content == "ECHO: HELLO THERE"
        assert completion.model == "gpt-x"
        assert completion.usage is not None and completion.usage.prompt_tokens == 2
    assert bodies[0]["_path"] == "/v1/chat/completions"


async def test_async_in_memory_client() -> None:
    http_client = async_in_memory_http_client()
    assert isinstance(http_client, httpx2.AsyncClient)
    async with AsyncOpenAI(api_key="x", base_url="http://fake/v1", http_client=http_client) as c:
        results = await asyncio.gather(
            *(c.chat.completions.create(model="m", messages=USER) for _ in range(5))
        )
        assert {r.choices[0].message.content for r in results} == {"Hello from the in-memory fake."}
