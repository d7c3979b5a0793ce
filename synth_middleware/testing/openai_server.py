"""A recording, OpenAI-compatible fake server and in-process HTTP clients for tests.

:class:`FakeOpenAIServer` serves the subset of the OpenAI HTTP API that the middleware
touches (chat completions, the Responses API and the model list) from a Starlette app
running under uvicorn in a background thread on loopback. Every request body and its
headers are recorded, so a test can assert on exactly what the wrapped client sent::

    from openai import OpenAI
    from synth_middleware.testing import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        client = OpenAI(api_key="test", base_url=server.url)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "hi"}],
        )
        assert server.system_prompts() == ["Be brief."]

:func:`in_memory_http_client` and :func:`async_in_memory_http_client` answer the same
routes without any socket at all, which is what overhead benchmarks want: they measure
the client-side cost of the SDK plus the middleware and nothing else.

This module needs the optional ``starlette`` and ``uvicorn`` packages (the ``server``
extra). Nothing else in the library imports it.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from synth_middleware._thread_server import ThreadServer

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "FakeOpenAIServer",
    "ReplyFn",
    "async_in_memory_http_client",
    "default_reply",
    "in_memory_http_client",
]

ReplyFn = Callable[[dict[str, Any]], str]
"""Computes the assistant text for one request body (as recorded, with ``_path``)."""

_START_TIMEOUT = 10.0
_JOIN_TIMEOUT = 10.0
_CHAT_SUFFIX = "/chat/completions"
_RESPONSES_SUFFIX = "/responses"
_SYSTEM_ROLES = ("system", "developer")
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")
_IN_MEMORY_DEFAULT_REPLY = "Hello from the in-memory fake."

_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to perform this request."),
    404: ("invalid_request_error", "not_found", "The requested resource does not exist."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


# --------------------------------------------------------------------------- helpers


def _text_of(content: Any) -> str:
    """Plain text of a message ``content``: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "".join(texts)
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Message-like items of a chat (``messages``) or Responses (``input``) body."""
    items = body.get("messages")
    if items is None:
        items = body.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if isinstance(items, list):
        return [item for item in items if isinstance(item, dict)]
    return []


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(_messages(body)):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def default_reply(body: dict[str, Any]) -> str:
    """The default reply: ``"echo: <text of the last user message>"``."""
    return f"echo: {_last_user_text(body)}"


def _count_tokens(text: str) -> int:
    """A crude, deterministic token count: whitespace-separated words."""
    return len(text.split())


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = sum(_count_tokens(_text_of(m.get("content"))) for m in _messages(body))
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += _count_tokens(instructions)
    return total


def _system_prompt(body: dict[str, Any]) -> str | None:
    """Text of the first system/developer message, or the Responses ``instructions``."""
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        return instructions
    if isinstance(instructions, list):
        for item in instructions:
            if isinstance(item, dict) and item.get("role") in _SYSTEM_ROLES:
                return _text_of(item.get("content"))
    for message in _messages(body):
        if message.get("role") in _SYSTEM_ROLES:
            return _text_of(message.get("content"))
    return None


def _forced_tool_name(body: dict[str, Any]) -> str | None:
    """The function name the request forces via ``tool_choice``, if any."""
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(name := function.get("name"), str):
            return name  # chat completions shape
        if isinstance(name := choice.get("name"), str):
            return name  # Responses API shape
        return None
    if choice == "required":
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            function = tool.get("function")
            if isinstance(function, dict) and isinstance(name := function.get("name"), str):
                return name
            if isinstance(name := tool.get("name"), str):
                return name
    return None


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _chat_completion(body: dict[str, Any], reply: str, model: str) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object for ``body`` answering ``reply``."""
    tool_name = _forced_tool_name(body)
    n = raw_n if isinstance(raw_n := body.get("n"), int) and raw_n > 0 else 1
    choices = []
    for index in range(n):
        if tool_name is None:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": reply,
                "refusal": None,
                "annotations": [],
            }
            finish_reason = "stop"
        else:
            message = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": _new_id("call_"),
                        "type": "function",
                        "function": {"name": tool_name, "arguments": json.dumps({"text": reply})},
                    }
                ],
            }
            finish_reason = "tool_calls"
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}
        )
    prompt_tokens = _prompt_tokens(body)
    completion_tokens = _count_tokens(reply) * n
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _chat_chunks(body: dict[str, Any], reply: str, model: str) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer (without ``[DONE]``)."""
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    base: dict[str, Any] = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model") or model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    tool_name = _forced_tool_name(body)
    if tool_name is None:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in _WORD_BOUNDARY.split(reply):
            if piece:
                yield chunk({"content": piece})
        yield chunk({}, "stop")
    else:
        call = {
            "index": 0,
            "id": _new_id("call_"),
            "type": "function",
            "function": {"name": tool_name, "arguments": ""},
        }
        yield chunk({"role": "assistant", "content": None, "tool_calls": [call]})
        arguments = {"index": 0, "function": {"arguments": json.dumps({"text": reply})}}
        yield chunk({"tool_calls": [arguments]})
        yield chunk({}, "tool_calls")
    if include_usage:
        prompt_tokens = _prompt_tokens(body)
        completion_tokens = _count_tokens(reply)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        yield {**base, "choices": [], "usage": usage}


def _response_output_item(body: dict[str, Any], reply: str, item_id: str) -> dict[str, Any]:
    tool_name = _forced_tool_name(body)
    if tool_name is not None:
        return {
            "type": "function_call",
            "id": item_id,
            "call_id": _new_id("call_"),
            "name": tool_name,
            "arguments": json.dumps({"text": reply}),
            "status": "completed",
        }
    return {
        "type": "message",
        "id": item_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": reply, "annotations": [], "logprobs": []}],
    }


def _response_object(
    body: dict[str, Any],
    reply: str,
    model: str,
    *,
    response_id: str | None = None,
    item_id: str | None = None,
    created_at: int | None = None,
    completed: bool = True,
) -> dict[str, Any]:
    """A Responses API ``response`` object for ``body`` answering ``reply``."""
    input_tokens = _prompt_tokens(body)
    output_tokens = _count_tokens(reply)
    output = [_response_output_item(body, reply, item_id or _new_id("msg_"))] if completed else []
    return {
        "id": response_id or _new_id("resp_"),
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": "completed" if completed else "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model") or model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": (
            {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            }
            if completed
            else None
        ),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _response_events(body: dict[str, Any], reply: str, model: str) -> Iterator[dict[str, Any]]:
    """The typed events of a streamed Responses API answer."""
    ids = {"response_id": _new_id("resp_"), "item_id": _new_id("msg_")}
    created_at = int(time.time())
    item_id = ids["item_id"]
    response_id = ids["response_id"]
    pending = _response_object(
        body,
        reply,
        model,
        response_id=response_id,
        item_id=item_id,
        created_at=created_at,
        completed=False,
    )
    final = _response_object(
        body, reply, model, response_id=response_id, item_id=item_id, created_at=created_at
    )
    item = final["output"][0]
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
    ]
    if item["type"] == "function_call":
        on_item = {"item_id": item_id, "output_index": 0}
        arguments = item["arguments"]
        events += [
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "arguments": "", "status": "in_progress"},
            },
            {"type": "response.function_call_arguments.delta", **on_item, "delta": arguments},
            {
                "type": "response.function_call_arguments.done",
                **on_item,
                "name": item["name"],
                "arguments": arguments,
            },
        ]
    else:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events += [
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **where, "part": part},
        ]
        for piece in _WORD_BOUNDARY.split(reply):
            if piece:
                events.append(
                    {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
                )
        events += [
            {"type": "response.output_text.done", **where, "text": reply, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": {**part, "text": reply}},
        ]
    events += [
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": final},
    ]
    for sequence_number, event in enumerate(events):
        yield {**event, "sequence_number": sequence_number}


def _error_body(
    status: int, message: str | None = None, *, code: str | None = None
) -> dict[str, Any]:
    """An error body in the shape the OpenAI API uses (``{"error": {...}}``)."""
    default_type, default_code, default_message = _ERROR_DEFAULTS.get(
        status,
        ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}"),
    )
    return {
        "error": {
            "message": message or default_message,
            "type": default_type,
            "param": None,
            "code": code or default_code,
        }
    }


def _models_body(model: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}],
    }


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


@dataclass
class _Failure:
    status: int
    remaining: int
    body: dict[str, Any] | None
    retry_after: float | None


def _retry_after_headers(retry_after: float | None) -> dict[str, str]:
    if retry_after is None:
        return {}
    seconds = f"{retry_after:g}" if retry_after != int(retry_after) else str(int(retry_after))
    return {"retry-after": seconds, "retry-after-ms": str(round(retry_after * 1000))}


# --------------------------------------------------------------------------- server


class FakeOpenAIServer:
    """A recording OpenAI-compatible HTTP server on loopback for tests and examples.

    Routes (each also without the ``/v1`` prefix):

    * ``POST /v1/chat/completions``: a ``chat.completion`` object, or server-sent
      ``chat.completion.chunk`` events ending in ``data: [DONE]`` when ``stream`` is true
      (with a trailing usage chunk when ``stream_options.include_usage`` is true). When the
      request has ``tools`` and a ``tool_choice`` forcing a function (or ``"required"``),
      the answer is a single tool call whose arguments are ``{"text": <reply>}``.
    * ``POST /v1/responses``: a Responses API ``response`` whose ``output_text`` is the
      reply, or its typed event stream when ``stream`` is true.
    * ``GET /v1/models``: a list holding ``model``.

    Token usage is counted as whitespace-separated words. Errors use the OpenAI error
    shape, so the ``openai`` SDK raises its usual exception types.

    Args:
        reply: Computes the assistant text from the recorded request body (which carries
            ``_path``). It runs on the server's event loop, so it must not block; use
            ``delay`` to simulate latency. Defaults to :func:`default_reply`, an echo of
            the last user message. If it raises, the request gets a 500 error.
        delay: Seconds to wait (``asyncio.sleep``) before answering each request. The
            attribute can be changed while the server runs.
        host: Interface to bind; keep the default loopback address.
        port: Port to bind; ``0`` picks a free ephemeral port.
        model: Model name used when a request names none, and listed by ``/v1/models``.
        record: Keep every request's body and headers in :attr:`requests` and
            :attr:`headers`. Turn it off for load runs: the lists grow without bound,
            and the server's garbage collections with them.

    Use as a context manager or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        reply: ReplyFn | None = None,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "fake-model",
        record: bool = True,
    ) -> None:
        self.reply: ReplyFn = reply or default_reply
        self.record = record
        self.delay = delay
        self.host = host
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._initial_delay = delay
        self._initial_reply: ReplyFn = self.reply
        self._lock = threading.Lock()
        self._failures: collections.deque[_Failure] = collections.deque()
        self.app = self._build_app()
        self._runner = ThreadServer(
            self.app,
            host=host,
            port=port,
            name="FakeOpenAIServer",
            lifespan="off",
            start_timeout=_START_TIMEOUT,
            join_timeout=_JOIN_TIMEOUT,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound port (only known once :meth:`start` has returned)."""
        return self._runner.port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` with no path, for clients that add ``/v1`` themselves."""
        return self._runner.url

    @property
    def url(self) -> str:
        """Base URL for openai clients, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base_url}/v1"

    @property
    def running(self) -> bool:
        """Whether the server thread is up and serving."""
        return self._runner.running

    def start(self) -> FakeOpenAIServer:
        """Bind, start serving in a daemon thread and return once connections are accepted.

        Raises:
            OSError: The address could not be bound (for example the port is taken).
            RuntimeError: The server did not come up within a few seconds.
        """
        self._runner.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Safe to call more than once.

        Requests still waiting out ``delay`` are answered at once with a 503 error;
        other in-flight requests get up to two seconds to finish before they are cancelled.

        Raises:
            RuntimeError: The server thread did not exit.
        """
        self._runner.stop()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.running else "stopped"
        return f"<FakeOpenAIServer {where} requests={len(self.requests)}>"

    # ------------------------------------------------------------------ test controls

    def clear(self) -> None:
        """Forget the recorded requests and headers (the lists are emptied in place)."""
        with self._lock:
            self.requests.clear()
            self.headers.clear()

    def reset(self) -> None:
        """:meth:`clear`, drop pending :meth:`fail_next` failures, restore ``delay`` and ``reply``."""
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self._failures.clear()
        self.delay = self._initial_delay
        self.reply = self._initial_reply

    def fail_next(
        self,
        status: int = 500,
        count: int = 1,
        *,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` API requests with HTTP ``status``.

        Failures queue up in call order, so ``fail_next(500); fail_next(429)`` fails the
        next request with 500 and the one after with 429. Failed requests are still
        recorded, and ``delay`` still applies.

        Args:
            status: HTTP status code to answer with.
            count: How many consecutive requests fail.
            body: Full JSON body to send; defaults to an OpenAI-shaped error for ``status``.
            retry_after: Seconds to advertise in ``retry-after`` / ``retry-after-ms``.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        with self._lock:
            self._failures.append(_Failure(status, count, body, retry_after))

    def system_prompts(self) -> list[str | None]:
        """System prompt of each recorded chat / Responses request, in order.

        For chat requests this is the text of the first ``system`` or ``developer``
        message; for Responses requests the ``instructions`` (or, failing that, the first
        system/developer input item). ``None`` where the request had none.
        """
        with self._lock:
            bodies = list(self.requests)
        return [
            _system_prompt(body)
            for body in bodies
            if str(body.get("_path", "")).endswith((_CHAT_SUFFIX, _RESPONSES_SUFFIX))
        ]

    def last_request(self) -> dict[str, Any]:
        """The most recently recorded request body (``IndexError`` if there is none)."""
        with self._lock:
            return self.requests[-1]

    # ------------------------------------------------------------------ app

    def _build_app(self) -> Starlette:
        routes = []
        # Azure OpenAI puts the deployment in the path
        azure = ("/v1/deployments/{deployment}", "/openai/deployments/{deployment}")
        for prefix in ("/v1", "", *azure):
            routes += [
                Route(f"{prefix}{_CHAT_SUFFIX}", self._chat_completions, methods=["POST"]),
                Route(f"{prefix}{_RESPONSES_SUFFIX}", self._responses, methods=["POST"]),
                Route(f"{prefix}/models", self._models, methods=["GET"]),
            ]
        return Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}"
        return JSONResponse(_error_body(status, message), status_code=status)

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            if not self._failures:
                return None
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.popleft()
            return failure

    async def _prologue(self, request: Request) -> dict[str, Any] | Response:
        """Parse and record the body, sleep ``delay``, apply failures.

        Returns the recorded body, or a response to send instead.
        """
        raw = await request.body()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            error = _error_body(400, "We could not parse the JSON body of your request.")
            return JSONResponse(error, status_code=400)
        body: dict[str, Any] = {**parsed, "_path": request.url.path}
        if self.record:
            with self._lock:
                self.requests.append(body)
                self.headers.append(dict(request.headers))
        failure = await self._delay_and_fail()
        return body if failure is None else failure

    async def _delay_and_fail(self) -> Response | None:
        if self.delay > 0 and not await self._sleep_unless_stopping(self.delay):
            error = _error_body(503, "FakeOpenAIServer is shutting down.")
            return JSONResponse(error, status_code=503, headers={"connection": "close"})
        failure = self._take_failure()
        if failure is None:
            return None
        content = failure.body if failure.body is not None else _error_body(failure.status)
        return JSONResponse(
            content,
            status_code=failure.status,
            headers={"x-request-id": _new_id("req_"), **_retry_after_headers(failure.retry_after)},
        )

    async def _sleep_unless_stopping(self, seconds: float) -> bool:
        """Sleep ``seconds``; return False early if :meth:`stop` was called meanwhile."""
        wake = self._runner.wake_event
        if wake is None:
            await asyncio.sleep(seconds)
            return True
        try:
            await asyncio.wait_for(wake.wait(), timeout=seconds)
        except TimeoutError:
            return True
        return False

    def _reply_text(self, body: dict[str, Any]) -> str | Response:
        try:
            text = self.reply(body)
        except Exception as exc:
            message = f"FakeOpenAIServer reply callable raised {exc!r}"
            return JSONResponse(_error_body(500, message), status_code=500)
        if not isinstance(text, str):
            message = f"FakeOpenAIServer reply callable returned {type(text).__name__}, not str"
            return JSONResponse(_error_body(500, message), status_code=500)
        return text

    async def _chat_completions(self, request: Request) -> Response:
        body = await self._prologue(request)
        if isinstance(body, Response):
            return body
        text = self._reply_text(body)
        if isinstance(text, Response):
            return text
        if body.get("stream"):
            chunks = list(_chat_chunks(body, text, self.model))
            return _sse(f"data: {json.dumps(c)}\n\n" for c in chunks)
        return _json_response(_chat_completion(body, text, self.model))

    async def _responses(self, request: Request) -> Response:
        body = await self._prologue(request)
        if isinstance(body, Response):
            return body
        text = self._reply_text(body)
        if isinstance(text, Response):
            return text
        if body.get("stream"):
            events = list(_response_events(body, text, self.model))
            return _sse(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        return _json_response(_response_object(body, text, self.model))

    async def _models(self, request: Request) -> Response:
        failure = await self._delay_and_fail()
        return _json_response(_models_body(self.model)) if failure is None else failure


def _json_response(data: dict[str, Any]) -> Response:
    return JSONResponse(data, headers={"x-request-id": _new_id("req_")})


def _sse(events: Iterator[str]) -> StreamingResponse:
    """A server-sent-events response streaming ``events`` then ``data: [DONE]``."""
    frames = list(events)

    async def generate() -> AsyncIterator[str]:
        for frame in frames:
            yield frame
            await asyncio.sleep(0)  # let the chunks go out as separate writes
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        generate(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-request-id": _new_id("req_")},
    )


# --------------------------------------------------------------------------- in-memory


def _import_httpx2() -> Any:
    # httpx2, else httpx: older openai SDKs are built on httpx
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:  # pragma: no cover - depends on the installed openai SDK
            continue
    raise ImportError(
        "in_memory_http_client needs the 'httpx2' package (installed with openai "
        ">= 3) or 'httpx' for older openai SDKs"
    )


class _InMemoryHandler:
    """MockTransport handler answering the fake's routes without a socket.

    With a fixed reply (a string or ``None``) the chat and Responses bodies are built
    once and returned as-is, without parsing the request, so the transport costs next to
    nothing. With a callable reply each request body is parsed and answered like
    :class:`FakeOpenAIServer` would (non-streaming only).
    """

    def __init__(self, httpx: Any, reply: str | ReplyFn | None, model: str) -> None:
        self._httpx = httpx
        self._model = model
        self._headers = [("content-type", "application/json"), ("x-request-id", "req_in_memory")]
        self._reply_fn: ReplyFn | None = reply if callable(reply) else None
        text = _IN_MEMORY_DEFAULT_REPLY if reply is None or callable(reply) else reply
        static: dict[str, Any] = {"model": model}
        self._chat_bytes = _json_bytes(_chat_completion(static, text, model))
        self._responses_bytes = _json_bytes(_response_object(static, text, model))
        self._models_bytes = _json_bytes(_models_body(model))

    def _respond(self, status: int, content: bytes) -> Any:
        return self._httpx.Response(status, headers=self._headers, content=content)

    def _error(self, status: int, message: str) -> Any:
        return self._respond(status, _json_bytes(_error_body(status, message)))

    def __call__(self, request: Any) -> Any:
        path: str = request.url.path
        method: str = request.method
        if method == "POST" and path.endswith(_CHAT_SUFFIX):
            kind = "chat"
        elif method == "POST" and path.endswith(_RESPONSES_SUFFIX):
            kind = "responses"
        elif method == "GET" and path.endswith("/models"):
            return self._respond(200, self._models_bytes)
        else:
            return self._error(404, f"{method} {path}: not served by the in-memory fake")
        content: bytes = request.content
        if self._reply_fn is None and b'"stream"' not in content:
            return self._respond(200, self._chat_bytes if kind == "chat" else self._responses_bytes)
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        if body.get("stream"):
            return self._error(
                400, "in_memory_http_client does not stream; use FakeOpenAIServer for streaming"
            )
        if self._reply_fn is None:
            return self._respond(200, self._chat_bytes if kind == "chat" else self._responses_bytes)
        body["_path"] = path
        text = self._reply_fn(body)
        if kind == "chat":
            return self._respond(200, _json_bytes(_chat_completion(body, text, self._model)))
        return self._respond(200, _json_bytes(_response_object(body, text, self._model)))


def in_memory_http_client(
    reply: str | ReplyFn | None = None, *, model: str = "fake-model"
) -> httpx2.Client:
    """An ``httpx2.Client`` answering OpenAI chat / Responses calls in-process.

    No socket, thread or event loop is involved, so the time a call takes is the pure
    client-side cost (SDK plus middleware). Pass it to the SDK::

        OpenAI(api_key="x", base_url="http://fake/v1", http_client=in_memory_http_client())

    Args:
        reply: A fixed reply text (default: a canned sentence), answered from prebuilt
            JSON bytes without parsing the request (usage ``prompt_tokens`` is then 0);
            or a callable computing the text from each parsed request body (which gets
            ``_path``), with usage counted like :class:`FakeOpenAIServer`.
        model: Model name reported in fixed-reply answers and by ``/models``.

    Streaming requests get a 400 error. Requests are not recorded.

    Raises:
        ImportError: Neither ``httpx2`` nor ``httpx`` is installed.
    """
    httpx = _import_httpx2()
    client: httpx2.Client = httpx.Client(
        transport=httpx.MockTransport(_InMemoryHandler(httpx, reply, model))
    )
    return client


def async_in_memory_http_client(
    reply: str | ReplyFn | None = None, *, model: str = "fake-model"
) -> httpx2.AsyncClient:
    """Like :func:`in_memory_http_client`, as an ``httpx2.AsyncClient`` for ``AsyncOpenAI``."""
    httpx = _import_httpx2()
    client: httpx2.AsyncClient = httpx.AsyncClient(
        transport=httpx.MockTransport(_InMemoryHandler(httpx, reply, model))
    )
    return client
