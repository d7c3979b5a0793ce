"""synth-middleware for FastAPI and any Starlette/ASGI app.

::

    from fastapi import FastAPI
    from synth_middleware_fastapi import SynthMiddleware, SynthRollout, feedback_router

    app = FastAPI()
    app.add_middleware(SynthMiddleware, key_header="x-user-id")   # the one line
    app.include_router(feedback_router())                          # POST /synth/feedback

Each request gets one rollout, current for every wrapped client call the
request makes (background tasks, spawned tasks and streaming bodies
included); the response carries its signed token in ``x-synth-rollout``, which
a later request can send to ``POST /synth/feedback`` with a reward.
"""

from synth_middleware.client.web import ROLLOUT_HEADER, FeedbackError, WebConfig
from synth_middleware_fastapi import _compat  # noqa: F401  (the version guard: first)
from synth_middleware_fastapi.feedback import (
    AuthCheck,
    SynthRollout,
    feedback_router,
    get_rollout,
    synth_rollout,
)
from synth_middleware_fastapi.middleware import SynthMiddleware

__all__ = [
    "ROLLOUT_HEADER",
    "AuthCheck",
    "FeedbackError",
    "SynthMiddleware",
    "SynthRollout",
    "WebConfig",
    "feedback_router",
    "get_rollout",
    "synth_rollout",
]
