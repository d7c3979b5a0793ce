"""Process-wide settings, read from the environment once and overridable in code.

| variable | meaning |
| --- | --- |
| ``SYNTH_URL`` / ``SYNTH_BACKEND_URL`` / ``RUST_BACKEND_URL`` | HTTP backend URL (first set wins) |
| ``SYNTH_API_KEY`` | key for the HTTP backend |
| ``SYNTH_DB`` | SQLite file of the embedded backend (default ``.synth/synth.db``) |
| ``SYNTH_TOKEN_SECRET`` | secret that signs rollout tokens |
| ``SYNTH_OUTBOX`` | SQLite file of the durable reward outbox (off when unset) |
| ``SYNTH_OUTBOX_SYNC`` | ``1``: commit each reward to the outbox inside ``reward()`` (slower, no window) |
| ``SYNTH_EXIT_FLUSH_TIMEOUT`` | seconds the exit-time flush may wait (default 2) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from synth_middleware.wire.dialect import api_key_from_env, url_from_env


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@dataclass
class Settings:
    """Settings shared by every wrapped client in this process."""

    backend_url: str | None = field(default_factory=url_from_env)
    api_key: str | None = field(default_factory=api_key_from_env)
    db_path: str = field(default_factory=lambda: os.environ.get("SYNTH_DB") or ".synth/synth.db")
    token_secret: str | None = field(
        default_factory=lambda: os.environ.get("SYNTH_TOKEN_SECRET") or None
    )
    outbox_path: str | None = field(default_factory=lambda: os.environ.get("SYNTH_OUTBOX") or None)
    outbox_sync: bool = field(
        default_factory=lambda: (
            os.environ.get("SYNTH_OUTBOX_SYNC", "").strip().lower() in ("1", "true", "yes", "on")
        )
    )
    exit_flush_timeout: float = field(
        default_factory=lambda: _env_float("SYNTH_EXIT_FLUSH_TIMEOUT", 2.0)
    )

    def __repr__(self) -> str:  # never print the key
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("api_key", "token_secret") and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"


settings = Settings()
"""The process-wide settings (change them with :func:`configure`)."""


def configure(**changes: object) -> Settings:
    """Change process-wide settings, e.g. ``configure(token_secret="...")``."""
    for name, value in changes.items():
        if not hasattr(settings, name):
            raise TypeError(f"unknown setting {name!r}")
        setattr(settings, name, value)
    return settings
