"""The Django middleware: one rollout per request, for sync and async stacks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from synth_middleware.client.web import RequestRollout
from synth_middleware.rollout import Rollout, current_rollout
from synth_middleware_django import conf

REQUEST_ATTR = "synth_rollout"
"""``request.synth_rollout``: the request's :class:`Rollout`."""


class SynthMiddleware:
    """Open one rollout per request; return its signed token in ``x-synth-rollout``.

    ::

        MIDDLEWARE = [..., "synth_middleware_django.SynthMiddleware", ...]

    Sync and async capable (WSGI and ASGI, sync and async views): every
    wrapped client call the request makes joins its rollout, including calls
    made while a streaming response's body is produced. Options come from
    ``settings.SYNTH_MIDDLEWARE`` (see :mod:`synth_middleware_django.conf`).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.config, _ = conf.load()
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        """Handle a request (returns a coroutine in an async stack)."""
        if self._async:
            return self.__acall__(request)
        rr = self._open(request)
        if rr is None:
            return self.get_response(request)
        rr.activate()
        try:
            response = self.get_response(request)
        finally:
            rr.deactivate()
        return self._respond(response, rr)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        """The async path."""
        rr = self._open(request)
        if rr is None:
            return await self.get_response(request)
        rr.activate()
        try:
            response = await self.get_response(request)
        finally:
            rr.deactivate()
        return self._respond(response, rr)

    def _open(self, request: HttpRequest) -> RequestRollout | None:
        cfg = self.config
        if cfg.excluded(request.path):
            return None
        key = None
        if cfg.wants_key:
            key = cfg.sticky_key(request, request.headers.get, request.COOKIES.get)
        bag = request.META.get("HTTP_BAGGAGE") if cfg.baggage else None
        rr = RequestRollout(cfg, key, baggage_header=bag)
        setattr(request, REQUEST_ATTR, rr.rollout)
        return rr

    def _respond(self, response: HttpResponseBase, rr: RequestRollout) -> HttpResponseBase:
        response[self.config.header] = rr.token()
        if getattr(response, "streaming", False) and getattr(response, "file_to_stream", None) is None:
            content = response.streaming_content
            if getattr(response, "is_async", False):
                response.streaming_content = _astream(content, rr)
            else:
                response.streaming_content = _stream(content, rr)
        else:
            rr.finish()
        return response


def _stream(content: Iterator[bytes], rr: RequestRollout) -> Iterator[bytes]:
    """The body with the rollout current while each chunk is produced."""
    it = iter(content)
    try:
        while True:
            rr.activate()
            try:
                chunk = next(it)
            except StopIteration:
                return
            finally:
                rr.deactivate()
            yield chunk
    finally:
        rr.finish()


async def _astream(content: AsyncIterator[bytes], rr: RequestRollout) -> AsyncIterator[bytes]:
    """The async body with the rollout current while each chunk is produced."""
    it = content.__aiter__()
    try:
        while True:
            rr.activate()
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                return
            finally:
                rr.deactivate()
            yield chunk
    finally:
        rr.finish()


def get_rollout(request: HttpRequest) -> Rollout:
    """The request's :class:`Rollout` (needs :class:`SynthMiddleware` in ``MIDDLEWARE``)."""
    r = getattr(request, REQUEST_ATTR, None) or current_rollout()
    if r is None:
        raise RuntimeError(
            "no synth rollout for this request: add "
            '"synth_middleware_django.SynthMiddleware" to MIDDLEWARE'
        )
    return r

