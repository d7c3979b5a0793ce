"""The backend ``wrap()`` uses when none is given."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from synth_middleware.settings import settings

if TYPE_CHECKING:
    from synth_middleware.backends.base import Backend

_lock = threading.Lock()
_default: Backend | None = None
_default_key: tuple[str | None, str | None, str] | None = None


def default_backend() -> Backend:
    """``SYNTH_URL`` (or its aliases) with ``SYNTH_API_KEY`` -> the HTTP backend;
    otherwise the embedded backend on ``SYNTH_DB`` (default ``.synth/synth.db``).
    One instance per process and configuration."""
    global _default, _default_key
    key = (settings.backend_url, settings.api_key, settings.db_path)
    with _lock:
        if _default is not None and _default_key == key:
            return _default
        if settings.backend_url:
            from synth_middleware.backends.http import HttpBackend

            _default = HttpBackend(settings.backend_url, api_key=settings.api_key)
        else:
            from synth_middleware.backends.local import LocalBackend

            _default = LocalBackend(settings.db_path)
        _default_key = key
        return _default
