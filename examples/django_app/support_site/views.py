"""The classifier, as a sync view and as an async view."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from support_site import llm


def _messages(request: HttpRequest) -> list[dict[str, str]]:
    text = json.loads(request.body or b"{}").get("text", "")
    return [{"role": "system", "content": llm.SYSTEM}, {"role": "user", "content": text}]


@csrf_exempt
@require_POST
def classify(request: HttpRequest) -> JsonResponse:
    """Sync view: the wrapped call joins the request's rollout."""
    resp = llm.client().chat.completions.create(model=llm.MODEL, messages=_messages(request))
    r = request.synth_rollout  # type: ignore[attr-defined]
    return JsonResponse({"intent": (resp.choices[0].message.content or "").strip(),
                         "rollout_id": r.rollout_id, "candidate_id": r.candidate_id})


@csrf_exempt
@require_POST
async def aclassify(request: HttpRequest) -> JsonResponse:
    """Async view: the same, with the async client."""
    client = llm.async_client()
    try:
        resp = await client.chat.completions.create(model=llm.MODEL, messages=_messages(request))
    finally:
        await client.close()
    r = request.synth_rollout  # type: ignore[attr-defined]
    return JsonResponse({"intent": (resp.choices[0].message.content or "").strip(),
                         "rollout_id": r.rollout_id, "candidate_id": r.candidate_id})
