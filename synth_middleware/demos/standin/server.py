"""The offline stand-in model: an OpenAI-compatible server that is **not an LLM**.

It lets the demos and the tests run with no network and no API key. It
answers ``POST /v1/chat/completions`` (and ``/chat/completions``) in the
chat-completions format, tool calls included, and labels itself in every
answer (``model: "standin-wordllama"``, ``system_fingerprint:
"stand-in-not-an-llm"`` and a ``synth_standin`` field). What it does, in full:

**Classification requests** (the request carries a function tool with a
string ``enum`` parameter, or it has a system message and the server was given
default labels): nearest label by cosine similarity of pretrained static word
embeddings (wordllama, :mod:`~synth_middleware.demos.standin.embedding`; it
runs offline, the weights ship in the wheel).

* The **query** is the last user message, read template-agnostically
  (:func:`~synth_middleware.demos.standin.parsing.extract_query`): the text
  after a ``Query:``-like line when there is one, else the whole message
  without the lines that list the labels.
* Each **label** is represented by one document: its name in words plus
  whatever the prompt says about it, by the fixed reading rule of
  :mod:`~synth_middleware.demos.standin.reading` (label lines such as ``-
  label: description``, label headings with the lines under them, sentences
  that mention the label, "not to be confused with" clauses, labelled
  examples as ``Input:``/``Output:`` blocks or earlier turns).
* The answer is the label whose document is most similar to the query (ties,
  e.g. an empty query, go to the earlier label). With a forced or offered tool
  it answers with a tool call ``{"<enum parameter>": label}``; otherwise the
  label as text.

So what a prompt says about its labels moves the answer, as it does for an
instruction-following model; text that is about no label (persona, tips,
format) does not. The label documents are embedded once per distinct prompt
(cached), a request costs one query embedding and a matrix product.

**Any other request** (a proposer's request: no tools, no system message) goes
to the reflective stand-in proposer
(:mod:`~synth_middleware.demos.standin.reflect`): from the rollouts in the
prompt (query, the model's answer, the expected label) it writes label
descriptions, examples and "not to be confused with" notes into the
instruction, deterministically, and says that it is a stand-in.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cachetools import LRUCache
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from synth_middleware.demos.standin.embedding import ENCODER_NAME, get_encoder
from synth_middleware.demos.standin.parsing import (
    LabelSet,
    extract_query,
    label_of,
    normalize_label,
    parse_examples,
)
from synth_middleware.demos.standin.reading import read_prompt
from synth_middleware.demos.standin.reflect import reflective_answer

__all__ = [
    "FINGERPRINT",
    "MODEL_NAME",
    "STANDIN_NOTE",
    "StandInModel",
    "create_standin_app",
    "extract_query",
    "label_of",
    "normalize_label",
    "parse_examples",
    "standin_completion",
]

MODEL_NAME = "standin-wordllama"
FINGERPRINT = "stand-in-not-an-llm"
STANDIN_NOTE = f"word-embedding nearest-label stand-in ({ENCODER_NAME}), not an LLM"


@dataclass(frozen=True, slots=True)
class _Index:
    labels: tuple[str, ...]
    matrix: np.ndarray  # (labels, dim), unit rows
    examples: int
    described: int


class _IndexCache:
    """The label documents' embeddings of the last few distinct prompts (a prompt is read
    and embedded once, not per call)."""

    def __init__(self, size: int = 256) -> None:
        self._items: LRUCache[tuple[Any, ...], _Index] = LRUCache(maxsize=size)
        self._lock = threading.Lock()  # LRUCache is not thread-safe; threads share this

    def get(
        self,
        labels: tuple[str, ...],
        instructions: tuple[str, ...],
        examples: tuple[tuple[str, str], ...],
    ) -> _Index:
        key = (labels, instructions, examples)
        with self._lock:
            index = self._items.get(key)  # a hit makes the key the most recent
            if index is not None:
                return index
        reading = read_prompt(instructions, labels, examples)
        matrix = get_encoder().embed(list(reading.documents()))
        index = _Index(labels, matrix, len(reading.examples), len(reading.texts))
        with self._lock:
            self._items[key] = index  # evicts the least recently used beyond size
        return index


_SHARED_CACHE = _IndexCache()

# --------------------------------------------------------------------------- requests


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") if isinstance(p, Mapping) else str(p)
            for p in content
            if isinstance(p, Mapping | str)
        )
    return "" if content is None else str(content)


def _assistant_text(msg: Mapping[str, Any]) -> str:
    calls = msg.get("tool_calls")
    if isinstance(calls, list) and calls:
        fn = calls[0].get("function") if isinstance(calls[0], Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
            return str(fn["arguments"])
    return _text(msg.get("content"))


def _enum_tool(body: Mapping[str, Any]) -> tuple[str, str, list[str]] | None:
    """``(function name, parameter, enum)`` of the first tool with a string enum parameter."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    forced: str | None = None
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            forced = fn["name"]
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or (forced is not None and fn.get("name") != forced):
            continue
        props = (fn.get("parameters") or {}).get("properties") or {}
        for pname, spec in props.items():
            if isinstance(spec, Mapping) and isinstance(spec.get("enum"), list):
                values = [str(v) for v in spec["enum"]]
                if values:
                    return str(fn.get("name")), str(pname), values
    return None


@dataclass(slots=True)
class _Decision:
    label: str
    score: float
    examples: int
    described: int


def _classify(
    messages: Sequence[Mapping[str, Any]], labels: Sequence[str], cache: _IndexCache
) -> _Decision:
    known = LabelSet(labels)
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    last = users[-1] if users else None
    instructions: list[str] = []
    examples: list[tuple[str, str]] = []
    pending_user: str | None = None
    for i, m in enumerate(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            instructions.append(_text(m.get("content")))
        elif i == last:
            break
        elif role == "user":
            text = _text(m.get("content"))
            examples += parse_examples(text, known)
            pending_user = text
        elif role == "assistant" and pending_user is not None:
            label = label_of(_assistant_text(m), known)
            query = extract_query(pending_user, known)
            if label is not None and query:
                examples.append((query, label))
            pending_user = None
    query = extract_query(_text(messages[last].get("content")), known) if last is not None else ""
    index = cache.get(known.labels, tuple(instructions), tuple(examples))
    scores = index.matrix @ get_encoder().embed([query])[0]
    best = int(np.argmax(scores))  # the first of equal scores
    return _Decision(index.labels[best], float(scores[best]), index.examples, index.described)


def _usage(messages: Iterable[Mapping[str, Any]], answer: str) -> dict[str, int]:
    prompt = sum(len(_text(m.get("content")).split()) for m in messages)
    completion = max(1, len(answer.split()))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def standin_completion(
    body: Mapping[str, Any],
    *,
    labels: Sequence[str] | None = None,
    cache: _IndexCache | None = None,
) -> dict[str, Any]:
    """The stand-in's chat-completion answer to one request body (see the module doc).

    Raises ``ValueError`` for a body without a ``messages`` list.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise ValueError("messages must be a list of message objects")
    cache = cache or _SHARED_CACHE
    tool = _enum_tool(body)
    has_system = any(m.get("role") in ("system", "developer") for m in messages)
    message: dict[str, Any]
    info: dict[str, Any] = {"note": STANDIN_NOTE}
    if tool is not None or (labels and has_system):
        use = tool[2] if tool is not None else list(labels or [])
        decision = _classify(messages, use, cache)
        info.update(
            kind="classification",
            examples_in_prompt=decision.examples,
            labels_described=decision.described,
        )
        info["similarity"] = round(decision.score, 4)
        answer = decision.label
        if tool is not None and body.get("tool_choice") != "none":
            name, param, _ = tool
            args = json.dumps({param: decision.label})
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{abs(hash((name, args, time.time_ns()))) % 10**12:012d}",
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                ],
            }
            finish = "tool_calls"
            answer = args
        else:
            message = {"role": "assistant", "content": decision.label}
            finish = "stop"
    else:
        prompt = "\n\n".join(_text(m.get("content")) for m in messages)
        answer = reflective_answer(prompt, labels, note=STANDIN_NOTE)
        info["kind"] = "proposer"
        message = {"role": "assistant", "content": answer}
        finish = "stop"
    return {
        "id": f"chatcmpl-standin-{time.time_ns():x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_NAME,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(messages, answer),
        "synth_standin": info,
    }


# --------------------------------------------------------------------------- server


def create_standin_app(labels: Sequence[str] | None = None, *, latency: float = 0.0) -> Starlette:
    """The stand-in as an ASGI app: ``POST [/v1]/chat/completions``, ``GET [/v1]/models``,
    ``GET /health``. ``labels``: the default labels for plain-text classification.

    ``latency``: seconds every chat answer waits (without blocking others), so an online
    loop runs at an LLM-like pace instead of ~1000x faster than one; a request's
    ``x-standin-latency`` header overrides it (``0`` for bulk evaluation).
    ``app.state.standin`` counts requests (``classifications``, ``proposals``)."""
    cache = _IndexCache()
    counts: Counter[str] = Counter()
    default = list(labels) if labels else None

    async def chat(request: Request) -> Response:
        wait = latency
        override = request.headers.get("x-standin-latency")
        if override is not None:
            try:
                wait = max(0.0, min(float(override), 60.0))
            except ValueError:
                return _error(400, "x-standin-latency must be a number of seconds")
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        if body.get("stream"):
            return _error(400, "the stand-in does not stream; send stream=false")
        try:
            # off the event loop: a new prompt is read and embedded once (up to ~0.3 s)
            answer = await run_in_threadpool(standin_completion, body, labels=default, cache=cache)
        except ValueError as exc:
            return _error(400, str(exc))
        kind = answer["synth_standin"]["kind"]
        counts["classifications" if kind == "classification" else "proposals"] += 1
        return JSONResponse(answer, headers={"x-synth-standin": FINGERPRINT})

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": MODEL_NAME, "object": "model", "owned_by": STANDIN_NOTE}],
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"healthy": True, "model": MODEL_NAME, "note": STANDIN_NOTE})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    app.state.standin = counts
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": None}},
        status_code=status,
    )


class StandInModel:
    """The stand-in served on loopback in a thread; ``.url`` is its OpenAI ``base_url``
    (``http://127.0.0.1:PORT/v1``)::

        with StandInModel(labels) as model:
            openai.OpenAI(base_url=model.url, api_key="none")
    """

    def __init__(
        self, labels: Sequence[str] | None = None, *, port: int = 0, latency: float = 0.0
    ) -> None:
        from synth_middleware.offline.container.runner import InProcessServer

        self.latency = latency
        self.app = create_standin_app(labels, latency=latency)
        self._server = InProcessServer(self.app, port=port, name="standin-model")

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (ends in ``/v1``)."""
        return f"{self._server.url}/v1"

    @property
    def counts(self) -> Counter[str]:
        """Requests served, by kind."""
        return self.app.state.standin  # type: ignore[no-any-return]

    def start(self) -> StandInModel:
        """Start serving."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    def __enter__(self) -> StandInModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
