"""Server settings (the ``serve`` command's options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from synth_middleware.server._limits import DEFAULT_MAX_BODY_BYTES
from synth_middleware.settings import Settings

UPSTREAM_KEY_VARS = ("SYNTH_UPSTREAM_API_KEY", "OPENAI_API_KEY")
"""Where the proxy's upstream key comes from, first set wins
(:class:`~synth_middleware.settings.Settings` reads them)."""


def upstream_key_from_env() -> str | None:
    """The proxy's upstream key: ``SYNTH_UPSTREAM_API_KEY``, else ``OPENAI_API_KEY``
    (read now, not at import)."""
    return Settings().upstream_api_key


def config_dirs_from_env() -> tuple[str, ...]:
    """Folders a create request's ``config_path`` may name: ``SYNTH_CONFIG_DIRS``
    (``os.pathsep``-separated); none by default (read now, not at import)."""
    return Settings().config_dirs


@dataclass(frozen=True)
class ServerConfig:
    """What :func:`~synth_middleware.server.create_app` needs besides the engine.

    ``api_key``: required on every route but ``/health`` when set.
    ``upstream_url``: the OpenAI-compatible base URL the proxy forwards to
    (e.g. ``https://api.openai.com/v1``); ``upstream_api_key`` is sent to it
    (taken from the environment by default, never from a request).
    ``upstream_timeout`` bounds each wait on the upstream (connection, every
    read); ``upstream_total_timeout`` (default: ``upstream_timeout``) the whole
    of a non-streaming call and a stream's wait for its first byte.
    ``public_url``: the base of URLs the server hands out (default: the
    request's own base URL). ``proxy_refresh_interval``: how stale (seconds)
    the proxy's candidate probabilities may get under load.
    ``writer_thread``: run engine writes on a thread instead of the event loop
    (see :mod:`~synth_middleware.server.writer`).
    ``allowed_hosts``: without ``api_key``, the ``Host`` names (besides
    loopback, ``bind_host`` and ``public_url``'s host) the server answers, and
    the page origins it accepts (``"*"``: any; see
    :mod:`~synth_middleware.server._guard`). ``bind_host``: the address
    ``serve`` listens on.
    ``config_dirs``: folders whose TOML/JSON files a create request may name as
    ``config_path`` (the hosted client's ``config_path=`` sends only the path);
    default ``SYNTH_CONFIG_DIRS``, else none (such a request gets a 422).
    """

    api_key: str | None = None
    upstream_url: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    upstream_timeout: float = 60.0
    upstream_connect_timeout: float = 10.0
    upstream_total_timeout: float | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    public_url: str | None = None
    dashboard: bool = True
    proxy_refresh_interval: float = 0.25
    writer_thread: bool = False
    external_poll_interval: float = 1.0
    allowed_hosts: tuple[str, ...] = ()
    bind_host: str | None = None
    config_dirs: tuple[str, ...] = field(default_factory=config_dirs_from_env)

    def __repr__(self) -> str:  # never print keys
        key = "***" if self.api_key else None
        return (
            f"ServerConfig(api_key={key!r}, upstream_url={self.upstream_url!r}, "
            f"max_body_bytes={self.max_body_bytes}, public_url={self.public_url!r})"
        )
