"""The package's environment variables, in one settings model (pydantic-settings).

| variable | meaning |
| --- | --- |
| ``SYNTH_URL`` / ``SYNTH_BACKEND_URL`` / ``RUST_BACKEND_URL`` | HTTP backend URL (first set wins) |
| ``SYNTH_API_KEY`` | key for the HTTP backend |
| ``SYNTH_DB`` | SQLite file (or PostgreSQL URL) of the embedded backend (default ``.synth/synth.db``) |
| ``SYNTH_TOKEN_SECRET`` | secret that signs rollout tokens |
| ``SYNTH_OUTBOX`` | SQLite file of the durable reward outbox (off when unset) |
| ``SYNTH_OUTBOX_SYNC`` | ``1``: commit each reward to the outbox inside ``reward()`` (slower, no window) |
| ``SYNTH_EXIT_FLUSH_TIMEOUT`` | seconds the exit-time flush may wait (default 2) |
| ``SYNTH_UPSTREAM_API_KEY`` / ``OPENAI_API_KEY`` | the server proxy's upstream key (first set wins) |
| ``SYNTH_CONFIG_DIRS`` | folders (``os.pathsep``-separated) a server create request may name configs in |

An empty variable counts as unset. An explicit argument (``configure(...)``,
``Settings(db_path=...)``, a function's own parameter) wins over the
environment, which wins over the default.

:data:`settings` is read once, at import, and is what wrapped clients use
(change it with :func:`configure`). ``Settings()`` reads the environment as it
is now: the server reads its variables that way when it builds an app.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from synth_middleware.wire.dialect import API_KEY_VAR, URL_VARS

__all__ = ["Settings", "configure", "settings"]

_TRUE = ("1", "true", "yes", "on")
_SECRET_FIELDS = ("api_key", "token_secret", "upstream_api_key")


class Settings(BaseSettings):
    """Settings shared by every wrapped client (and the server) in this process.

    Each field is read from the variable(s) in the module's table; keyword
    arguments (by field name) override them."""

    model_config = SettingsConfigDict(
        case_sensitive=True,  # exactly the documented names
        env_ignore_empty=True,  # `SYNTH_URL=` means unset, as `os.environ.get(...) or None` did
        populate_by_name=True,  # Settings(db_path=...), not only Settings(SYNTH_DB=...)
        extra="ignore",
    )

    backend_url: str | None = Field(default=None, validation_alias=AliasChoices(*URL_VARS))
    """HTTP backend URL; ``None``: the embedded backend."""
    api_key: str | None = Field(default=None, validation_alias=API_KEY_VAR)
    """Key for the HTTP backend."""
    db_path: str = Field(default=".synth/synth.db", validation_alias="SYNTH_DB")
    """SQLite file (or PostgreSQL URL) of the embedded backend."""
    token_secret: str | None = Field(default=None, validation_alias="SYNTH_TOKEN_SECRET")
    """Secret that signs rollout tokens (``None``: a random per-process one where needed)."""
    outbox_path: str | None = Field(default=None, validation_alias="SYNTH_OUTBOX")
    """SQLite file of the durable reward outbox (``None``: off)."""
    outbox_sync: bool = Field(default=False, validation_alias="SYNTH_OUTBOX_SYNC")
    """Commit each reward to the outbox inside ``reward()``."""
    exit_flush_timeout: float = Field(default=2.0, validation_alias="SYNTH_EXIT_FLUSH_TIMEOUT")
    """Seconds the exit-time flush may wait."""
    upstream_api_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SYNTH_UPSTREAM_API_KEY", "OPENAI_API_KEY"),
        repr=False,
    )
    """The server proxy's upstream key."""
    config_dirs: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias="SYNTH_CONFIG_DIRS"
    )
    """Folders whose config files a server create request may name."""

    @field_validator("outbox_sync", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        # any other text is off (not an error), as before pydantic-settings
        if isinstance(value, str):
            return value.strip().lower() in _TRUE
        return value

    @field_validator("exit_flush_timeout", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(
                    f"SYNTH_EXIT_FLUSH_TIMEOUT must be a number, got {value!r}"
                ) from None
        return value

    @field_validator("config_dirs", mode="before")
    @classmethod
    def _folders(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p for p in value.split(os.pathsep) if p.strip())
        return value

    def __repr__(self) -> str:  # never print a key
        parts = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in _SECRET_FIELDS and value:
                value = "***"
            parts.append(f"{name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__


settings = Settings()
"""The process-wide settings (change them with :func:`configure`)."""


def configure(**changes: object) -> Settings:
    """Change process-wide settings, e.g. ``configure(token_secret="...")``."""
    for name, value in changes.items():
        if name not in Settings.model_fields:
            raise TypeError(f"unknown setting {name!r}")
        setattr(settings, name, value)
    return settings
