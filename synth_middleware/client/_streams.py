"""Stream proxies: the span ends when the stream ends, is closed, or is abandoned.

They behave as the SDK's ``Stream``/``AsyncStream`` (wrapt proxies: isinstance
holds) and carry the rollout as ``.synth``. A consumer that ``break``s early
and drops the stream still ends the span, from ``__del__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import wrapt

from synth_middleware.client._call import Call


class _Collect:
    """Accumulates what the span and the rollout record need from chunks."""

    __slots__ = ("last", "parts", "usage")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.usage: Any = None
        self.last: Any = None

    def add(self, chunk: Any) -> None:
        self.last = chunk
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage
        try:
            delta = chunk.choices[0].delta.content
        except (AttributeError, IndexError, TypeError):
            delta = getattr(chunk, "delta", None)  # Responses API text delta events
        if isinstance(delta, str):
            self.parts.append(delta)

    def summary(self) -> Any:
        return _StreamSummary(self.last, self.usage)

    def text(self) -> str:
        return "".join(self.parts)


class _StreamSummary:
    __slots__ = ("id", "model", "usage")

    def __init__(self, last: Any, usage: Any) -> None:
        self.model = getattr(last, "model", None)
        self.id = getattr(last, "id", None)
        self.usage = usage


if TYPE_CHECKING:
    # wrapt 2 types its proxies (generic in the wrapped type); wrapt 1.x, which
    # pyproject still allows, is neither typed nor subscriptable at run time
    ObjectProxy = wrapt.ObjectProxy[Any]
else:
    ObjectProxy = wrapt.ObjectProxy


class SyncStream(ObjectProxy):
    """Proxy of ``openai.Stream`` that finishes the rollout's span at the end."""

    def __init__(self, stream: Any, call: Call) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_collect = _Collect()
        self._self_done = False

    @property
    def synth(self) -> Any:
        """The rollout of this stream."""
        return self._self_call.rollout

    def _self_finish(self, error: BaseException | None = None) -> None:
        if self._self_done:
            return
        self._self_done = True
        call = self._self_call
        if error is not None:
            call.fail(error)
        else:
            call.finish(
                self._self_collect.summary(), output=self._self_collect.text(), attach=False
            )

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self.__wrapped__)
        except StopIteration:
            self._self_finish()
            raise
        except BaseException as exc:
            self._self_finish(exc)
            raise
        self._self_collect.add(chunk)
        return chunk

    def close(self) -> None:
        """Close the HTTP response and end the span."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_finish()

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._self_done:
            self._self_finish()


class AsyncStreamProxy(ObjectProxy):
    """Proxy of ``openai.AsyncStream`` that finishes the rollout's span at the end."""

    def __init__(self, stream: Any, call: Call) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_collect = _Collect()
        self._self_done = False

    @property
    def synth(self) -> Any:
        """The rollout of this stream."""
        return self._self_call.rollout

    def _self_finish(self, error: BaseException | None = None) -> None:
        if self._self_done:
            return
        self._self_done = True
        call = self._self_call
        if error is not None:
            call.fail(error)
        else:
            call.finish(
                self._self_collect.summary(), output=self._self_collect.text(), attach=False
            )

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_finish()
            raise
        except BaseException as exc:
            self._self_finish(exc)
            raise
        self._self_collect.add(chunk)
        return chunk

    async def close(self) -> None:
        """Close the HTTP response and end the span."""
        try:
            await self.__wrapped__.close()
        finally:
            self._self_finish()

    async def __aenter__(self) -> AsyncStreamProxy:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __del__(self) -> None:
        if not self._self_done:
            self._self_finish()


class StreamingResponseManager(ObjectProxy):
    """Proxy of the context manager ``with_streaming_response.create`` returns.

    The rollout is on the response from ``__enter__``; the span ends at
    ``__exit__``, when the app is done reading the body.
    """

    def __init__(self, manager: Any, call: Call) -> None:
        super().__init__(manager)
        self._self_call = call
        self._self_resp: Any = None
        self._self_aoutput: str | None = None

    def _self_entered(self, resp: Any, is_async: bool = False) -> Any:
        from synth_middleware.rollout import attach_rollout

        self._self_resp = resp
        attach_rollout(resp, self._self_call.rollout)
        return resp

    def _self_exited(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._self_call.fail(exc)
        else:
            self._self_call.finish(self._self_result(), output=self._self_output(), attach=False)

    def _self_result(self) -> Any:
        """What the rollout records as the call's response when the block ends."""
        return self._self_resp

    _self_body_output = True  # the trace's output comes from the body the app read

    def _self_output(self) -> Any:
        """The output text for the trace: from the body, if the app read it."""
        if self._self_resp is None or not self._self_body_output:
            return None
        if self._self_aoutput is not None:  # the async exit parsed it already
            return self._self_aoutput
        return self._self_call.body_output(self._self_resp, if_read=True)

    def __enter__(self) -> Any:
        try:
            resp = self.__wrapped__.__enter__()
        except BaseException as exc:
            self._self_call.fail(exc)
            raise
        return self._self_entered(resp)

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc)
        finally:
            self._self_exited(exc[1] if len(exc) > 1 else None)

    async def __aenter__(self) -> Any:
        try:
            resp = await self.__wrapped__.__aenter__()
        except BaseException as exc:
            self._self_call.fail(exc)
            raise
        return self._self_entered(resp, is_async=True)

    async def __aexit__(self, *exc: Any) -> Any:
        error = exc[1] if len(exc) > 1 else None
        try:
            return await self.__wrapped__.__aexit__(*exc)
        finally:
            if error is None and self._self_resp is not None and self._self_body_output:
                resp, call = self._self_resp, self._self_call
                self._self_aoutput = await call.abody_output(resp, if_read=True)
            self._self_exited(error)


class EventStreamManager(StreamingResponseManager):
    """Proxy of the manager ``chat.completions.stream()`` returns (sync or async).

    The request is made at ``__enter__``; the SDK's event stream it yields
    carries the rollout; at ``__exit__`` the completion accumulated so far (all
    of it, or what was read before a ``break``) is recorded and ends the span.
    """

    _self_body_output = False  # the rollout reads the output from the snapshot

    def _self_result(self) -> Any:
        try:  # the SDK's running snapshot; it raises before the first chunk
            return self._self_resp.current_completion_snapshot
        except Exception:
            return None


class ResponseEventStream(SyncStream):
    """The event stream of ``responses.stream()``: its ``until_done()`` and
    ``get_final_response()`` read the remaining events through this proxy, so the
    rollout records the text even when the app never iterates."""

    def until_done(self) -> ResponseEventStream:
        """Read the stream to its end (as the SDK's ``until_done``)."""
        for _event in self:
            pass
        return self

    def get_final_response(self) -> Any:
        """The completed response (as the SDK's), after reading every event here."""
        self.until_done()
        return self.__wrapped__.get_final_response()


class AsyncResponseEventStream(AsyncStreamProxy):
    """Async twin of :class:`ResponseEventStream`."""

    async def until_done(self) -> AsyncResponseEventStream:
        """Read the stream to its end (as the SDK's ``until_done``)."""
        async for _event in self:
            pass
        return self

    async def get_final_response(self) -> Any:
        """The completed response (as the SDK's), after reading every event here."""
        await self.until_done()
        return await self.__wrapped__.get_final_response()


class ResponseEventStreamManager(StreamingResponseManager):
    """Proxy of the manager ``responses.stream()`` returns (sync or async).

    The event stream from ``__enter__`` is wrapped like ``create(stream=True)``'s
    (:class:`SyncStream` / :class:`AsyncStreamProxy`): it carries the rollout and
    collects the text deltas the app reads; the rollout is recorded when the
    events end, or at the latest when the ``with`` block does.
    """

    _self_body_output = False  # the event stream collects the text it passes on

    def _self_entered(self, resp: Any, is_async: bool = False) -> Any:
        cls = AsyncResponseEventStream if is_async else ResponseEventStream
        self._self_resp = cls(resp, self._self_call)
        return self._self_resp

    def _self_exited(self, exc: BaseException | None) -> None:
        if self._self_resp is not None:
            self._self_resp._self_finish(exc)  # once: a stream that ended already recorded
        elif exc is not None:
            self._self_call.fail(exc)


class RawResponse(ObjectProxy):
    """Proxy of a raw (legacy) API response: ``parse()`` results carry the rollout too."""

    def __init__(self, raw: Any, call: Call) -> None:
        super().__init__(raw)
        self._self_call = call

    @property
    def synth(self) -> Any:
        """The rollout of this response."""
        return self._self_call.rollout

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        """Parse the body as the SDK does and attach the rollout to the result."""
        parsed = self.__wrapped__.parse(*args, **kwargs)
        from synth_middleware.rollout import attach_rollout

        attach_rollout(parsed, self._self_call.rollout)
        return parsed
