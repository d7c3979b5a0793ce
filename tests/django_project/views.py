"""Views of the test project: sync and async, plain and streaming.

The test module installs the wrapped clients in ``CLIENTS`` before requests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from synth_middleware_django import get_rollout

import synth_middleware as synth

CLIENTS: dict[str, Any] = {}
SYSTEM = "You are a support assistant. Classify the user's request."


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def classify(request: HttpRequest) -> JsonResponse:
    r = get_rollout(request)
    resp = CLIENTS["sync"].chat.completions.create(
        model="m", messages=_messages(request.GET.get("text", "hi"))
    )
    return JsonResponse(
        {
            "rollout_id": r.rollout_id,
            "call": resp.synth.rollout_id,
            "current": synth.current_rollout().rollout_id,  # type: ignore[union-attr]
            "key": r.key,
        }
    )


async def aclassify(request: HttpRequest) -> JsonResponse:
    r = request.synth_rollout  # type: ignore[attr-defined]
    client = CLIENTS["async"]()
    await asyncio.sleep(0.01)
    resp = await client.chat.completions.create(model="m", messages=_messages("async"))

    async def spawned() -> str:
        return synth.current_rollout().rollout_id  # type: ignore[union-attr]

    in_task = await asyncio.create_task(spawned())
    await client.close()
    return JsonResponse(
        {"rollout_id": r.rollout_id, "call": resp.synth.rollout_id, "task": in_task, "key": r.key}
    )


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def body():  # type: ignore[no-untyped-def]
        s = CLIENTS["sync"].chat.completions.create(
            model="m", messages=_messages("one two"), stream=True
        )
        for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
        yield f"|{s.synth.rollout_id}|{synth.current_rollout().rollout_id}"  # type: ignore[union-attr]

    return StreamingHttpResponse(body(), content_type="text/plain")


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def body():  # type: ignore[no-untyped-def]
        client = CLIENTS["async"]()
        s = await client.chat.completions.create(
            model="m", messages=_messages("three four"), stream=True
        )
        async for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
        yield f"|{s.synth.rollout_id}|{synth.current_rollout().rollout_id}"  # type: ignore[union-attr]
        await client.close()

    return StreamingHttpResponse(body(), content_type="text/plain")
