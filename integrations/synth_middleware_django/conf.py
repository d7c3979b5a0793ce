"""Settings: one dict, ``SYNTH_MIDDLEWARE``, in the Django settings module.

::

    SYNTH_MIDDLEWARE = {
        "KEY_HEADER": "x-user-id",         # sticky key from a header ...
        "KEY_COOKIE": "sessionid",         # ... or a cookie ...
        "KEY": "myapp.synth.key",          # ... or a callable (request) -> key (dotted path)
        "SESSION": "support-classifier",   # preset the session named in tokens
        "SECRET": env("SYNTH_TOKEN_SECRET"),  # default: SYNTH_TOKEN_SECRET
        "HEADER": "x-synth-rollout",
        "BAGGAGE": False,
        "EXCLUDE_PATHS": ["/synth/feedback", "/health"],
        "TOKEN_MAX_AGE": 7 * 24 * 3600,
        "TRACER_PROVIDER": "myapp.telemetry.provider",  # object or dotted path
        "FEEDBACK_AUTH": "myapp.synth.may_reward",      # (request, token) -> bool
        "FEEDBACK_PER_TOKEN": "once",      # or "all": every feedback post is a reward
    }

Every key is optional; the meaning of each is the FastAPI middleware's
option of the same name, lower-cased.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from synth_middleware._tokens import TokenData
from synth_middleware.client.web import WebConfig

SETTING = "SYNTH_MIDDLEWARE"
"""Name of the settings dict."""

AuthCheck = Callable[[Any, TokenData], bool]
"""``(request, token) -> bool``: may this caller reward this rollout?"""

_OPTIONS = {
    "HEADER": "header",
    "KEY": "key",
    "KEY_HEADER": "key_header",
    "KEY_COOKIE": "key_cookie",
    "SESSION": "session",
    "SECRET": "secret",
    "BAGGAGE": "baggage",
    "EXCLUDE_PATHS": "exclude_paths",
    "TOKEN_MAX_AGE": "token_max_age",
    "TRACER_PROVIDER": "tracer_provider",
    "FEEDBACK_PER_TOKEN": "feedback_per_token",
}
_IMPORTABLE = ("KEY", "TRACER_PROVIDER", "FEEDBACK_AUTH")
_cache: tuple[object, WebConfig, AuthCheck | None] | None = None


def load() -> tuple[WebConfig, AuthCheck | None]:
    """The options and the feedback auth check from ``settings.SYNTH_MIDDLEWARE``.

    Raises ``ImproperlyConfigured`` for an unknown key or a bad value.
    Re-read whenever the settings dict is replaced (e.g. by
    ``override_settings``).
    """
    global _cache
    raw = getattr(settings, SETTING, None)
    hit = _cache
    if hit is not None and hit[0] is raw:
        return hit[1], hit[2]
    if raw is None:
        raw_map: Mapping[str, Any] = {}
    elif isinstance(raw, Mapping):
        raw_map = raw
    else:
        raise ImproperlyConfigured(f"{SETTING} must be a dict")
    unknown = sorted(set(raw_map) - set(_OPTIONS) - {"FEEDBACK_AUTH"})
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING}: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted([*_OPTIONS, 'FEEDBACK_AUTH']))}"
        )
    values = dict(raw_map)
    for name in _IMPORTABLE:
        if isinstance(values.get(name), str):
            try:
                values[name] = import_string(values[name])
            except ImportError as exc:
                raise ImproperlyConfigured(f"{SETTING}[{name!r}]: {exc}") from exc
    auth = values.pop("FEEDBACK_AUTH", None)
    if auth is not None and not callable(auth):
        raise ImproperlyConfigured(f"{SETTING}['FEEDBACK_AUTH'] must be a callable")
    if isinstance(values.get("EXCLUDE_PATHS"), list):
        values["EXCLUDE_PATHS"] = tuple(values["EXCLUDE_PATHS"])
    try:
        cfg = WebConfig(**{_OPTIONS[k]: v for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{SETTING}: {exc}") from exc
    _cache = (raw, cfg, auth)
    return cfg, auth
