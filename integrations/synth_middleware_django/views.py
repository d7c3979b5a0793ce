"""The feedback endpoint: ``POST {token, reward, feedback?, metadata?}``."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from synth_middleware.client.web import (
    FeedbackError,
    check_body_size,
    forbidden,
    parse_feedback,
    submit_feedback,
)
from synth_middleware_django import conf


@csrf_exempt  # the signed token is the credential; no cookie is trusted
def feedback(request: HttpRequest) -> JsonResponse:
    """Reward a rollout by the token its response carried in ``x-synth-rollout``.

    Answers 202 ``{"status": "accepted", "rollout_id", "idempotency_key"}``
    once the reward is queued (a replayed token answers its first result, 409
    if it carries another reward; ``FEEDBACK_PER_TOKEN: "all"`` counts every
    post); 400 for a body that is not a JSON object, 403
    for a forged or expired token or one ``FEEDBACK_AUTH`` refuses, 405 for a
    method other than POST, 413 for an oversized body, 422 for a missing or
    bad reward, feedback or metadata, 503 when no wrapped client is there to
    deliver it; every error with ``{"error": {"code", "message"}}``.
    """
    cfg, auth = conf.load()
    try:
        if request.method != "POST":
            raise FeedbackError(405, "method_not_allowed", "use POST")
        check_body_size(request.META.get("CONTENT_LENGTH"))
        fb = parse_feedback(
            request.body,
            secret=cfg.secret,
            max_age=cfg.token_max_age,
            per_token=cfg.feedback_per_token,
        )
        if auth is not None and not auth(request, fb.token):
            raise forbidden()
        out = submit_feedback(fb)
    except FeedbackError as exc:
        resp = JsonResponse(exc.body(), status=exc.status)
        if exc.status == 405:
            resp["Allow"] = "POST"
        return resp
    return JsonResponse(out, status=202)
