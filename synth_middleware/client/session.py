"""Per-session client state: the candidate cache, selection and baseline tracking.

One :class:`SessionRuntime` exists per (backend, session) in a process, shared
by every wrapper of that session. The request path reads an immutable
:class:`Snapshot` and never waits on the backend: a stale snapshot keeps being
served while one background refresh per session fetches a new one.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cachetools

from synth_middleware import _fork
from synth_middleware._logonce import LogOnce
from synth_middleware._retry import backoff_delay
from synth_middleware.client import _refresher
from synth_middleware.client.candidates import Candidate, parse_candidate
from synth_middleware.client.selection import (
    Categorical,
    Selection,
    routing_from_state,
    stable_unit,
)
from synth_middleware.errors import CandidateError, NotFoundError

if TYPE_CHECKING:
    from synth_middleware.backends.base import Backend, SessionState
    from synth_middleware.client.reporter import RewardReporter
    from synth_middleware.rollout import Rollout

log = logging.getLogger("synth_middleware")

# Consecutive calls with one new system prompt (and none with the known
# baseline) after which we take it for a deploy of a changed prompt.
PROMPT_CHANGE_CALLS = 20
_MAX_BACKOFF = 300.0


class _PartialRefresh(Exception):
    """A refresh whose reads succeeded but whose registration write failed."""

    def __init__(self, snap: Snapshot, error: Exception) -> None:
        super().__init__(str(error))
        self.snap = snap
        self.error = error


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the request path needs, rebuilt once per refresh."""

    baseline: Candidate | None
    candidates: Mapping[str, Candidate]
    best_id: str | None
    explore: Categorical | None
    generation: int
    state: Mapping[str, Any]
    fetched_at: float = field(default_factory=time.monotonic)

    @property
    def baseline_text(self) -> str | None:
        """The app's own system prompt as the backend knows it."""
        return self.baseline.text if self.baseline is not None else None


@dataclass(slots=True)
class SessionCounters:
    """How the session's calls were served (see :func:`synth_middleware.stats`)."""

    calls: int = 0
    served_candidate: int = 0
    served_baseline: int = 0
    mismatched: int = 0
    refreshes: int = 0
    refresh_errors: int = 0
    malformed_candidates: int = 0
    prompt_changes: int = 0
    last_error: str | None = None


class SessionRuntime:
    """Candidate cache + selection for one session on one backend."""

    def __init__(
        self,
        backend: Backend,
        session_id: str,
        *,
        selection: Selection,
        ttl: float,
        reporter: RewardReporter,
    ) -> None:
        self.backend = backend
        self.session_id = session_id
        self.selection = selection
        self.ttl = float(ttl)
        self.reporter = reporter
        self.counters = SessionCounters()
        self._snap: Snapshot | None = None
        # cachetools TTL entry marks freshness; the snapshot itself outlives it
        # (stale-while-revalidate) until a refresh replaces it.
        self._fresh: cachetools.TTLCache[str, bool] = cachetools.TTLCache(maxsize=1, ttl=self.ttl)
        self._lock = threading.Lock()
        self._refreshing = False
        self._retry_at = 0.0
        self._failures = 0  # refreshes failed in a row: the backoff's exponent
        self._observed_baseline: str | None = None
        self._registered = False
        self._register_lock = threading.Lock()
        self._register_retry_at = 0.0
        self._created = False  # ensured without a baseline (no call has shown a prompt)
        self._new_prompt: str | None = None
        self._new_prompt_calls = 0
        self._logged = LogOnce(log, prefix="synth-middleware: ")
        # sticky key -> candidate id; bounded so many keys never grow memory
        self._sticky: cachetools.LRUCache[str, str] = cachetools.LRUCache(maxsize=50_000)
        self._sticky_lock = threading.Lock()
        self._done = threading.Event()

    # ------------------------------------------------------------ request path
    def snapshot(self) -> Snapshot | None:
        """The current snapshot (maybe stale); schedules a refresh when due."""
        if "s" not in self._fresh and not self._refreshing:
            self._schedule()
        return self._snap

    def choose(
        self, snap: Snapshot, rollout: Rollout, selection: Selection | None = None
    ) -> Candidate | None:
        """Pick the candidate for ``rollout`` (``None``: serve the app's own prompt)."""
        if rollout.candidate_id is not None:
            c = snap.candidates.get(rollout.candidate_id)
            if c is not None:
                return c
        key = rollout.key
        if key is not None:
            with self._sticky_lock:
                cid = self._sticky.get(key)
            if cid is not None:
                c = snap.candidates.get(cid)
                if c is not None:
                    return c
        picked = self._pick(snap, rollout, key, selection or self.selection)
        if key is not None and picked is not None:
            with self._sticky_lock:
                self._sticky[key] = picked.candidate_id
        return picked

    def _pick(
        self, snap: Snapshot, rollout: Rollout, key: str | None, sel: Selection
    ) -> Candidate | None:
        if sel == "explore":
            if snap.explore is None:
                return snap.baseline
            u = stable_unit(f"{self.session_id}\x00{key}") if key is not None else None
            return snap.explore.draw(u)  # type: ignore[no-any-return]
        if sel == "best":
            best = snap.candidates.get(snap.best_id) if snap.best_id else None
            return best or snap.baseline
        try:
            got = sel(list(snap.candidates.values()), rollout)
        except Exception as exc:  # a user callable must not break the app's call
            self._warn_once("selector", "custom selection raised %r; serving the baseline", exc)
            return snap.baseline
        if isinstance(got, str):
            got = snap.candidates.get(got)
        if got is None or isinstance(got, Candidate):
            return got or snap.baseline
        self._warn_once("selector-type", "custom selection returned %r; serving the baseline", got)
        return snap.baseline

    def observe(self, system: str | None, snap: Snapshot | None) -> bool:
        """Account for the app's own system prompt; return whether it is this session's.

        Cold start: the first prompt seen becomes the baseline to register.
        A prompt that differs from the known baseline passes through untouched
        (a client used for several prompts); the same new prompt on every call
        for a while means the app's prompt changed (a deploy).
        """
        if snap is None or snap.baseline_text is None:
            if self._observed_baseline is None and system is not None:
                self._observed_baseline = system
                self._schedule(force=True)
            return self._observed_baseline is None or system == self._observed_baseline
        if system == snap.baseline_text:
            self._new_prompt_calls = 0
            return True
        self.counters.mismatched += 1
        if system is None:
            return False
        if system == self._new_prompt:
            self._new_prompt_calls += 1
            if self._new_prompt_calls == PROMPT_CHANGE_CALLS:
                self.counters.prompt_changes += 1
                log.warning(
                    "synth-middleware: session %r: the app's system prompt changed "
                    "(%d calls in a row with a new prompt); registering it as the new "
                    "baseline and retiring candidates bred from the old one",
                    self.session_id,
                    PROMPT_CHANGE_CALLS,
                )
                self._observed_baseline = system
                self._registered = False
                self._schedule(force=True)
        else:
            if self._new_prompt is None:
                self._warn_once(
                    "mismatch",
                    "session %r: a call's system prompt does not match the session's "
                    "baseline; passing it through untouched (wrap once per prompt)",
                    self.session_id,
                )
            self._new_prompt = system
            self._new_prompt_calls = 1
        return False

    # --------------------------------------------------------------- refresh
    def _schedule(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if self._refreshing or (not force and now < self._retry_at):
                return
            self._refreshing = True
            self._done.clear()
        _refresher.submit(self.refresh_now)

    def wait_ready(self, timeout: float) -> bool:
        """Block up to ``timeout`` for a first snapshot (used by ``warm=True``)."""
        if self._snap is None:
            self._schedule(force=True)
            self._done.wait(timeout)
        return self._snap is not None

    def refresh_now(self) -> None:
        """Fetch state and candidates from the backend; keep the last good on error."""
        try:
            snap = self._fetch()
        except Exception as exc:  # keep serving the last good snapshot
            if isinstance(exc, _PartialRefresh):  # the reads were good: serve them
                self._snap = exc.snap
                exc = exc.error
            self.counters.refresh_errors += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            self._failures += 1
            delay = backoff_delay(1.0, _MAX_BACKOFF, self._failures)  # 1, 2, 4 ... 300 s
            self._retry_at = time.monotonic() + min(delay, self.ttl)
            self._warn_once(
                "refresh",
                "session %r: backend refresh failed (%s); serving the last good prompt",
                self.session_id,
                self.counters.last_error,
            )
        else:
            self.counters.refreshes += 1
            self._failures = 0
            self._retry_at = 0.0
            if snap is not None:
                self._snap = snap
                self._fresh["s"] = True
                self._logged.reset("refresh")  # a later outage is news again
        finally:
            with self._lock:
                self._refreshing = False
            self._done.set()

    def ensure_registered(self) -> None:
        """Register the session (and the baseline a call has seen) with the backend now,
        if the background refresh has not yet. Reward delivery calls this before it
        sends the session's rollouts, so they never reach the backend before their
        session exists."""
        if self._registered or (self._created and self._observed_baseline is None):
            return
        if time.monotonic() < self._register_retry_at:
            return  # failed a moment ago: the refresh retries with its own backoff
        with self._register_lock:
            if self._registered:
                return
            try:
                if self._observed_baseline is not None:
                    self._register()
                elif not self._created:
                    # calls without a system prompt: the session must exist for their
                    # rollouts; a later call's prompt fills its baseline
                    self.backend.ensure_session(self.session_id)
                    self._created = True
                else:
                    return
            except Exception:
                self._register_retry_at = time.monotonic() + 5.0
                raise
        self._fresh.clear()  # the next call refreshes from the registered session

    def _register(self) -> SessionState:
        baseline = self._observed_baseline
        state = self.backend.ensure_session(self.session_id, baseline=baseline)
        self._registered = True
        if self._new_prompt == baseline:
            self._new_prompt, self._new_prompt_calls = None, 0
        return state

    def _fetch(self) -> Snapshot | None:
        state: SessionState
        for _ in range(2):
            with self._register_lock:
                if not self._registered and self._observed_baseline is not None:
                    try:
                        state = self._register()
                    except Exception as exc:
                        # The registration is an optional write: when it fails, the
                        # reads may still succeed; serve what they give and retry the
                        # write soon (backoff).
                        try:
                            state = self.backend.get_state(self.session_id)
                            snap = self._build(state, self._active_candidates())
                        except Exception:
                            raise exc from None
                        raise _PartialRefresh(snap, exc) from None
                    break
            try:
                state = self.backend.get_state(self.session_id)
            except NotFoundError:
                state = None  # type: ignore[assignment]
            if self._registered or self._observed_baseline is None:
                break
            # a call saw the app's prompt while we read: register it now (a session
            # seeded with candidates before traffic has no baseline text yet)
        if state is None:
            return None  # the first call will register the session
        items = self._active_candidates()
        return self._build(state, items)

    def _active_candidates(self) -> list[Mapping[str, Any]]:
        items: list[Mapping[str, Any]] = []
        cursor: str | None = None
        for _ in range(20):  # at most 20 pages of 500: a bound against a looping cursor
            page = self.backend.list_candidates(
                self.session_id, status="active", limit=500, cursor=cursor
            )
            batch = page.get("items") if isinstance(page, Mapping) else None
            if not isinstance(batch, list):
                raise TypeError("backend answered a candidate list without 'items'")
            items.extend(batch)
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items

    def _build(self, state: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> Snapshot:
        if not isinstance(state, Mapping):
            raise TypeError("backend answered a session state that is not an object")
        stats_by_id = {
            s.get("candidate_id"): s
            for s in state.get("candidates") or []
            if isinstance(s, Mapping)
        }
        parsed: dict[str, Candidate] = {}
        baseline: Candidate | None = None
        baseline_id = state.get("baseline_candidate_id")
        for item in items:
            if not isinstance(item, Mapping) or item.get("status", "active") != "active":
                continue
            if _is_placeholder_baseline(item, baseline_id):
                continue  # created before the app's prompt was known: serve the app's own
            try:
                c = parse_candidate(item)
            except CandidateError as exc:
                self.counters.malformed_candidates += 1
                self._warn_once(f"bad:{item.get('candidate_id')}", "skipping candidate: %s", exc)
                continue
            parsed[c.candidate_id] = c
            if c.is_baseline or c.candidate_id == baseline_id:
                baseline = c
        ids = list(parsed)
        explore = None
        if ids:
            explore = Categorical(
                [parsed[cid] for cid in ids], routing_from_state(state, ids, stats_by_id)
            )
        best = state.get("best_candidate_id")
        return Snapshot(
            baseline=baseline,
            candidates=parsed,
            best_id=best if isinstance(best, str) else None,
            explore=explore,
            generation=int(state.get("generation") or 0),
            state=state,
        )

    def _warn_once(self, what: str, msg: str, *args: object) -> None:
        self._logged.warning(what, msg, *args)


def _is_placeholder_baseline(item: Mapping[str, Any], baseline_id: object) -> bool:
    """A baseline the backend holds without text or payload: the session was created
    (candidates seeded) before any call showed the app's prompt."""
    if not (item.get("is_baseline") or item.get("candidate_id") == baseline_id):
        return False
    return all(
        item.get(k) is None
        for k in ("candidate_content", "candidate_code", "prompt_text", "artifact_payload")
    )


_runtimes: dict[tuple[int, str], SessionRuntime] = {}
_runtimes_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # a registration under way in the parent (a backend call holding the lock) has no
    # thread in the child: the child's own delivery must not wait for it
    for rt in list(_runtimes.values()):
        rt._register_lock = threading.Lock()


_fork.after_fork_in_child(_after_fork_in_child)


def ensure_registered(backend: Backend, session_ids: Iterable[str]) -> None:
    """Register with ``backend`` each of these sessions that a call in this process has
    seen but the background refresh has not registered yet (errors are left to the
    delivery that follows)."""
    for sid in session_ids:
        rt = _runtimes.get((id(backend), sid))
        if rt is not None and rt.backend is backend:
            try:
                rt.ensure_registered()
            except Exception as exc:  # the delivery reports what follows from it
                log.debug("synth-middleware: registering session %r failed: %s", sid, exc)


def runtime_for(
    backend: Backend,
    session_id: str,
    *,
    selection: Selection,
    ttl: float,
    reporter_factory: Callable[[Backend], RewardReporter],
) -> SessionRuntime:
    """The process's runtime for (backend, session); created on first use."""
    key = (id(backend), session_id)
    with _runtimes_lock:
        rt = _runtimes.get(key)
        if rt is None or rt.backend is not backend:
            rt = SessionRuntime(
                backend,
                session_id,
                selection=selection,
                ttl=ttl,
                reporter=reporter_factory(backend),
            )
            _runtimes[key] = rt
        # delivery calls back here (not the other way round: the reporter knows no
        # sessions) so a session is registered before its rollouts are sent
        rt.reporter.before_rollouts = functools.partial(ensure_registered, backend)
        return rt


def all_runtimes() -> list[SessionRuntime]:
    """Every session runtime in this process."""
    with _runtimes_lock:
        return list(_runtimes.values())
