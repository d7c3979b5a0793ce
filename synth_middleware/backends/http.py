"""The wire API over HTTP: :class:`HttpBackend` (sync) and :class:`AsyncHttpBackend`.

::

    from synth_middleware.backends.http import HttpBackend

    backend = HttpBackend("https://api.usesynth.ai", api_key=os.environ["SYNTH_API_KEY"])
    client = synth.wrap(openai.OpenAI(), session="support-classifier", backend=backend)

Both speak the dialect described in ``docs/wire.md`` (routes, bodies, fallbacks to
the older routes, errors) to the hosted API or to our own server. The request
logic is sans-IO (``_Dialect``: generators of requests); the two classes only
send. The shared, client-independent part (headers, routes, ``Retry-After``)
is :mod:`synth_middleware.wire.dialect`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cachetools
import httpcore  # noqa: F401  (imported by httpx lazily; see HttpBackend.__init__)
import httpx

from synth_middleware import _fork
from synth_middleware.errors import (
    BackendError,
    NotFoundError,
    error_for_status,
)
from synth_middleware.wire.dialect import (
    LEGACY_SYSTEMS,
    REWARDS_BATCH,
    ROLLOUTS_BATCH,
    SESSIONS,
    candidate_path,
    candidates_path,
    parse_retry_after,
    request_headers,
    reward_path,
    segment,
    session_path,
)
from synth_middleware.wire.types import (
    CandidateItem,
    RewardRecord,
    RewardResult,
    RolloutRecord,
    SessionKind,
    SessionState,
)
from synth_middleware.wire.validate import encode_json

# parse_retry_after: re-exported, its old import path
__all__ = ["AsyncHttpBackend", "HttpBackend", "PartialDeliveryError", "parse_retry_after"]

log = logging.getLogger("synth_middleware")

T = TypeVar("T")

MAX_REMEMBERED_ROLLOUTS = 50_000
_RECORD_FIELDS = frozenset(
    (
        "idempotency_key",
        "rollout_id",
        "value",
        "created_at",
        "session_id",
        "candidate_id",
        "feedback",
        "metadata",
        "stop",
    )
)
_GENERIC_NOT_FOUND = {"", "not found", "not_found", "404", "404 not found", "404: not found"}


class PartialDeliveryError(BackendError):
    """Some rewards of a ``record_rewards`` call got an answer, others failed transiently.

    ``partial_results`` has one entry per input: a :class:`RewardResult` where
    the server answered, ``None`` where delivery must be retried. The reward
    reporter settles the former and retries only the latter.
    """

    def __init__(
        self,
        message: str,
        partial_results: list[RewardResult | None],
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.partial_results = partial_results
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Always: only the transient failures are left in ``partial_results``."""
        return True


# --------------------------------------------------------------------- sans-IO
@dataclass(slots=True)
class _Req:
    method: str
    path: str
    body: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None

    def content(self) -> bytes | None:
        return None if self.body is None else encode_json(self.body).encode()


@dataclass(slots=True)
class _Resp:
    status: int
    data: Any
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)


Op = Generator[_Req, _Resp, T]


def _message_and_code(resp: _Resp) -> tuple[str, str | None]:
    data = resp.data
    message: Any = None
    code: Any = None
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, Mapping):
            message, code = err.get("message"), err.get("code") or err.get("type")
        elif isinstance(err, str):
            message = err
        if message is None:
            message = data.get("detail", data.get("message"))
        code = code or data.get("code")
    if message is None:
        message = resp.text
    if not isinstance(message, str):
        message = encode_json(message) if _jsonable(message) else str(message)
    message = message.strip()[:500]
    return message, (str(code) if code is not None else None)


def _jsonable(value: Any) -> bool:
    try:
        encode_json(value)
    except (TypeError, ValueError):
        return False
    return True


def _route_missing(resp: _Resp) -> bool:
    """The server lacks the route (as opposed to: the resource does not exist)."""
    if resp.status == 405:
        return True
    if resp.status != 404:
        return False
    message, code = _message_and_code(resp)
    if code not in (None, "not_found", "404"):
        return False  # a specific code such as session_not_found: the resource is missing
    text = message.lower()
    return text in _GENERIC_NOT_FOUND or text.startswith("no route")


def _error(resp: _Resp, what: str) -> BackendError:
    message, code = _message_and_code(resp)
    text = f"{what}: HTTP {resp.status}: {message or 'no message'}"
    return error_for_status(
        resp.status, text, code=code, retry_after=parse_retry_after(resp.headers.get("retry-after"))
    )


def _ok(resp: _Resp) -> bool:
    return 200 <= resp.status < 300


def _normalize_state(data: Any, session_id: str) -> SessionState:
    if not isinstance(data, Mapping):
        raise BackendError("session state answer is not a JSON object")
    state: dict[str, Any] = dict(data)
    state.setdefault("session_id", session_id)
    state.setdefault("status", "running")
    state.setdefault("rollout_count", 0)
    state.setdefault("reward_count", 0)
    state.setdefault("best_candidate_id", None)
    raw = state.get("candidates") or []
    if isinstance(raw, Mapping):  # the older {cid: stats} shape
        raw = [
            {"candidate_id": cid, **(v if isinstance(v, Mapping) else {})} for cid, v in raw.items()
        ]
    cands: list[dict[str, Any]] = []
    for c in raw if isinstance(raw, list) else []:
        if not isinstance(c, Mapping):
            continue
        item = dict(c)
        item.setdefault("avg_reward", None)
        item.setdefault("rollout_count", 0)
        if "reward_count" not in item:  # the hosted API counts rewarded rollouts
            item["reward_count"] = item["rollout_count"] if item["avg_reward"] is not None else 0
        item.setdefault("is_baseline", False)
        item.setdefault("status", "active")
        item.setdefault("parent_id", None)
        cands.append(item)
    state["candidates"] = cands
    return state  # type: ignore[return-value]


def _reward_body(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The single-reward body (newest dialect) of a :class:`RewardRecord`."""
    info: dict[str, Any] = {"score": rec["value"]}
    if rec.get("feedback") is not None:
        info["feedback"] = rec["feedback"]
    body: dict[str, Any] = {
        "reward_info": info,
        "rollout_id": rec.get("rollout_id"),
        "candidate_id": rec.get("candidate_id"),
        "idempotency_key": rec.get("idempotency_key"),
        "created_at": rec.get("created_at"),
    }
    if rec.get("metadata"):
        body["metadata"] = dict(rec["metadata"])
    if rec.get("stop"):
        body["stop"] = True
    return body


def _rejected(key: Any, error: str) -> RewardResult:
    return {
        "idempotency_key": key if isinstance(key, str) else "",
        "status": "rejected",
        "error": error,
    }


class _Dialect:
    """The request logic shared by the sync and async backends (no I/O here)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        pool_size: int,
        batch: bool | None,
        batch_probe_interval: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self.timeout = float(timeout)
        self.pool_size = int(pool_size)
        self.batch_probe_interval = float(batch_probe_interval)
        self._force_batch = batch
        self._extra_headers = dict(headers or {})
        # discovered server capabilities (None: not known yet)
        self._batch_ok: bool | None = None
        self._batch_checked = 0.0
        self._rollouts_ok: bool | None = None
        self._rollouts_checked = 0.0
        self._legacy_state = False
        self._legacy_reward = False
        # the first remembered is the first forgotten (no recency: a rollout's session is
        # looked up about once)
        self._sessions_of: cachetools.FIFOCache[str, str] = cachetools.FIFOCache(
            MAX_REMEMBERED_ROLLOUTS
        )
        self._sessions_lock = threading.Lock()
        _fork.reset_after_fork(self, "_after_fork")

    # -- presentation -----------------------------------------------------------
    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return f"{type(self).__name__}({self.base_url!r}, api_key={key!r})"

    def _headers(self) -> dict[str, str]:
        return request_headers(self._api_key, self._extra_headers)

    @property
    def uses_batch(self) -> bool | None:
        """Whether rewards go in batches (``None`` until the first delivery found out)."""
        if self._force_batch is not None:
            return self._force_batch
        return self._batch_ok

    @property
    def outbox_key(self) -> str:
        """Names this destination in a shared outbox file."""
        return f"http:{self.base_url}"

    def _batch_due(self, ok: bool | None, checked: float) -> bool:
        if self._force_batch is not None:
            return self._force_batch
        if ok is None or ok:
            return True
        return time.monotonic() - checked >= self.batch_probe_interval

    def _after_fork(self) -> None:
        # in a forked child: a lock held by a parent's thread would stay held forever
        self._sessions_lock = threading.Lock()

    def _remember(self, rollout_id: Any, session_id: Any) -> None:
        if not isinstance(rollout_id, str) or not isinstance(session_id, str):
            return
        with self._sessions_lock:
            self._sessions_of[rollout_id] = session_id

    # -- operations -------------------------------------------------------------
    def _op_get_state(self, session_id: str) -> Op[SessionState]:
        what = f"GET session {session_id!r}"
        if not self._legacy_state:
            r = yield _Req("GET", session_path(session_id))
            if _ok(r):
                return _normalize_state(r.data, session_id)
            if not _route_missing(r):
                raise _error(r, what)
        r = yield _Req("GET", f"{LEGACY_SYSTEMS}/{segment(session_id)}/state")
        if _ok(r):
            self._legacy_state = True
            return _normalize_state(r.data, session_id)
        if _route_missing(r):
            raise NotFoundError(f"{what}: unknown session (HTTP 404)", code="session_not_found")
        raise _error(r, what)

    def _op_ensure_session(
        self, session_id: str, baseline: str | None, kind: str
    ) -> Op[SessionState]:
        body: dict[str, Any] = {
            "session_id": session_id,
            "kind": kind,
            "system": {"name": session_id},
        }
        if baseline is not None:
            body["baseline"] = baseline
            body["metadata"] = {"baseline_prompt": baseline}
        r = yield _Req("POST", SESSIONS, body)
        if _ok(r):
            if isinstance(r.data, Mapping) and isinstance(r.data.get("candidates"), list):
                return _normalize_state(r.data, session_id)
        elif r.status != 409 and not _route_missing(r):
            raise _error(r, f"create session {session_id!r}")
        return (yield from self._op_get_state(session_id))

    def _op_list_candidates(
        self,
        session_id: str,
        status: str | None,
        limit: int,
        cursor: str | None,
        sort: str | None,
        include: Sequence[str] | str,
    ) -> Op[dict[str, Any]]:
        params: dict[str, str] = {"limit": str(int(limit))}
        if status is not None:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        if sort:
            params["sort"] = sort
        inc = include if isinstance(include, str) else ",".join(include)
        if inc:
            params["include"] = inc
        r = yield _Req("GET", candidates_path(session_id), params=params)
        if not _ok(r):
            raise _error(r, f"list candidates of {session_id!r}")
        data = r.data
        if not isinstance(data, Mapping) or not isinstance(data.get("items"), list):
            raise BackendError("candidate list answer has no 'items' list")
        return dict(data)

    def _op_get_candidate(self, candidate_id: str) -> Op[CandidateItem]:
        r = yield _Req("GET", candidate_path(candidate_id))
        if not _ok(r):
            raise _error(r, f"GET candidate {candidate_id!r}")
        data = r.data
        if isinstance(data, Mapping) and isinstance(data.get("candidate"), Mapping):
            data = data["candidate"]
        if not isinstance(data, Mapping):
            raise BackendError("candidate answer is not a JSON object")
        return dict(data)  # type: ignore[return-value]

    def _op_rollouts_batch(self, items: list[dict[str, Any]]) -> Op[bool]:
        """``True`` when sent; ``False`` when the server lacks the route."""
        r = yield _Req("POST", ROLLOUTS_BATCH, {"rollouts": items})
        self._rollouts_checked = time.monotonic()
        if _ok(r):
            self._rollouts_ok = True
            data = r.data
            if isinstance(data, Mapping) and data.get("skipped"):
                errors = data.get("errors") or []
                log.warning(
                    "synth-middleware: the backend skipped %s rollout record(s); first: %s",
                    data.get("skipped"),
                    errors[0] if errors else "?",
                )
            return True
        if _route_missing(r) and self._force_batch is None:
            self._rollouts_ok = False
            return False
        raise _error(r, f"POST {ROLLOUTS_BATCH}")

    def _op_rewards_batch(self, items: list[dict[str, Any]]) -> Op[list[RewardResult] | None]:
        """Per-item results, or ``None`` when the server lacks the batch route."""
        r = yield _Req("POST", REWARDS_BATCH, {"rewards": items})
        self._batch_checked = time.monotonic()
        if _ok(r):
            data = r.data
            results = data.get("results") if isinstance(data, Mapping) else None
            if not isinstance(results, list) or len(results) != len(items):
                # says nothing about which landed: a transient error, resent with the same keys
                raise BackendError(
                    f"POST {REWARDS_BATCH}: malformed answer (no 'results' list of {len(items)})"
                )
            out: list[RewardResult] = []
            for item, res in zip(items, results, strict=True):
                key = item["idempotency_key"]
                status = res.get("status") if isinstance(res, Mapping) else None
                if status in ("accepted", "duplicate"):
                    out.append({"idempotency_key": key, "status": status})
                else:
                    err = res.get("error") if isinstance(res, Mapping) else None
                    out.append(_rejected(key, str(err or f"rejected (status {status!r})")))
            self._batch_ok = True
            return out
        if r.status in (404, 405) and self._force_batch is None:
            # on the batch route any 404/405 means "no such route": whatever the body
            # says, one request per reward may still deliver every one of them
            if self._batch_ok is not False:
                log.info(
                    "synth-middleware: %s has no reward batch route; sending one request "
                    "per reward",
                    self.base_url,
                )
            self._batch_ok = False
            return None
        if len(items) == 1 and r.status in (400, 422) and self._force_batch is None:
            # a lone reward the batch route refuses may still be one the per-reward
            # route takes (a server whose batch route is something else): try it there
            return None
        raise _error(r, f"POST {REWARDS_BATCH}")

    def _op_one_reward(self, rec: Mapping[str, Any]) -> Op[RewardResult]:
        """One reward on the per-session route (or the older status route)."""
        key = rec["idempotency_key"]
        sid = rec.get("session_id")
        if sid is None:
            with self._sessions_lock:
                sid = self._sessions_of.get(rec.get("rollout_id"))  # type: ignore[arg-type]
        if sid is None:
            return _rejected(
                key,
                f"unknown rollout_id {rec.get('rollout_id')!r}: the reward names no session_id "
                "and this process has not seen the rollout (reward the response, the Rollout "
                "or its token instead)",
            )
        headers = {"Idempotency-Key": key}
        if not self._legacy_reward:
            r = yield _Req("POST", reward_path(sid), _reward_body(rec), headers=headers)
            if _ok(r):
                status = r.data.get("status") if isinstance(r.data, Mapping) else None
                return {
                    "idempotency_key": key,
                    "status": "duplicate" if status == "duplicate" else "accepted",
                }
            if not _route_missing(r):
                exc = _error(r, f"POST reward for rollout {rec.get('rollout_id')!r}")
                if exc.retryable:
                    raise exc
                return _rejected(key, str(exc))
        legacy = f"{LEGACY_SYSTEMS}/{segment(sid)}/status"
        r = yield _Req(
            "POST",
            legacy,
            {
                "rollout_id": rec.get("rollout_id"),
                "status": "reward",
                "reward": rec["value"],
                "candidate_id": rec.get("candidate_id"),
            },
            headers=headers,
        )
        if not _ok(r):
            exc = _error(r, f"POST {legacy}")
            if exc.retryable:
                raise exc
            return _rejected(key, str(exc))
        self._legacy_reward = True
        done = yield _Req("POST", legacy, {"rollout_id": rec.get("rollout_id"), "status": "done"})
        if not _ok(done):  # the reward is stored; resending it would count it twice
            log.debug(
                "synth-middleware: 'done' for rollout %s answered HTTP %d",
                rec.get("rollout_id"),
                done.status,
            )
        return {"idempotency_key": key, "status": "accepted"}

    # -- helpers shared by the drivers ---------------------------------------------
    def _prepare_rewards(
        self, rewards: Sequence[RewardRecord]
    ) -> tuple[list[RewardResult | None], list[int], list[dict[str, Any]]]:
        """JSON-check each reward: the batch items, their input positions, and results
        pre-filled (``rejected``) for the ones that cannot be sent."""
        results: list[RewardResult | None] = [None] * len(rewards)
        index: list[int] = []
        items: list[dict[str, Any]] = []
        for i, rec in enumerate(rewards):
            if not isinstance(rec, Mapping) or not isinstance(rec.get("idempotency_key"), str):
                results[i] = _rejected(None, "a reward record needs an idempotency_key")
                continue
            item = {k: v for k, v in rec.items() if v is not None and k in _RECORD_FIELDS}
            try:
                encode_json(item)
            except (TypeError, ValueError) as exc:
                results[i] = _rejected(
                    rec["idempotency_key"], f"reward is not JSON-serialisable (no NaN/inf): {exc}"
                )
                continue
            index.append(i)
            items.append(item)
        return results, index, items

    @staticmethod
    def _rollout_items(rollouts: Sequence[RolloutRecord]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for rec in rollouts:
            item = dict(rec)
            if not _jsonable(item):  # keep the rollout; drop what cannot travel
                for name in ("input", "output", "metadata"):
                    if name in item and not _jsonable(item[name]):
                        item.pop(name)
                if not _jsonable(item):
                    continue
            items.append(item)
        return items

    @staticmethod
    def _partial(
        results: list[RewardResult | None], errors: list[BackendError]
    ) -> PartialDeliveryError:
        first = errors[0]
        waits = [w for w in (getattr(e, "retry_after", None) for e in errors) if w is not None]
        return PartialDeliveryError(
            f"{len(errors)} of {len(results)} reward(s) not delivered: {first}",
            results,
            status=first.status,
            retry_after=max(waits) if waits else None,
        )


def _response(resp: httpx.Response) -> _Resp:
    text = resp.text
    data: Any = None
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    return _Resp(resp.status_code, data, text[:2000], resp.headers)


def _network_error(req: _Req, exc: Exception) -> BackendError:
    err = BackendError(
        f"{req.method} {req.path}: {type(exc).__name__}: {exc}", status=None, code="network_error"
    )
    err.retry_after = None  # type: ignore[attr-defined]
    return err


class _Pool:
    """A few daemon threads running per-reward requests concurrently.

    Not ``concurrent.futures``: its workers are joined before ``atexit``
    handlers run, and the exit-time flush still needs to send.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def run_all(self, fns: Sequence[Callable[..., Any]]) -> list[tuple[bool, Any]]:
        """Run ``fns`` concurrently; ``(ok, value_or_exception)`` each, in order."""
        if len(fns) == 1:
            try:
                return [(True, fns[0]())]
            except Exception as exc:
                return [(False, exc)]
        out: list[tuple[bool, Any]] = [(False, None)] * len(fns)
        left = [len(fns)]
        done = threading.Event()
        lock = threading.Lock()

        def job(i: int, fn: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                try:
                    out[i] = (True, fn())
                except BaseException as exc:
                    out[i] = (False, exc)
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

            return run

        self._ensure_threads(min(self.size, len(fns)))
        for i, fn in enumerate(fns):
            self._jobs.put(job(i, fn))
        done.wait()
        return out

    def _ensure_threads(self, n: int) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < n:
                t = threading.Thread(target=self._work, name="synth-http", daemon=True)
                t.start()
                self._threads.append(t)

    def _work(self) -> None:
        while True:
            self._jobs.get()()


class HttpBackend(_Dialect):
    """:class:`~synth_middleware.backends.base.Backend` speaking the wire API over HTTP.

    Args:
        base_url: the server, e.g. ``https://api.usesynth.ai`` or ``http://127.0.0.1:8000``
            (routes sit under ``/api``; a path prefix in the URL is kept).
        api_key: sent as ``Authorization: Bearer`` and ``X-API-Key``; never logged.
        timeout: seconds per request (connect, read, write and pool wait).
        pool_size: concurrent requests when rewards go one per request; the
            connection pool keeps this many keep-alive connections.
        batch: ``None`` discovers the reward/rollout batch routes on first use;
            ``True`` always batches; ``False`` never does.
        batch_probe_interval: seconds before a server without batch routes is asked again.
        headers: extra headers for every request.
        transport: an ``httpx`` transport (tests, proxies).

    Thread-safe. After ``fork()`` the child opens its own connections.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        pool_size: int = 8,
        batch: bool | None = None,
        batch_probe_interval: float = 300.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            pool_size=pool_size,
            batch=batch,
            batch_probe_interval=batch_probe_interval,
            headers=headers,
        )
        self._transport = transport
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._pool: _Pool | None = None
        self._closed = False
        # Open the client now, in the constructing thread: httpx imports modules
        # lazily when a client is made, and a fork() while the reporter thread is
        # inside such an import leaves the child's import lock held forever.
        self._http()

    # -- plumbing -------------------------------------------------------------------
    def _after_fork(self) -> None:
        # in a forked child: a fresh lock (the parent's may be held by a thread the
        # child does not have); never touch the parent's sockets or pool threads,
        # the next call opens the child's own
        super()._after_fork()
        self._lock = threading.Lock()
        self._client = None
        self._pool = None

    def _http(self) -> httpx.Client:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise BackendError("HttpBackend is closed")
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.base_url,
                    headers=self._headers(),
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(
                        max_connections=self.pool_size + 4,
                        max_keepalive_connections=self.pool_size + 4,
                    ),
                    transport=self._transport,
                    follow_redirects=False,
                )
                self._pool = _Pool(self.pool_size)
            return self._client

    def _send(self, req: _Req) -> _Resp:
        client = self._http()
        headers = dict(req.headers or {})
        content = req.content()
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = client.request(
                req.method, req.path, content=content, params=req.params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise _network_error(req, exc) from None
        return _response(resp)

    def _run(self, op: Op[T]) -> T:
        try:
            req = next(op)
            while True:
                req = op.send(self._send(req))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- Backend --------------------------------------------------------------------
    def ensure_session(
        self, session_id: str, *, baseline: str | None = None, kind: SessionKind = "mipro_online"
    ) -> SessionState:
        """Create the session if new (registering ``baseline``) and return its state."""
        return self._run(self._op_ensure_session(session_id, baseline, kind))

    def get_state(self, session_id: str) -> SessionState:
        """The session's state; :class:`NotFoundError` if unknown."""
        return self._run(self._op_get_state(session_id))

    def list_candidates(
        self,
        session_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        sort: str | None = None,
        include: Sequence[str] = ("prompt_text",),
    ) -> dict[str, Any]:
        """A page ``{items, next_cursor, system_id, ...}`` of candidates."""
        return self._run(self._op_list_candidates(session_id, status, limit, cursor, sort, include))

    def get_candidate(self, candidate_id: str) -> CandidateItem:
        """One candidate with its full payload."""
        return self._run(self._op_get_candidate(candidate_id))

    def record_rollouts(self, rollouts: Sequence[RolloutRecord]) -> None:
        """Send rollouts to the batch route when the server has one; else only remember
        each rollout's session (for rewards that name just the rollout)."""
        for rec in rollouts:
            if isinstance(rec, Mapping):
                self._remember(rec.get("rollout_id"), rec.get("session_id"))
        if not rollouts or not self._batch_due(self._rollouts_ok, self._rollouts_checked):
            return
        items = self._rollout_items(rollouts)
        if items:
            self._run(self._op_rollouts_batch(items))

    def record_rewards(self, rewards: Sequence[RewardRecord]) -> list[RewardResult]:
        """Deliver rewards; one result per input, in order.

        Raises :class:`PartialDeliveryError` when some got an answer and others
        failed transiently, or a retryable :class:`BackendError` when none got one.
        """
        results, index, bodies = self._prepare_rewards(rewards)
        if bodies and self._batch_due(self._batch_ok, self._batch_checked):
            got = self._run(self._op_rewards_batch(bodies))
            if got is not None:
                for i, res in zip(index, got, strict=True):
                    results[i] = res
                return results  # type: ignore[return-value]
        if bodies:
            fns = [
                (lambda rec=rewards[i]: self._run(self._op_one_reward(rec)))
                for i in index
            ]
            self._http()
            assert self._pool is not None
            errors: list[BackendError] = []
            for i, (ok, value) in zip(index, self._pool.run_all(fns), strict=True):
                if ok:
                    results[i] = value
                elif isinstance(value, BackendError):
                    errors.append(value)
                else:
                    errors.append(_network_error(_Req("POST", "reward"), value))
            if errors:
                if len(errors) == len(bodies) and all(r is None for r in results):
                    raise errors[0]
                raise self._partial(results, errors)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Close the connection pool (only in the process that opened it)."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:  # a forked child has none of the parent's
            client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncHttpBackend(_Dialect):
    """The same backend with ``async`` methods over ``httpx.AsyncClient`` (same
    arguments as :class:`HttpBackend`). Per-reward requests run concurrently,
    at most ``pool_size`` at a time. Use it from one event loop; ``aclose()``
    when done."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        pool_size: int = 8,
        batch: bool | None = None,
        batch_probe_interval: float = 300.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            pool_size=pool_size,
            batch=batch,
            batch_probe_interval=batch_probe_interval,
            headers=headers,
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers(),
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(
                max_connections=self.pool_size + 4, max_keepalive_connections=self.pool_size + 4
            ),
            transport=transport,
            follow_redirects=False,
        )

    async def _send(self, req: _Req) -> _Resp:
        headers = dict(req.headers or {})
        content = req.content()
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = await self._client.request(
                req.method, req.path, content=content, params=req.params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise _network_error(req, exc) from None
        return _response(resp)

    async def _run(self, op: Op[T]) -> T:
        try:
            req = next(op)
            while True:
                req = op.send(await self._send(req))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def ensure_session(
        self, session_id: str, *, baseline: str | None = None, kind: SessionKind = "mipro_online"
    ) -> SessionState:
        """Create the session if new (registering ``baseline``) and return its state."""
        return await self._run(self._op_ensure_session(session_id, baseline, kind))

    async def get_state(self, session_id: str) -> SessionState:
        """The session's state; :class:`NotFoundError` if unknown."""
        return await self._run(self._op_get_state(session_id))

    async def list_candidates(
        self,
        session_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        sort: str | None = None,
        include: Sequence[str] = ("prompt_text",),
    ) -> dict[str, Any]:
        """A page ``{items, next_cursor, system_id, ...}`` of candidates."""
        return await self._run(
            self._op_list_candidates(session_id, status, limit, cursor, sort, include)
        )

    async def get_candidate(self, candidate_id: str) -> CandidateItem:
        """One candidate with its full payload."""
        return await self._run(self._op_get_candidate(candidate_id))

    async def record_rollouts(self, rollouts: Sequence[RolloutRecord]) -> None:
        """Like :meth:`HttpBackend.record_rollouts`."""
        for rec in rollouts:
            if isinstance(rec, Mapping):
                self._remember(rec.get("rollout_id"), rec.get("session_id"))
        if not rollouts or not self._batch_due(self._rollouts_ok, self._rollouts_checked):
            return
        items = self._rollout_items(rollouts)
        if items:
            await self._run(self._op_rollouts_batch(items))

    async def record_rewards(self, rewards: Sequence[RewardRecord]) -> list[RewardResult]:
        """Like :meth:`HttpBackend.record_rewards`."""
        results, index, bodies = self._prepare_rewards(rewards)
        if bodies and self._batch_due(self._batch_ok, self._batch_checked):
            got = await self._run(self._op_rewards_batch(bodies))
            if got is not None:
                for i, res in zip(index, got, strict=True):
                    results[i] = res
                return results  # type: ignore[return-value]
        if bodies:
            sem = asyncio.Semaphore(self.pool_size)

            async def one(rec: Mapping[str, Any]) -> RewardResult:
                async with sem:
                    return await self._run(self._op_one_reward(rec))

            got_all = await asyncio.gather(
                *(one(rewards[i]) for i in index), return_exceptions=True
            )
            errors: list[BackendError] = []
            for i, value in zip(index, got_all, strict=True):
                if isinstance(value, BaseException):
                    if not isinstance(value, Exception):
                        raise value
                    errors.append(
                        value
                        if isinstance(value, BackendError)
                        else _network_error(_Req("POST", "reward"), value)
                    )
                else:
                    results[i] = value
            if errors:
                if len(errors) == len(bodies) and all(r is None for r in results):
                    raise errors[0]
                raise self._partial(results, errors)
        return results  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncHttpBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
