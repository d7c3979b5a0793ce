"""Online sessions as the SDK sees them: one object per session, sync and async methods.

Every method has an ``_async`` twin (``get_status`` / ``get_status_async``),
built from the same request description, so the two never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synth_middleware.offline.sdk._transport import Call, Transport
from synth_middleware.wire.dialect import (
    candidate_path,
    candidates_path,
    reward_path,
    session_path,
)


@dataclass
class OnlineSession:
    """A handle on one online session of a backend (ours or the hosted one).

    Create it with ``client.optimization.online.create(...)`` or fetch an
    existing one with ``client.optimization.online.get(session_id)``.
    """

    session_id: str
    kind: str
    transport: Transport = field(repr=False)
    correlation_id: str | None = None
    proxy_url: str | None = None
    online_url: str | None = None
    chat_completions_url: str | None = None

    @property
    def _base(self) -> str:
        return session_path(self.session_id)

    def _run(self, call: Call) -> Any:
        return self.transport.request(call)

    async def _arun(self, call: Call) -> Any:
        return await self.transport.arequest(call)

    # -- request descriptions -------------------------------------------------------

    def _status_call(self) -> Call:
        return Call("GET", self._base)

    def _wait_call(self, after_version: int, timeout: float) -> Call:
        return Call("GET", self._base, params={"wait_version": after_version, "timeout": timeout})

    def _urls_call(self, correlation_id: str | None) -> Call:
        cid = correlation_id or self.correlation_id
        return Call("GET", f"{self._base}/prompt", params={"correlation_id": cid})

    def _list_call(self, **params: Any) -> Call:
        if isinstance(params.get("include"), list | tuple):
            params["include"] = ",".join(params["include"])
        return Call("GET", candidates_path(self.session_id), params=params)

    @staticmethod
    def _candidate_call(candidate_id: str) -> Call:
        return Call("GET", candidate_path(candidate_id))

    def _reward_call(
        self,
        reward_info: dict[str, Any],
        rollout_id: str | None,
        candidate_id: str | None,
        metadata: dict[str, Any] | None,
        artifact: Any,
        trace_ref: str | None,
        stop: bool | None,
        correlation_id: str | None,
        idempotency_key: str | None,
    ) -> Call:
        body: dict[str, Any] = {"reward_info": reward_info}
        for key, value in (
            ("rollout_id", rollout_id),
            ("candidate_id", candidate_id),
            ("metadata", metadata),
            ("artifact", artifact),
            ("trace_ref", trace_ref),
            ("stop", stop),
            ("correlation_id", correlation_id or self.correlation_id),
            ("idempotency_key", idempotency_key),
        ):
            if value is not None:
                body[key] = value
        return Call("POST", reward_path(self.session_id), json=body)

    def _state_call(self, state: str) -> Call:
        return Call("PATCH", self._base, json={"state": state})

    def _add_call(
        self, content: str | None, payload: Any, parent_id: str | None, metadata: Any
    ) -> Call:
        body: dict[str, Any] = {"candidate_content": content}
        if payload is not None:
            body["artifact_payload"] = payload
        if parent_id is not None:
            body["parent_id"] = parent_id
        if metadata is not None:
            body["metadata"] = metadata
        return Call("POST", f"{self._base}/candidates", json=body)

    @staticmethod
    def _archive_call(candidate_id: str, reason: str) -> Call:
        return Call("POST", f"{candidate_path(candidate_id)}/archive", json={"reason": reason})

    # -- sync ----------------------------------------------------------------------

    def get_status(self) -> dict[str, Any]:
        """The live state: ``status, best_candidate_id, best_reward, candidates, version, ...``."""
        return self._run(self._status_call())  # type: ignore[no-any-return]

    status = get_status

    def wait_for_update(self, after_version: int, *, timeout: float = 30.0) -> dict[str, Any]:
        """Long-poll: the state once its ``version`` passes ``after_version`` (or at the timeout)."""
        return self._run(self._wait_call(after_version, timeout))  # type: ignore[no-any-return]

    def get_prompt_urls(self, *, correlation_id: str | None = None) -> dict[str, Any]:
        """``{proxy_url, online_url, chat_completions_url}`` (Pattern A)."""
        return self._run(self._urls_call(correlation_id))  # type: ignore[no-any-return]

    def list_candidates(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        sort: str | None = None,
        include: str | list[str] | None = None,
        job_id: str | None = None,
        algorithm: str | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        """A page ``{items, next_cursor, ...}``; pass ``next_cursor`` back as ``cursor``."""
        call = self._list_call(
            status=status,
            limit=limit,
            cursor=cursor,
            sort=sort,
            include=include,
            job_id=job_id,
            algorithm=algorithm,
            mode=mode,
        )
        return self._run(call)  # type: ignore[no-any-return]

    def get_candidate(self, candidate_id: str) -> dict[str, Any]:
        """One candidate with ``candidate_content`` and ``artifact_payload``."""
        return self._run(self._candidate_call(candidate_id))  # type: ignore[no-any-return]

    def update_reward(
        self,
        *,
        reward_info: dict[str, Any],
        rollout_id: str | None = None,
        candidate_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        artifact: Any = None,
        trace_ref: str | None = None,
        stop: bool | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Report a reward (``reward_info={"score": 0.9}``) for a rollout and candidate."""
        call = self._reward_call(
            reward_info,
            rollout_id,
            candidate_id,
            metadata,
            artifact,
            trace_ref,
            stop,
            correlation_id,
            idempotency_key,
        )
        return self._run(call)  # type: ignore[no-any-return]

    def pause(self) -> dict[str, Any]:
        """Pause: the best candidate is served, no exploration."""
        return self._run(self._state_call("paused"))  # type: ignore[no-any-return]

    def resume(self) -> dict[str, Any]:
        """Resume a paused session."""
        return self._run(self._state_call("running"))  # type: ignore[no-any-return]

    def cancel(self) -> dict[str, Any]:
        """Cancel the session."""
        return self._run(self._state_call("cancelled"))  # type: ignore[no-any-return]

    def add_candidate(
        self,
        content: str | None = None,
        *,
        payload: Any = None,
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add a candidate (prompt text and/or a structured payload); returns it."""
        return self._run(self._add_call(content, payload, parent_id, metadata))  # type: ignore[no-any-return]

    def archive_candidate(self, candidate_id: str, *, reason: str = "archived") -> dict[str, Any]:
        """Stop serving a candidate."""
        return self._run(self._archive_call(candidate_id, reason))  # type: ignore[no-any-return]

    # -- async ---------------------------------------------------------------------

    async def get_status_async(self) -> dict[str, Any]:
        """Async :meth:`get_status`."""
        return await self._arun(self._status_call())  # type: ignore[no-any-return]

    status_async = get_status_async

    async def wait_for_update_async(
        self, after_version: int, *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Async :meth:`wait_for_update`."""
        return await self._arun(self._wait_call(after_version, timeout))  # type: ignore[no-any-return]

    async def get_prompt_urls_async(self, *, correlation_id: str | None = None) -> dict[str, Any]:
        """Async :meth:`get_prompt_urls`."""
        return await self._arun(self._urls_call(correlation_id))  # type: ignore[no-any-return]

    async def list_candidates_async(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        sort: str | None = None,
        include: str | list[str] | None = None,
        job_id: str | None = None,
        algorithm: str | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        """Async :meth:`list_candidates`."""
        call = self._list_call(
            status=status,
            limit=limit,
            cursor=cursor,
            sort=sort,
            include=include,
            job_id=job_id,
            algorithm=algorithm,
            mode=mode,
        )
        return await self._arun(call)  # type: ignore[no-any-return]

    async def get_candidate_async(self, candidate_id: str) -> dict[str, Any]:
        """Async :meth:`get_candidate`."""
        return await self._arun(self._candidate_call(candidate_id))  # type: ignore[no-any-return]

    async def update_reward_async(
        self,
        *,
        reward_info: dict[str, Any],
        rollout_id: str | None = None,
        candidate_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        artifact: Any = None,
        trace_ref: str | None = None,
        stop: bool | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Async :meth:`update_reward`."""
        call = self._reward_call(
            reward_info,
            rollout_id,
            candidate_id,
            metadata,
            artifact,
            trace_ref,
            stop,
            correlation_id,
            idempotency_key,
        )
        return await self._arun(call)  # type: ignore[no-any-return]

    async def pause_async(self) -> dict[str, Any]:
        """Async :meth:`pause`."""
        return await self._arun(self._state_call("paused"))  # type: ignore[no-any-return]

    async def resume_async(self) -> dict[str, Any]:
        """Async :meth:`resume`."""
        return await self._arun(self._state_call("running"))  # type: ignore[no-any-return]

    async def cancel_async(self) -> dict[str, Any]:
        """Async :meth:`cancel`."""
        return await self._arun(self._state_call("cancelled"))  # type: ignore[no-any-return]

    async def add_candidate_async(
        self,
        content: str | None = None,
        *,
        payload: Any = None,
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Async :meth:`add_candidate`."""
        return await self._arun(self._add_call(content, payload, parent_id, metadata))  # type: ignore[no-any-return]

    async def archive_candidate_async(
        self, candidate_id: str, *, reason: str = "archived"
    ) -> dict[str, Any]:
        """Async :meth:`archive_candidate`."""
        return await self._arun(self._archive_call(candidate_id, reason))  # type: ignore[no-any-return]


class GepaOnlineSession(OnlineSession):
    """An online GEPA session (``kind="gepa_online"``)."""


class MiproOnlineSession(OnlineSession):
    """An online MIPRO session (``kind="mipro_online"``)."""


def session_class(kind: str) -> type[OnlineSession]:
    """The session class for a kind."""
    return GepaOnlineSession if kind == "gepa_online" else MiproOnlineSession
