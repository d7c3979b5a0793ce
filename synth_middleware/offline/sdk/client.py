"""``SynthClient`` and ``AsyncSynthClient``: sessions on our server or the hosted API.

::

    from synth_middleware import SynthClient

    client = SynthClient()              # SYNTH_API_KEY, SYNTH_URL (default: a local server)
    session = client.optimization.online.create(kind="gepa_online", config_path="gepa.toml")
    state = session.get_status()
    best = session.get_candidate(state["best_candidate_id"])
    session.update_reward(reward_info={"score": 0.9}, rollout_id="r1", candidate_id=best["candidate_id"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from synth_middleware.offline.sdk._transport import (
    Call,
    Transport,
    resolve_api_key,
    resolve_base_url,
)
from synth_middleware.offline.sdk.config import OptimizationConfig, load_config, parse_config
from synth_middleware.offline.sdk.jobs import AsyncJobsMixin, JobsMixin
from synth_middleware.offline.sdk.sessions import OnlineSession, session_class
from synth_middleware.wire.dialect import SESSIONS, session_path
from synth_middleware.wire.types import SESSION_KINDS


def _create_call(
    *,
    kind: str | None,
    config_path: str | Path | None,
    config: OptimizationConfig | dict[str, Any] | None,
    system_name: str | None,
    session_id: str | None,
    baseline: str | None,
    metadata: dict[str, Any] | None,
    overrides: dict[str, Any] | None,
    correlation_id: str | None,
) -> Call:
    if config_path is not None and config is not None:
        raise ValueError("pass config_path or config, not both")
    cfg: OptimizationConfig | None = None
    if config_path is not None:
        cfg = load_config(config_path)
    elif config is not None:
        cfg = parse_config(config)
    if cfg is not None:
        if kind is not None and kind != cfg.kind:
            raise ValueError(
                f"kind={kind!r} but the config's algorithm is "
                f"{cfg.prompt_learning.algorithm!r} ({cfg.kind})"
            )
        kind = cfg.kind
        system_name = system_name or cfg.prompt_learning.system_name
    if kind is None:
        raise ValueError(
            'pass kind="gepa_online" or "mipro_online" (or a config with an algorithm)'
        )
    if kind not in SESSION_KINDS:
        raise ValueError(f"kind must be one of {SESSION_KINDS}, not {kind!r}")
    body: dict[str, Any] = {"kind": kind}
    for key, value in (
        ("session_id", session_id),
        ("system_name", system_name),
        ("baseline", baseline),
        ("metadata", metadata),
        ("overrides", overrides),
        ("correlation_id", correlation_id),
    ):
        if value is not None:
            body[key] = value
    if system_name:
        body["system"] = {"name": system_name}
    if cfg is not None:
        body["config_body"] = cfg.to_body()
    return Call("POST", SESSIONS, json=body)


def _session(transport: Transport, answer: dict[str, Any], kind: str) -> OnlineSession:
    kind = answer.get("kind") or kind
    return session_class(kind)(
        session_id=answer["session_id"],
        kind=kind,
        transport=transport,
        correlation_id=answer.get("correlation_id"),
        proxy_url=answer.get("proxy_url"),
        online_url=answer.get("online_url"),
        chat_completions_url=answer.get("chat_completions_url"),
    )


def _get_calls(session_id: str) -> tuple[Call, Call]:
    base = session_path(session_id)
    return Call("GET", base), Call("GET", f"{base}/prompt")


class _OnlineSessions:
    """``client.optimization.online``."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(
        self,
        *,
        kind: str | None = None,
        config_path: str | Path | None = None,
        config: OptimizationConfig | dict[str, Any] | None = None,
        system_name: str | None = None,
        session_id: str | None = None,
        baseline: str | None = None,
        metadata: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> OnlineSession:
        """Create a session (or, with ``session_id``, reuse an existing one).

        ``config_path`` (TOML) or ``config`` (dict or :class:`OptimizationConfig`)
        is validated locally first: a bad key raises
        :class:`~synth_middleware.offline.sdk.config.ConfigError` naming it.
        """
        call = _create_call(
            kind=kind,
            config_path=config_path,
            config=config,
            system_name=system_name,
            session_id=session_id,
            baseline=baseline,
            metadata=metadata,
            overrides=overrides,
            correlation_id=correlation_id,
        )
        return _session(self._t, self._t.request(call), call.json["kind"])

    def get(self, session_id: str) -> OnlineSession:
        """A handle on an existing session."""
        state_call, urls_call = _get_calls(session_id)
        state = self._t.request(state_call)
        urls = self._t.request(urls_call)
        return _session(
            self._t, {**urls, "session_id": session_id}, state.get("kind", "mipro_online")
        )

    def list(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest sessions' states."""
        answer = self._t.request(Call("GET", SESSIONS, params={"limit": limit}))
        return list(answer.get("items") or [])


class _AsyncOnlineSessions:
    """``async_client.optimization.online``."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def create(
        self,
        *,
        kind: str | None = None,
        config_path: str | Path | None = None,
        config: OptimizationConfig | dict[str, Any] | None = None,
        system_name: str | None = None,
        session_id: str | None = None,
        baseline: str | None = None,
        metadata: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> OnlineSession:
        """Async twin of :meth:`_OnlineSessions.create`."""
        call = _create_call(
            kind=kind,
            config_path=config_path,
            config=config,
            system_name=system_name,
            session_id=session_id,
            baseline=baseline,
            metadata=metadata,
            overrides=overrides,
            correlation_id=correlation_id,
        )
        return _session(self._t, await self._t.arequest(call), call.json["kind"])

    async def get(self, session_id: str) -> OnlineSession:
        """A handle on an existing session."""
        state_call, urls_call = _get_calls(session_id)
        state = await self._t.arequest(state_call)
        urls = await self._t.arequest(urls_call)
        return _session(
            self._t, {**urls, "session_id": session_id}, state.get("kind", "mipro_online")
        )

    async def list(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest sessions' states."""
        call = Call("GET", SESSIONS, params={"limit": limit})
        answer = await self._t.arequest(call)
        return list(answer.get("items") or [])


_Online = TypeVar("_Online", _OnlineSessions, _AsyncOnlineSessions)


class _Optimization(Generic[_Online]):
    # generic so that `client.optimization.online` has the client's flavour (sync or async)
    def __init__(self, online: _Online) -> None:
        self.online: _Online = online


class SynthClient(JobsMixin):
    """Synchronous client of the wire API (our ``synth-middleware serve`` or the hosted one).

    ``api_key`` defaults to ``SYNTH_API_KEY``; ``base_url`` to ``SYNTH_URL``,
    ``SYNTH_BACKEND_URL``, ``RUST_BACKEND_URL``, else ``http://127.0.0.1:8000``.
    Sessions it creates also have ``_async`` methods.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._transport = Transport(
            resolve_base_url(base_url),
            resolve_api_key(api_key),
            timeout,
            client=http_client,
            _owns_client=http_client is None,
        )
        self.optimization = _Optimization(_OnlineSessions(self._transport))

    @property
    def base_url(self) -> str:
        """The backend's base URL."""
        return self._transport.base_url

    def close(self) -> None:
        """Close the connections."""
        self._transport.close()

    def __enter__(self) -> SynthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        auth = "with key" if self._transport.api_key else "no key"
        return f"SynthClient({self.base_url!r}, {auth})"


class AsyncSynthClient(AsyncJobsMixin):
    """Async client of the wire API: ``await client.optimization.online.create(...)``."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        self._transport = Transport(resolve_base_url(base_url), resolve_api_key(api_key), timeout)
        self.optimization = _Optimization(_AsyncOnlineSessions(self._transport))

    @property
    def base_url(self) -> str:
        """The backend's base URL."""
        return self._transport.base_url

    async def aclose(self) -> None:
        """Close the connections."""
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncSynthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        auth = "with key" if self._transport.api_key else "no key"
        return f"AsyncSynthClient({self.base_url!r}, {auth})"
