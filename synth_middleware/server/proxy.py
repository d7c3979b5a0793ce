"""Pattern A: an OpenAI-compatible chat-completions proxy that serves candidates.

``POST /api/v1/online/sessions/{id}/proxy/chat/completions`` (and
``.../proxy/{rollout_id}/chat/completions``, each also with ``/v1``) takes an
OpenAI chat-completions body, picks a candidate for the rollout
(:mod:`~synth_middleware.server.proxy_selection`), applies it to the messages
(:meth:`Candidate.apply <synth_middleware.client.candidates.Candidate.apply>`:
the system message replaced, or a structured transformation), forwards the
call to the configured upstream with the server's own upstream key (never a
key from the request), records the rollout, and answers with the upstream's
body plus ``x-gepa-rollout-id``, ``x-gepa-candidate-id`` and
``x-mipro-candidate-id``. Streaming (``stream: true``) is passed through chunk
by chunk.

The rollout is committed before the answer is complete (before the final
``data: [DONE]`` of a stream), so a reward sent after it always finds it.
Upstream failures answer 502 (503 when no upstream is configured), upstream
timeouts 504, all as JSON errors; an upstream 4xx other than an auth failure
passes through with its status.

The upstream client is an ``aiohttp.ClientSession`` although the rest of the
package uses httpx: this is the one place where the client's own per-call
cost is the product. Measured on loopback (benchmarks/proxy.py), a bare
Starlette forwarder adds about 1.6 ms per call with a pooled
``httpx.AsyncClient`` and about 0.5 ms with a pooled ``aiohttp.ClientSession``,
against a 2 ms budget for the whole proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Annotated, Any

import aiohttp
from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from yarl import URL

from synth_middleware._scrub import Scrubber
from synth_middleware.client.candidates import system_text
from synth_middleware.server._errors import ApiError, error_response
from synth_middleware.server._responses import dumps
from synth_middleware.server.context import ServerContext, get_context
from synth_middleware.server.operations import new_id
from synth_middleware.server.proxy_selection import CandidateChooser, SessionChoice
from synth_middleware.wire import MAX_ID_CHARS, RolloutRecord, validate_session_id

logger = logging.getLogger("synth_middleware.server")

MAX_CAPTURE_BYTES = 256 * 1024
# Seconds an idle upstream connection is kept: under the 5 s after which uvicorn (vLLM
# and most Python model servers) and Node close one, so we never send on a closing one.
_KEEPALIVE = 4.0
_PASS_HEADERS = ("content-type", "x-request-id", "retry-after", "retry-after-ms")
_PASS_PREFIXES = ("openai-", "x-ratelimit-")
_REQUEST_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "An OpenAI chat-completions request body.",
                    "required": ["messages"],
                    "properties": {
                        "model": {"type": "string"},
                        "messages": {"type": "array", "items": {"type": "object"}},
                        "stream": {"type": "boolean"},
                    },
                }
            }
        },
    }
}


def _user_side(messages: list[Any]) -> list[Any]:
    return [
        m
        for m in messages
        if not (isinstance(m, Mapping) and m.get("role") in ("system", "developer"))
    ]


def _completion_text(data: Any) -> str | None:
    try:
        msg = data["choices"][0]["message"]
        if msg.get("content") is not None:
            return str(msg["content"])
        calls = msg.get("tool_calls")
        if calls:
            return str(calls[0]["function"]["arguments"])
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return None


def _stream_text(raw: bytes) -> str | None:
    """The assistant text of a chat-completions event stream (content or tool arguments)."""
    parts: list[str] = []
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            continue
        try:
            delta = json.loads(payload)["choices"][0]["delta"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if not isinstance(delta, Mapping):
            continue
        if isinstance(delta.get("content"), str):
            parts.append(delta["content"])
        for call in delta.get("tool_calls") or ():
            try:
                args = call["function"]["arguments"]
            except (KeyError, TypeError):
                continue
            if isinstance(args, str):
                parts.append(args)
    return "".join(parts) if parts else None


def _passthrough_headers(upstream: aiohttp.ClientResponse, scrub: Scrubber) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in upstream.headers.items():
        lower = name.lower()
        if (lower in _PASS_HEADERS or lower.startswith(_PASS_PREFIXES)) and scrub.clean(value):
            out[lower] = value
    return out


def _valid_rollout_id(rollout_id: str) -> bool:
    """1-256 visible ASCII characters: it goes into a response header as is."""
    return (
        0 < len(rollout_id) <= MAX_ID_CHARS
        and rollout_id.isascii()
        and rollout_id.isprintable()
        and " " not in rollout_id
    )


def _upstream_error(status: int, raw: bytes, headers: dict[str, str], scrub: Scrubber) -> Response:
    """Map an upstream error answer to ours: auth failures and 5xx are 502s.

    Nothing of the upstream's text is passed on without ``scrub`` (every
    credential the server holds, by value, and anything key-like); for an auth
    failure not even that: its message is about our key.
    """
    message = raw[:500].decode("utf-8", "replace") or f"upstream answered {status}"
    code: str | None = None
    extra: dict[str, Any] = {"upstream_status": status}
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, Mapping):
            message = str(err.get("message") or message)
            code = str(err["code"])[:100] if err.get("code") else None
            if err.get("type"):
                extra["type"] = scrub(str(err["type"])[:100])
            if err.get("param"):
                extra["param"] = scrub(str(err["param"])[:100])
    except (ValueError, AttributeError, RecursionError):
        pass
    message = scrub(message[:500])
    code = scrub(code) if code else None
    keep = {k: v for k, v in headers.items() if k != "content-type"}
    if status in (401, 403):
        return error_response(
            502,
            "upstream_auth_failed",
            f"the upstream model refused the server's credentials ({status}"
            + (f", {code}" if code else "")
            + "): check the server's upstream key",
            headers=keep,
            **extra,
        )
    if status >= 500 or status < 400:
        return error_response(
            502,
            "upstream_error",
            f"the upstream model failed ({status}): {message}",
            headers=keep,
            **extra,
        )
    return error_response(status, code or f"upstream_{status}", message, headers=keep, **extra)


class ProxyService:
    """Forwards chat completions for the sessions of one app (one pooled HTTP client)."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        cfg = ctx.config
        self.chooser = CandidateChooser(
            ctx.engine,
            ctx.feed,
            ctx.rollouts,
            refresh_interval=cfg.proxy_refresh_interval,
            recheck_interval=cfg.external_poll_interval,
        )
        self._session: aiohttp.ClientSession | None = None
        self._url: URL | None = None
        self._registering: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._headers = {"content-type": "application/json"}
        self.scrub = Scrubber((cfg.upstream_api_key, cfg.api_key))
        self._total_timeout = cfg.upstream_total_timeout or cfg.upstream_timeout
        if cfg.upstream_api_key:
            self._headers["authorization"] = f"Bearer {cfg.upstream_api_key}"

    def _http(self) -> tuple[aiohttp.ClientSession, URL]:
        """The pooled upstream session and the chat-completions URL (made on first use,
        inside the running loop, which aiohttp requires)."""
        if self._session is None or self._url is None:
            cfg = self._ctx.config
            if not cfg.upstream_url:
                raise ApiError(
                    503,
                    "upstream_not_configured",
                    "the proxy has no upstream model: start the server with --upstream-url",
                )
            self._url = URL(cfg.upstream_url.rstrip("/") + "/chat/completions")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=_KEEPALIVE),
                # No total deadline (a stream may run long): at most upstream_timeout
                # waiting for a pooled connection or between two reads, like httpx's.
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=cfg.upstream_timeout,
                    sock_connect=cfg.upstream_connect_timeout,
                    sock_read=cfg.upstream_timeout,
                ),
                # One session relays the calls of many apps: no cookies shared between them.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no proxy or .netrc from the environment
            )
        return self._session, self._url

    async def close(self) -> None:
        """Let pending rollout records finish, then close the pooled upstream connections."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        if self._session is not None:
            await self._session.close()
            self._session = self._url = None

    # -- one call ----------------------------------------------------------------

    async def handle(self, request: Request, session_id: str, rollout_id: str | None) -> Response:
        """Serve one chat-completions call for ``session_id``."""
        validate_session_id(session_id)
        if rollout_id is not None and not _valid_rollout_id(rollout_id):
            raise ApiError(
                422,
                "validation_error",
                "rollout_id must be 1-256 visible ASCII characters (no spaces or controls)",
            )
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: "[" nested 100,000 deep
            raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ApiError(422, "validation_error", "messages: a list of chat messages is required")
        session, url = self._http()
        choice = self.chooser.current(session_id)
        messages: list[Any] = body["messages"]
        self._maybe_register_baseline(choice, messages)
        rid = rollout_id or new_id("ro")
        cand = self.chooser.choose(choice, rollout_id)
        new = cand.apply(messages, baseline=choice.baseline) if cand is not None else None
        if new is None:
            new, cid = messages, choice.baseline_id
        else:
            cid = cand.candidate_id  # type: ignore[union-attr]
        self._ctx.rollouts[rid] = (session_id, cid)
        body["messages"] = new
        ids = {
            "x-gepa-rollout-id": rid,
            "x-gepa-candidate-id": cid or "",
            "x-mipro-candidate-id": cid or "",
        }
        record: RolloutRecord = {
            "session_id": session_id,
            "rollout_id": rid,
            "candidate_id": cid,
            "created_at": time.time(),
            "model": body.get("model") if isinstance(body.get("model"), str) else None,
            "metadata": {"via": "proxy"},
            "input": _user_side(messages),
        }
        stream = bool(body.get("stream"))
        try:
            payload = dumps(body)
        except (TypeError, ValueError, RecursionError):
            raise ApiError(422, "validation_error", "the request body is not plain JSON") from None
        # One deadline for the whole call (a stream: up to its first byte), whatever the
        # upstream's pace: the read timeout alone restarts at every byte.
        deadline = asyncio.get_running_loop().time() + self._total_timeout
        try:
            async with asyncio.timeout_at(deadline):
                # Redirects are not followed: the upstream key must not go anywhere else.
                upstream = await session.post(
                    url, data=payload, headers=self._headers, allow_redirects=False
                )
                if stream and upstream.status < 300:
                    return self._stream(upstream, record, ids, deadline)
                try:
                    content = await upstream.read()
                finally:
                    upstream.release()
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors (and ClientErrors)
            return self._timeout(ids)
        except aiohttp.ClientError as exc:
            return self._unreachable(exc, ids)
        headers = {**_passthrough_headers(upstream, self.scrub), **ids}
        if upstream.status >= 300:
            return _upstream_error(upstream.status, content, headers, self.scrub)
        try:
            record["output"] = _completion_text(json.loads(content))
        except ValueError:
            record["output"] = None
        await self._record(record)
        return Response(content, status_code=upstream.status, headers=headers)

    def _stream(
        self,
        upstream: aiohttp.ClientResponse,
        record: RolloutRecord,
        ids: dict[str, str],
        deadline: float,
    ) -> Response:
        headers = {**_passthrough_headers(upstream, self.scrub), **ids}
        headers.setdefault("content-type", "text/event-stream")
        headers["cache-control"] = "no-cache"
        return StreamingResponse(self._relay(upstream, record, deadline), headers=headers)

    async def _relay(
        self, upstream: aiohttp.ClientResponse, record: RolloutRecord, deadline: float
    ) -> AsyncIterator[bytes]:
        captured = bytearray()
        recorded = False
        try:
            async with asyncio.timeout_at(deadline):  # the first byte, within the deadline
                chunk = await upstream.content.readany()
            while chunk:  # b"" at the end (as iter_any)
                if len(captured) < MAX_CAPTURE_BYTES:
                    captured += chunk
                if not recorded and b"[DONE]" in captured[-(len(chunk) + 8) :]:
                    record["output"] = _stream_text(bytes(captured))
                    recorded = True
                    await self._record(record)  # committed before the client sees [DONE]
                yield chunk
                chunk = await upstream.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("proxy: the upstream stream failed: %s", type(exc).__name__)
            error = {"error": {"code": "upstream_error", "message": "the upstream stream failed"}}
            yield b"data: " + dumps(error) + b"\n\n"
        finally:
            # release() keeps the connection only when the answer was read to its end.
            upstream.release()
            if not recorded:  # no [DONE] (ended early, or the client went away)
                record["output"] = _stream_text(bytes(captured))
                self._record_later(record)

    # -- helpers -------------------------------------------------------------------

    async def _record(self, record: RolloutRecord) -> None:
        try:
            await self._ctx.writer.record_rollouts([record], exact=False)
        except Exception as exc:  # the caller got its answer; the record is best effort here
            logger.warning("proxy: could not record rollout %s: %s", record["rollout_id"], exc)

    def _background(self, coro: Any) -> None:
        """Run ``coro`` without awaiting it, keeping a reference until it ends."""
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop any more (shutdown)
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record_later(self, record: RolloutRecord) -> None:
        self._background(self._record(record))

    def _maybe_register_baseline(self, choice: SessionChoice, messages: list[Any]) -> None:
        """A session created without a baseline prompt takes the first call's system prompt."""
        if choice.baseline_text is not None or choice.session_id in self._registering:
            return
        text = system_text(messages)
        if not text:
            return
        self._registering.add(choice.session_id)
        engine, sid = self._ctx.engine, choice.session_id

        def register() -> Any:
            # Only a session that has nothing but an empty baseline: registering a
            # baseline starts a new generation, which would retire other candidates.
            state = engine.get_state(sid)
            base_id = state.get("baseline_candidate_id")
            others = [c for c in state["candidates"] if c["candidate_id"] != base_id]
            if base_id is None or any(c["status"] == "active" for c in others):
                return state
            if engine.get_candidate(base_id).get("candidate_content") is not None:
                return state
            return engine.ensure_session(sid, baseline=text)

        async def run() -> None:
            try:
                await self._ctx.writer.call(register)
                self.chooser.invalidate(sid)
            except Exception as exc:
                logger.warning("proxy: could not register the baseline of %s: %s", sid, exc)

        self._background(run())

    def _timeout(self, ids: dict[str, str]) -> Response:
        return error_response(
            504,
            "upstream_timeout",
            f"the upstream model did not answer within {self._total_timeout:g}s",
            headers=ids,
        )

    @staticmethod
    def _unreachable(exc: Exception, ids: dict[str, str]) -> Response:
        return error_response(
            502,
            "upstream_unavailable",
            f"cannot reach the upstream model ({type(exc).__name__})",
            headers=ids,
        )


def _service(ctx: ServerContext) -> ProxyService:
    svc = ctx.proxy
    if not isinstance(svc, ProxyService):  # None unless the app made one at startup
        svc = ctx.proxy = ProxyService(ctx)
    return svc


async def _chat(
    ctx: ServerContext, request: Request, session_id: str, rollout_id: str | None
) -> Response:
    return await _service(ctx).handle(request, session_id, rollout_id)


class ProxyRoute(APIRoute):
    """A route documented from its endpoint like any other, but served without
    FastAPI's per-request body, parameter and dependency handling (about 0.15 ms of
    CPU a call, measured in-process): the proxy reads its path parameters and its
    raw body itself."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The handler: the endpoint's work, straight from the request."""

        async def handler(request: Request) -> Response:
            params = request.path_params
            ctx: ServerContext = request.app.state.synth
            return await _chat(ctx, request, params["session_id"], params.get("rollout_id"))

        return handler


router = APIRouter(
    prefix="/api/v1/online/sessions/{session_id}/proxy", tags=["proxy"], route_class=ProxyRoute
)
Ctx = Annotated[ServerContext, Depends(get_context)]

# The endpoints below document the routes (parameters, docstrings); ProxyRoute serves them.


@router.post("/chat/completions", openapi_extra=_REQUEST_BODY_DOC)
async def proxy_chat(session_id: str, request: Request, ctx: Ctx) -> Response:
    """Chat completions with the session's candidate applied; each call is a new rollout."""
    return await _chat(ctx, request, session_id, None)


@router.post("/v1/chat/completions", openapi_extra=_REQUEST_BODY_DOC)
async def proxy_chat_v1(session_id: str, request: Request, ctx: Ctx) -> Response:
    """Alias of ``.../proxy/chat/completions``."""
    return await _chat(ctx, request, session_id, None)


@router.post("/{rollout_id}/chat/completions", openapi_extra=_REQUEST_BODY_DOC)
async def proxy_rollout_chat(
    session_id: str, rollout_id: str, request: Request, ctx: Ctx
) -> Response:
    """Chat completions for one named rollout: every call of it gets the same candidate."""
    return await _chat(ctx, request, session_id, rollout_id)


@router.post("/{rollout_id}/v1/chat/completions", openapi_extra=_REQUEST_BODY_DOC)
async def proxy_rollout_chat_v1(
    session_id: str, rollout_id: str, request: Request, ctx: Ctx
) -> Response:
    """Alias of ``.../proxy/{rollout_id}/chat/completions``."""
    return await _chat(ctx, request, session_id, rollout_id)
