"""synth-middleware for Django (WSGI and ASGI, sync and async views).

::

    # settings.py
    MIDDLEWARE = [..., "synth_middleware_django.SynthMiddleware"]     # the one line
    SYNTH_MIDDLEWARE = {"KEY_HEADER": "x-user-id"}                     # optional

    # urls.py
    path("synth/", include("synth_middleware_django.urls"))            # POST /synth/feedback

Each request gets one rollout, current for every wrapped client call the
request makes (streaming bodies included); the response carries its signed
token in ``x-synth-rollout``, which a later request can send to
``POST /synth/feedback`` with a reward. In a view, ``request.synth_rollout``
(or :func:`get_rollout`) is the request's :class:`~synth_middleware.Rollout`.
"""

from synth_middleware_django import _compat  # noqa: F401  (the version guard: first)
from synth_middleware_django.middleware import SynthMiddleware, get_rollout

__all__ = ["SynthMiddleware", "get_rollout"]
