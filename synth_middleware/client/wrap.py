"""``wrap()``: one line that makes an OpenAI client apply candidates and open rollouts.

The wrapper is a set of per-instance ``wrapt`` proxies: ``isinstance`` still
holds, only this instance is affected (no class is patched), and anything we
do not intercept passes straight through to the real client.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any, TypeVar

from synth_middleware.client._call import Call, WrapConfig
from synth_middleware.client._streams import (
    AsyncStreamProxy,
    EventStreamManager,
    ObjectProxy,
    RawResponse,
    ResponseEventStreamManager,
    StreamingResponseManager,
    SyncStream,
)
from synth_middleware.client.reporter import reporter_for
from synth_middleware.client.session import runtime_for

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from synth_middleware.backends.base import Backend
    from synth_middleware.client.reporter import ErrorCallback
    from synth_middleware.client.selection import Selection

log = logging.getLogger("synth_middleware")

ClientT = TypeVar("ClientT")
_SELECTION_MODES = ("explore", "best")


def wrap(
    client: ClientT,
    *,
    session: str,
    backend: Backend | None = None,
    selection: Selection = "explore",
    ttl: float = 30.0,
    warm: bool = False,
    warm_timeout: float = 2.0,
    baggage: bool = False,
    send_traces: bool = True,
    tracer_provider: TracerProvider | None = None,
    on_error: ErrorCallback | None = None,
    outbox: str | os.PathLike[str] | bool | None = None,
    batch_size: int | None = None,
    flush_interval: float | None = None,
    max_queue: int | None = None,
) -> ClientT:
    """Wrap an ``OpenAI``/``AsyncOpenAI``/``AzureOpenAI`` client for one prompt (session).

    Intercepted: ``create`` (also ``stream=True``), ``parse`` and ``stream()`` of
    ``chat.completions`` and of ``responses``, and the ``with_raw_response`` /
    ``with_streaming_response`` forms of their ``create`` and ``parse``. Everything
    else passes through.

    Args:
        client: the app's client; it keeps working as before and ``isinstance`` holds.
        session: the session (one optimized prompt) this client's calls belong to.
        backend: where candidates come from and rewards go; default from the
            environment (``SYNTH_URL`` -> HTTP backend, else the embedded one).
        selection: ``"explore"`` (Thompson sampling, the default), ``"best"``, or a
            callable ``(candidates, rollout) -> candidate | candidate_id | None``.
        ttl: seconds a fetched candidate set is fresh; it is served stale while
            a background refresh runs.
        warm: prefetch candidates now, waiting at most ``warm_timeout`` seconds.
        baggage: also put the ids in W3C baggage (it leaves the process in headers).
        send_traces: send call inputs and outputs with rollouts for the optimizer.
        tracer_provider: use this provider instead of the global one for our spans.
        on_error: called with ``(what, item)`` when a reward is dropped, rejected or failed.
        outbox: a SQLite file that makes rewards durable (written there before
            delivery, deleted once the backend confirmed them, leftovers resent
            at start-up); default ``SYNTH_OUTBOX``; ``False`` turns it off.
        batch_size: most rewards per backend call (default 500).
        flush_interval: seconds rewards may gather before a partial batch is
            sent (default 0.05). Rollout records alone gather for a second (or
            this, if longer); a reward takes the ones queued before it along.
        max_queue: rewards held in memory before new ones are dropped (counted)
            or, with an outbox, spilled to it (default 100,000).

    Reporter options apply to the backend's one reporter, shared by every
    ``wrap()`` on that backend; the first outbox given wins.
    """
    validate_session_name(session)
    if not callable(selection) and selection not in _SELECTION_MODES:
        raise ValueError(f"selection must be 'explore', 'best' or a callable, got {selection!r}")
    if not ttl > 0:
        raise ValueError("ttl must be positive")
    if isinstance(client, _ClientProxy):
        client = client.__wrapped__
    _check_client(client)
    if backend is None:
        from synth_middleware.backends.default import default_backend

        backend = default_backend()
    from synth_middleware.client import registry

    if outbox is True:
        raise ValueError("outbox must be a file path, None (SYNTH_OUTBOX) or False")
    from synth_middleware.settings import settings

    if outbox is None:
        outbox = settings.outbox_path or False
    # one reporter per backend; options given here apply to it (the first outbox wins)
    reporter = reporter_for(
        backend,
        on_error=on_error,
        outbox=os.fspath(outbox) if isinstance(outbox, str | os.PathLike) else None,
        batch_size=batch_size,
        flush_interval=flush_interval,
        max_queue=max_queue,
        outbox_sync=settings.outbox_sync or None,
    )
    rt = runtime_for(
        backend,
        session,
        selection=selection,
        ttl=ttl,
        reporter_factory=lambda b: reporter,
    )
    registry.register_session(session, rt)
    cfg = WrapConfig(
        session=session,
        backend=backend,
        runtime=rt,
        selection=selection,
        baggage=baggage,
        send_traces=send_traces,
        tracer_provider=tracer_provider,
    )
    if warm and not rt.wait_ready(warm_timeout):
        log.warning(
            "synth-middleware: session %r: no candidates within %.1fs; serving the app's "
            "own prompt until they arrive",
            session,
            warm_timeout,
        )
    return _ClientProxy(client, cfg)  # type: ignore[return-value]


_SESSION_NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def validate_session_name(session: object) -> str:
    """Return ``session`` if it is a valid session name (1-200 characters of
    ``A-Z a-z 0-9 . _ : -``, what every backend accepts), else raise ``ValueError``.

    ``wrap()`` checks this at once: an invalid name would otherwise serve calls
    and lose every rollout later, when the backend refuses the session.
    """
    if isinstance(session, str) and _SESSION_NAME_RE.fullmatch(session):
        return session
    if not isinstance(session, str):
        raise ValueError(f"session must be a string, got {type(session).__name__}")
    if not session:
        raise ValueError(
            "session must be a non-empty string of A-Z a-z 0-9 . _ : - (e.g. 'support-classifier')"
        )
    shown = repr(session if len(session) <= 60 else session[:60] + "...")
    if len(session) > 200:
        problem = f"is {len(session)} characters long (at most 200)"
    else:
        bad = sorted({ch for ch in session if not _SESSION_NAME_RE.fullmatch(ch)})
        problem = "contains " + ", ".join(repr(ch) for ch in bad[:5])
    raise ValueError(
        f"invalid session name {shown}: it {problem}; use 1-200 characters of "
        "A-Z a-z 0-9 . _ : - (e.g. 'support-classifier')"
    )


def _check_client(client: Any) -> None:
    chat = getattr(client, "chat", None)
    if chat is None or not hasattr(chat, "completions"):
        raise TypeError(
            f"wrap() expects an openai.OpenAI/AsyncOpenAI client, got {type(client).__name__}"
        )


def _is_async(client: Any) -> bool:
    import openai

    return isinstance(client, openai.AsyncOpenAI)


class _ClientProxy(ObjectProxy):
    def __init__(self, client: Any, cfg: WrapConfig) -> None:
        super().__init__(client)
        self._self_cfg = cfg
        self._self_async = _is_async(client)
        self._self_chat: Any = None
        self._self_responses: Any = None

    @property
    def chat(self) -> Any:
        if self._self_chat is None:
            self._self_chat = _ChatProxy(self.__wrapped__.chat, self._self_cfg, self._self_async)
        return self._self_chat

    @property
    def responses(self) -> Any:
        if self._self_responses is None:
            self._self_responses = _ResponsesProxy(
                self.__wrapped__.responses, self._self_cfg, self._self_async
            )
        return self._self_responses

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        return _ClientProxy(self.__wrapped__.with_options(*args, **kwargs), self._self_cfg)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        return _ClientProxy(self.__wrapped__.copy(*args, **kwargs), self._self_cfg)

    @property
    def synth_session(self) -> str:
        """The session this wrapper serves."""
        return self._self_cfg.session

    def __repr__(self) -> str:
        return f"<synth-wrapped {self.__wrapped__!r} session={self._self_cfg.session!r}>"


class _ChatProxy(ObjectProxy):
    def __init__(self, chat: Any, cfg: WrapConfig, is_async: bool) -> None:
        super().__init__(chat)
        self._self_completions = _CompletionsProxy(chat.completions, cfg, is_async)

    @property
    def completions(self) -> Any:
        return self._self_completions


class _ResourceProxy(ObjectProxy):
    """A resource (``chat.completions``, ``responses``) whose ``create``, ``parse``
    (structured outputs, in the SDK since 1.92) and ``stream()`` helper are ours,
    and so are ``create`` and ``parse`` of its ``with_raw_response`` and
    ``with_streaming_response`` forms."""

    def __init__(
        self, resource: Any, cfg: WrapConfig, is_async: bool, api: str, manager: type[Any]
    ) -> None:
        super().__init__(resource)
        self._self_cfg = cfg
        self._self_async = is_async
        self._self_api = api
        make = _async_create if is_async else _sync_create
        self._self_create = make(resource.create, cfg, api)
        parse = getattr(resource, "parse", None)  # parse: the same call shape as create
        self._self_parse = make(parse, cfg, api) if parse is not None else None
        stream = getattr(resource, "stream", None)
        self._self_stream = _managed(stream, cfg, api, manager) if stream is not None else None
        self._self_raw: Any = None
        self._self_streaming: Any = None

    @property
    def create(self) -> Any:
        return self._self_create

    @property
    def parse(self) -> Any:
        if self._self_parse is None:
            return self.__wrapped__.parse  # an older SDK: its own AttributeError
        return self._self_parse

    @property
    def stream(self) -> Any:
        if self._self_stream is None:
            return self.__wrapped__.stream
        return self._self_stream

    @property
    def with_raw_response(self) -> Any:
        if self._self_raw is None:
            real = self.__wrapped__.with_raw_response
            make = _async_raw if self._self_async else _sync_raw
            cfg, api = self._self_cfg, self._self_api
            self._self_raw = _MethodsProxy(
                real, {name: make(fn, cfg, api) for name, fn in _create_and_parse(real)}
            )
        return self._self_raw

    @property
    def with_streaming_response(self) -> Any:
        if self._self_streaming is None:
            real = self.__wrapped__.with_streaming_response
            cfg, api = self._self_cfg, self._self_api
            self._self_streaming = _MethodsProxy(
                real,
                {
                    name: _managed(fn, cfg, api, StreamingResponseManager)
                    for name, fn in _create_and_parse(real)
                },
            )
        return self._self_streaming


def _create_and_parse(resource: Any) -> list[tuple[str, Any]]:
    """The ``create`` and (where the SDK has it) ``parse`` methods of ``resource``."""
    return [(n, fn) for n in ("create", "parse") if (fn := getattr(resource, n, None)) is not None]


class _CompletionsProxy(_ResourceProxy):
    def __init__(self, completions: Any, cfg: WrapConfig, is_async: bool) -> None:
        super().__init__(completions, cfg, is_async, "chat", EventStreamManager)


class _ResponsesProxy(_ResourceProxy):
    def __init__(self, responses: Any, cfg: WrapConfig, is_async: bool) -> None:
        super().__init__(responses, cfg, is_async, "responses", ResponseEventStreamManager)


class _MethodsProxy(ObjectProxy):
    """A resource proxy whose ``create`` and ``parse`` are ours; the rest passes through."""

    def __init__(self, resource: Any, methods: dict[str, Any]) -> None:
        super().__init__(resource)
        self._self_methods = methods

    @property
    def create(self) -> Any:
        return self._self_methods.get("create") or self.__wrapped__.create

    @property
    def parse(self) -> Any:
        return self._self_methods.get("parse") or self.__wrapped__.parse


# --------------------------------------------------------------------- calls
def _sync_create(real: Any, cfg: WrapConfig, api: str) -> Any:
    def create(*args: Any, **kwargs: Any) -> Any:
        call = Call(cfg, kwargs, api)
        try:
            result = real(*args, **call.kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        if kwargs.get("stream") is True:
            call.detach()
            return SyncStream(result, call)
        call.finish(result)
        return result

    create.__doc__ = real.__doc__
    return create


def _async_create(real: Any, cfg: WrapConfig, api: str) -> Any:
    async def create(*args: Any, **kwargs: Any) -> Any:
        call = Call(cfg, kwargs, api)
        try:
            result = await real(*args, **call.kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        if kwargs.get("stream") is True:
            call.detach()
            return AsyncStreamProxy(result, call)
        call.finish(result)
        return result

    create.__doc__ = real.__doc__
    return create


def _sync_raw(real: Any, cfg: WrapConfig, api: str) -> Any:
    def create(*args: Any, **kwargs: Any) -> Any:
        call = Call(cfg, kwargs, api)
        try:
            raw = real(*args, **call.kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        call.finish_raw(raw)
        return RawResponse(raw, call)

    return create


def _async_raw(real: Any, cfg: WrapConfig, api: str) -> Any:
    async def create(*args: Any, **kwargs: Any) -> Any:
        call = Call(cfg, kwargs, api)
        try:
            raw = await real(*args, **call.kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        call.finish_raw(raw)
        return RawResponse(raw, call)

    return create


def _managed(real: Any, cfg: WrapConfig, api: str, proxy: type[StreamingResponseManager]) -> Any:
    """For methods that return a context manager (``with_streaming_response.create``,
    ``stream()``; sync even on the async client): the candidate goes into the
    arguments now, the request happens at ``__enter__``."""

    def create(*args: Any, **kwargs: Any) -> Any:
        call = Call(cfg, kwargs, api)
        try:
            manager = real(*args, **call.kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        call.detach()
        return proxy(manager, call)

    create.__doc__ = real.__doc__
    return create
