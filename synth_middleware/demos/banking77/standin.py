"""The offline stand-in model: an OpenAI-compatible server that is **not an LLM**.

It lets the Banking77 demo and the tests run with no network and no API key.
It answers ``POST /v1/chat/completions`` (and ``/chat/completions``) in the
chat-completions format, tool calls included, and labels itself in every
answer (``model: "standin-tfidf"``, ``system_fingerprint: "stand-in-not-an-llm"``
and a ``synth_standin`` field). What it does, in full:

**Classification requests** (the request carries a function tool with a
string ``enum`` parameter, or it has a system message and the server was given
default labels): a TF-IDF nearest-neighbour classifier. Its documents are the
label names (``card_arrival`` -> "card arrival") and every labelled example it
finds in the prompt; the query is the last user message (the text after a
``Query:``/``Customer query:`` line when there is one, up to a blank line);
the answer is the label of the most similar document (cosine similarity of
TF-IDF vectors; IDF over those documents; lowercased words, a short stopword
list, plural/-ed/-ing suffixes stripped; ties and no overlap go to the earlier
document, i.e. label order first). With a forced or offered tool it answers
with a tool call ``{"<enum parameter>": label}``; otherwise the label as text.

**Labelled examples** it reads, in the system message(s) and earlier turns:

* blocks ``Input:`` / ``Output:`` (each on its own line, the text on the
  following lines), exactly what the MIPRO optimizer's few-shot rendering
  writes (``Example 1:\\nInput:\\n...\\nOutput:\\n...``);
* earlier user/assistant turns (MIPRO's ``demo_format="messages"``): the user
  text is the example, the assistant's answer (text or tool arguments) its label.

An example's text goes through the same query extraction; its label is read
from the output (a JSON object's ``intent``/``label``/``category`` value, or
the text, matched to a known label after normalisation). Examples whose label
is not a known label are ignored. Prose in the instruction has no effect at
all: only examples change what it answers, so its accuracy depends on the
prompt's examples and nothing else.

**Any other request** (a proposer's request: no tools, no system message) gets
a deterministic, honest answer: the first fenced instruction of the prompt,
followed by the labelled examples found in the prompt that it does not already
contain (``Input:``/``Output:`` blocks, the same format; from the
``## Input`` / ``## Output`` / ``## Expected`` blocks the engine's proposer
prompts use: the label is ``Expected`` when present, else the output's label
when its reward is positive), all inside triple backticks, after one line
saying it is a stand-in. It cannot write a better instruction, so it does not
pretend to.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from synth_middleware.demos.banking77.parsing import (
    LabelSet,
    example_blocks,
    extract_query,
    label_of,
    normalize_label,
    parse_examples,
)

__all__ = [
    "MODEL_NAME",
    "STANDIN_NOTE",
    "StandInModel",
    "TfidfIndex",
    "create_standin_app",
    "extract_query",
    "label_of",
    "normalize_label",
    "parse_examples",
    "standin_completion",
]

MODEL_NAME = "standin-tfidf"
FINGERPRINT = "stand-in-not-an-llm"
STANDIN_NOTE = "TF-IDF nearest-neighbour stand-in, not an LLM"

_STOP = frozenset(
    "a an the i im my me we our you your it its is are am was were be been being to of "
    "for in on at and or but if so do does did done can could would should will shall may "
    "might have has had this that these those there here with from by as what why when "
    "where which who how not no yes please just about into than then also get got".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_FENCE = re.compile(r"```[A-Za-z0-9_+\-]*\n?(.*?)```", re.S)
_PROPOSER_BLOCK = re.compile(r"(?m)^# Example \d+[ \t]*$")
_SECTION = re.compile(r"(?m)^## (Input|Output|Reward|Expected|Feedback)[ \t]*$")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def tokens(text: str) -> list[str]:
    """Lowercased words without stopwords, crude suffixes stripped."""
    return [_stem(w) for w in _WORD.findall(text.casefold()) if w not in _STOP]


class TfidfIndex:
    """Nearest-neighbour search over labelled documents with TF-IDF cosine similarity."""

    def __init__(self, docs: Sequence[tuple[str, str]]) -> None:
        self.labels = [label for _, label in docs]
        toks = [tokens(text) for text, _ in docs]
        n = len(docs)
        df: Counter[str] = Counter()
        for t in toks:
            df.update(set(t))
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for i, t in enumerate(toks):
            tf = Counter(t)
            weights = {w: c * self.idf[w] for w, c in tf.items()}
            norm = math.sqrt(sum(x * x for x in weights.values())) or 1.0
            for w, x in weights.items():
                self.postings.setdefault(w, []).append((i, x / norm))

    def nearest(self, query: str) -> tuple[str, float]:
        """``(label, cosine)`` of the most similar document (the first on ties; the first
        document with score 0 when nothing overlaps)."""
        tf = Counter(w for w in tokens(query) if w in self.idf)
        weights = {w: c * self.idf[w] for w, c in tf.items()}
        norm = math.sqrt(sum(x * x for x in weights.values())) or 1.0
        scores: dict[int, float] = {}
        for w, x in weights.items():
            for doc, y in self.postings[w]:
                scores[doc] = scores.get(doc, 0.0) + x * y
        if not scores:
            return self.labels[0], 0.0
        best = min(scores, key=lambda d: (-scores[d], d))
        return self.labels[best], scores[best] / norm


def _label_doc(label: str) -> str:
    return label.replace("_", " ")


class _IndexCache:
    """The indexes of the last few distinct prompts (a prompt is parsed once, not per call)."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[tuple[Any, ...], TfidfIndex] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, labels: tuple[str, ...], examples: tuple[tuple[str, str], ...]) -> TfidfIndex:
        key = (labels, examples)
        with self._lock:
            return self._get(key, labels, examples)

    def _get(
        self,
        key: tuple[Any, ...],
        labels: tuple[str, ...],
        examples: tuple[tuple[str, str], ...],
    ) -> TfidfIndex:
        index = self._items.get(key)
        if index is None:
            docs = [(_label_doc(x), x) for x in labels] + list(examples)
            index = TfidfIndex(docs)
            self._items[key] = index
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
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


def _classify(
    messages: Sequence[Mapping[str, Any]], labels: Sequence[str], cache: _IndexCache
) -> _Decision:
    known = LabelSet(labels)
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    last = users[-1] if users else None
    examples: list[tuple[str, str]] = []
    pending_user: str | None = None
    for i, m in enumerate(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            examples += parse_examples(_text(m.get("content")), known)
        elif i == last:
            break
        elif role == "user":
            text = _text(m.get("content"))
            examples += parse_examples(text, known)
            pending_user = text
        elif role == "assistant" and pending_user is not None:
            label = label_of(_assistant_text(m), known)
            query = extract_query(pending_user)
            if label is not None and query:
                examples.append((query, label))
            pending_user = None
    query = extract_query(_text(messages[last].get("content"))) if last is not None else ""
    index = cache.get(known.labels, tuple(examples))
    label, score = index.nearest(query)
    return _Decision(label, score, len(examples))


def _first_paragraph(text: str) -> str:
    text = text.split("```")[0].strip()
    return re.split(r"\n[ \t]*\n", text, maxsplit=1)[0].strip()


def _proposer_examples(prompt: str, known: LabelSet | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for block in _PROPOSER_BLOCK.split(prompt)[1:]:
        parts = _SECTION.split(block)
        sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
        raw_input = sections.get("Input")
        if not raw_input:
            continue
        query = extract_query(raw_input.split("```")[0])
        # a section ends at the next section; the last one also at its first blank line
        expected = _first_paragraph(sections.get("Expected") or "").splitlines()
        label: str | None = None
        if expected:
            first = expected[0].strip()
            label = known.match(first) if known is not None else first
        else:
            try:
                reward = float(sections.get("Reward", "").split()[0])
            except (ValueError, IndexError):
                reward = 0.0
            output = _first_paragraph(sections.get("Output") or "")
            if reward > 0 and output and known is not None:
                label = label_of(output, known)
        if query and label:
            out.append((query, label))
    return out


def _proposer_answer(prompt: str, labels: Sequence[str] | None) -> str:
    known = LabelSet(labels) if labels else None
    fences = _FENCE.findall(prompt)
    instruction = fences[0].strip() if fences else ""
    have = {extract_query(raw) for raw, _ in example_blocks(instruction)}
    found: list[tuple[str, str]] = []
    if known is not None:
        for body in fences[1:]:
            found += parse_examples(body, known)
        found += parse_examples(_FENCE.sub("", prompt), known)
    found += _proposer_examples(prompt, known)
    new: list[tuple[str, str]] = []
    for query, label in found:
        if query not in have:
            have.add(query)
            new.append((query, label))
    blocks = "\n\n".join(f"Input:\n{q}\nOutput:\n{label}" for q, label in new)
    body = instruction
    if blocks:
        body = (f"{instruction}\n\n" if instruction else "") + f"Labelled examples:\n\n{blocks}"
    head = (
        f"Stand-in proposer ({STANDIN_NOTE}): it cannot write instructions, so it returns the "
        f"current instruction with {len(new)} labelled example(s) from this prompt appended."
    )
    return f"{head}\n```\n{body}\n```"


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
        info.update(kind="classification", examples_in_prompt=decision.examples)
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
        answer = _proposer_answer(prompt, labels)
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
            answer = standin_completion(body, labels=default, cache=cache)
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
        from synth_middleware.container.runner import InProcessServer

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
