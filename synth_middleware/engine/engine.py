"""The engine facade: validated writes to the event log, reads from in-memory state.

:class:`Engine` keeps one :class:`~synth_middleware.engine.state.SessionStateMachine`
per session in memory. Before every read or write it catches up from the log
(``seq > version``), so several engines, in several processes, sharing one
database stay consistent: each one tails the log. Writes run inside one store
transaction that excludes other writers, so validation always sees the
latest state, and a batch (say 1,000 rewards) is one transaction.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import cachetools

from synth_middleware._fork import reset_after_fork
from synth_middleware.engine._optimizer_options import OptimizerOptions
from synth_middleware.engine.config import parse_session_config
from synth_middleware.engine.state import (
    BASELINE_CHANGED,
    CANDIDATE_ADDED,
    CANDIDATE_ARCHIVED,
    CONFIG_UPDATED,
    OPTIMIZER,
    REWARD,
    ROLLOUT,
    SESSION_CREATED,
    SESSION_STATUS,
    SESSION_STATUSES,
    CandidateState,
    Event,
    SessionStateMachine,
)
from synth_middleware.engine.store import CandidateRow, RolloutRow, Store, WriteTxn
from synth_middleware.errors import InvalidRequestError, NotFoundError
from synth_middleware.wire.limits import MAX_CANDIDATE_BYTES, MAX_METADATA_BYTES
from synth_middleware.wire.records import (
    ValidReward,
    ValidRollout,
    parse_reward,
    parse_rollout,
    rejected,
)
from synth_middleware.wire.types import (
    SESSION_KINDS,
    CandidateItem,
    RewardRecord,
    RewardResult,
    RolloutRecord,
    SessionState,
)
from synth_middleware.wire.validate import (
    encode_json,
    is_id,
    json_size,
    utf8_len,
    validate_session_id,
)

logger = logging.getLogger("synth_middleware.engine")

T = TypeVar("T")

SORT_FIELDS = ("avg_reward", "objective", "rollout_count", "created_at")
DEFAULT_SORT = "created_at:asc"
_CATCH_UP_PAGE = 10_000
# Candidate -> session entries remembered by an engine (about 100 bytes each); past
# this the map starts over, refilled from the store on demand.
_CANDIDATE_MEMORY = 100_000
# Event types after which the optimizer runner looks at a session again.
_OPTIMIZER_WAKE = frozenset(
    {REWARD, CANDIDATE_ADDED, CANDIDATE_ARCHIVED, BASELINE_CHANGED, SESSION_STATUS, CONFIG_UPDATED}
)


# Per-record outcomes of :meth:`Engine.record_rollouts` (``RolloutsResult.statuses``).
ROLLOUT_ACCEPTED = "accepted"
ROLLOUT_DUPLICATE = "duplicate"
ROLLOUT_SUPPLEMENTED = "supplemented"
ROLLOUT_SKIPPED = "skipped"


@dataclass(slots=True)
class RolloutsResult:
    """What :meth:`Engine.record_rollouts` did with a batch.

    ``supplemented`` counts records that brought the details of a rollout a
    reward had already created; ``errors`` lists ``(index, reason)`` of the
    skipped ones. ``statuses`` has one outcome per input record, in order
    (``accepted``, ``duplicate``, ``supplemented`` or ``skipped``), so a caller
    that merged several requests into one batch can split the answer back.
    """

    accepted: int = 0
    duplicates: int = 0
    supplemented: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)


def _is_placeholder(cand: CandidateState | None) -> bool:
    """A baseline created before the app's prompt was known (no text, no payload, no
    rewards): the first known prompt fills it instead of starting a new generation."""
    return (
        cand is not None and cand.content is None and cand.payload is None and not cand.reward_count
    )


class _Batch:
    """Events and touched states of one write transaction."""

    __slots__ = ("after_commit", "events", "now", "payloads", "seq", "states", "txn")

    def __init__(self, txn: WriteTxn) -> None:
        self.txn = txn
        self.seq = txn.next_seq()
        self.now = time.time()
        self.events: list[Event] = []
        self.payloads: list[str] = []  # events[i].payload as JSON text, for the store
        self.states: dict[str, SessionStateMachine | None] = {}
        self.after_commit: list[Callable[[], None]] = []

    def emit(
        self,
        state: SessionStateMachine,
        type_: str,
        payload: dict[str, Any],
        encoded: str | None = None,
    ) -> Event:
        """Number an event, apply it to ``state`` and queue it for the log.

        ``encoded`` is ``payload`` as :func:`encode_json` text when the caller has
        it already (a rollout's, made while validating it): each payload is
        encoded exactly once, here or there, and the store writes that text.
        """
        if encoded is None:
            encoded = encode_json(payload)  # before apply: a bad payload changes nothing
        event = Event(self.seq, state.session_id, type_, payload, self.now)
        self.seq += 1
        state.apply(event)
        self.events.append(event)
        self.payloads.append(encoded)
        return event


class AttachedOptimizer(Protocol):
    """What the engine knows of the optimizer runner attached to it (see
    :func:`~synth_middleware.engine.factory.attach_optimizer`): a protocol, so the
    engine does not import the runner, which calls back into the engine."""

    owner: str
    """The runner's lease owner id (unique per runner)."""

    def notify(self, session_ids: Iterable[str]) -> None:
        """Sessions changed (called after commits, with the engine lock held: cheap)."""
        ...

    def step(self, session_id: str, *, force: bool = False) -> dict[str, Any]:
        """Run the session's optimizer step now; return its optimizer status."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Stop background work (the engine is closing)."""
        ...



class _StateCache(cachetools.LRUCache[str, SessionStateMachine]):
    """The caught-up session states, least recently used evicted first; an evicted
    session also forgets its last snapshot point (``snap_at``)."""

    def __init__(self, maxsize: int, snap_at: dict[str, int]) -> None:
        super().__init__(maxsize)
        self._snap_at = snap_at

    def popitem(self) -> tuple[str, SessionStateMachine]:
        key, value = super().popitem()
        self._snap_at.pop(key, None)
        return key, value

class Engine:
    """Thread-safe facade over a :class:`~synth_middleware.engine.store.Store`.

    Used in-process by :class:`~synth_middleware.backends.local.LocalBackend` and
    by the server. Every method may raise
    :class:`~synth_middleware.errors.BackendError` (``InvalidRequestError``,
    ``NotFoundError``, or a retryable ``StorageError``).
    """

    def __init__(
        self,
        store: Store,
        *,
        snapshot_every: int = 1000,
        max_cached_sessions: int = 10_000,
        optimizer: bool | OptimizerOptions | None = None,
    ) -> None:
        """``optimizer``: run the sessions' online optimizers (MIPRO, GEPA) and the
        pruning policy in a background thread of this engine: ``True`` for the
        defaults, or :class:`~synth_middleware.engine.OptimizerOptions`. Off by
        default: with several processes on one database, enable it where
        proposals should run (a lease keeps it to one writer per session).
        Shorthand for :func:`~synth_middleware.engine.factory.attach_optimizer`."""
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self._store = store
        self._snapshot_every = snapshot_every
        self._max_cached = max(1, max_cached_sessions)
        self._snap_at: dict[str, int] = {}  # applied_events at the last snapshot we know of
        self._states = _StateCache(self._max_cached, self._snap_at)
        self._lock = threading.RLock()
        # forked while another thread held the lock: it would stay held in the child
        reset_after_fork(self, "_new_lock")
        self._optimizer: AttachedOptimizer | None = None
        self._commit_listeners: list[Callable[[set[str]], None]] = []
        # A candidate never changes session and is never deleted, so once seen (added
        # here, or found in the store) get_candidate needs no store query for it.
        self._candidate_sessions: dict[str, str] = {}
        if optimizer:
            # the factory builds the runner (which imports this module) and attaches it
            from synth_middleware.engine.factory import attach_optimizer

            opts = optimizer if isinstance(optimizer, OptimizerOptions) else OptimizerOptions()
            attach_optimizer(self, opts)

    @property
    def store(self) -> Store:
        """The underlying store."""
        return self._store

    @property
    def optimizer(self) -> AttachedOptimizer | None:
        """The background optimizer runner, when enabled."""
        return self._optimizer

    def attach_optimizer(self, optimizer: AttachedOptimizer) -> None:
        """Notify ``optimizer`` of every later commit that can matter to it, and stop
        it on :meth:`close`. One per engine."""
        if self._optimizer is not None and self._optimizer is not optimizer:
            raise RuntimeError("this engine has an optimizer attached already")
        self._optimizer = optimizer

    def add_commit_listener(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(session_ids)`` after each commit that wrote events, in the
        writing thread, with the lock held: it must be quick and must not call back
        into the engine (the server uses it to wake change-feed waiters)."""
        self._commit_listeners.append(listener)

    # -- plumbing -----------------------------------------------------------

    def _new_lock(self) -> None:
        self._lock = threading.RLock()

    def _locked(self) -> threading.RLock:
        return self._lock

    def _load(self, session_id: str, src: Store | WriteTxn) -> SessionStateMachine | None:
        """The caught-up state of a session, or ``None`` if it does not exist. Lock held."""
        state = self._states.get(session_id)
        if state is None:
            snap = src.load_snapshot(session_id)
            state = None
            if snap is not None:
                try:
                    state = SessionStateMachine.from_snapshot(snap[1])
                except (ValueError, KeyError, TypeError):
                    state = None  # an older snapshot format: replay the log instead
            if state is None:
                state = SessionStateMachine(session_id)
            self._snap_at[session_id] = state.applied_events
        while True:
            events = src.read_events(session_id, state.version, _CATCH_UP_PAGE)
            for event in events:
                state.apply(event)
            if len(events) < _CATCH_UP_PAGE:
                break
        if not state.exists:
            return None
        self._cache(session_id, state)
        return state

    def _remember_candidate(self, candidate_id: str, session_id: str) -> None:
        if len(self._candidate_sessions) >= _CANDIDATE_MEMORY:
            self._candidate_sessions.clear()  # rare; cheaper than tracking recency per fetch
        self._candidate_sessions[candidate_id] = session_id

    def _cache(self, session_id: str, state: SessionStateMachine) -> None:
        self._states[session_id] = state

    def _session(self, batch: _Batch, session_id: str) -> SessionStateMachine | None:
        """Load a session once per batch, caught up under the write lock."""
        if session_id in batch.states:
            return batch.states[session_id]
        state = self._load(session_id, batch.txn)
        batch.states[session_id] = state
        return state

    def _read(self, session_id: str) -> SessionStateMachine:
        """The caught-up state for a read; caller holds the lock."""
        state = self._load(validate_session_id(session_id), self._store)
        if state is None:
            raise NotFoundError(f"unknown session {session_id!r}", code="session_not_found")
        return state

    def _write(self, op: Callable[[_Batch], T]) -> T:
        """Run ``op`` in one write transaction; on any error, forget the touched states
        (they may hold events that were rolled back) so the next access reloads them."""
        with self._locked():
            batch: _Batch | None = None
            try:
                with self._store.write() as txn:
                    batch = _Batch(txn)
                    result = op(batch)
                    if batch.events:
                        txn.append_events(batch.events, batch.payloads)
                        self._maybe_snapshot(batch)
            except BaseException:
                if batch is not None:
                    for sid in batch.states:
                        self._states.pop(sid, None)
                        self._snap_at.pop(sid, None)
                raise
            for sid, state in batch.states.items():
                if state is not None and state.exists:
                    self._cache(sid, state)
            for callback in batch.after_commit:
                callback()
            if self._optimizer is not None and batch.events:
                touched = {ev.session_id for ev in batch.events if ev.type in _OPTIMIZER_WAKE}
                if touched:
                    self._optimizer.notify(touched)
            if self._commit_listeners and batch.events:
                sessions = {ev.session_id for ev in batch.events}
                for listener in self._commit_listeners:
                    try:
                        listener(sessions)
                    except Exception:
                        logger.exception("engine: a commit listener failed")
            return result

    def _maybe_snapshot(self, batch: _Batch) -> None:
        for sid, state in batch.states.items():
            if state is None:
                continue
            if state.applied_events - self._snap_at.get(sid, 0) >= self._snapshot_every:
                batch.txn.save_snapshot(sid, state.version, state.to_snapshot())
                self._snap_at[sid] = state.applied_events

    @staticmethod
    def _new_candidate_id(batch: _Batch, state: SessionStateMachine) -> str:
        while True:  # 48 random bits: a collision is rare, but ids must be globally unique
            cid = "cand_" + os.urandom(6).hex()
            if cid not in state.candidates and not batch.txn.candidate_exists(cid):
                return cid

    def _add_candidate(
        self,
        batch: _Batch,
        state: SessionStateMachine,
        *,
        content: str | None,
        payload: Any,
        parent_id: str | None,
        metadata: dict[str, Any] | None,
        is_baseline: bool,
    ) -> str:
        cid = self._new_candidate_id(batch, state)
        event = batch.emit(
            state,
            CANDIDATE_ADDED,
            {
                "candidate_id": cid,
                "content": content,
                "payload": payload,
                "parent_id": parent_id,
                "is_baseline": is_baseline,
                "generation": state.generation,
                "metadata": metadata,
            },
        )
        batch.txn.add_candidate(
            CandidateRow(
                cid,
                state.session_id,
                state.generation,
                is_baseline,
                parent_id,
                "active",
                event.created_at,
                event.seq,
            )
        )
        sid = state.session_id
        # Only once committed: a rolled-back candidate must stay unknown.
        batch.after_commit.append(lambda: self._remember_candidate(cid, sid))
        return cid

    def _set_status(
        self, batch: _Batch, state: SessionStateMachine, status: str, reason: str
    ) -> None:
        if state.status != status:
            batch.emit(state, SESSION_STATUS, {"status": status, "reason": reason})
            batch.txn.set_session_status(state.session_id, status)

    # -- sessions -----------------------------------------------------------

    def ensure_session(
        self,
        session_id: str,
        *,
        baseline: str | None = None,
        kind: str = "mipro_online",
        config: Mapping[str, Any] | None = None,
    ) -> SessionState:
        """Create the session if new (with ``baseline`` as its baseline candidate) and
        return its state.

        For an existing session, a ``baseline`` different from the current
        generation's baseline text starts a new generation: a new baseline
        candidate, and every active candidate of the old generation archived
        (reason ``prompt_changed``), since they were derived from the old
        prompt. ``baseline=None`` never changes an existing session; ``kind``
        and ``config`` only matter on creation.
        """
        validate_session_id(session_id)
        if baseline is not None:
            if not isinstance(baseline, str):
                raise InvalidRequestError("baseline must be a string or None")
            if utf8_len(baseline) > MAX_CANDIDATE_BYTES:
                raise InvalidRequestError(f"baseline is over {MAX_CANDIDATE_BYTES} bytes")
        if kind not in SESSION_KINDS:
            raise InvalidRequestError(f"kind must be one of {SESSION_KINDS}, not {kind!r}")
        if config is not None and not isinstance(config, Mapping):
            raise InvalidRequestError("config must be a mapping")
        cfg = dict(config or {})
        try:
            json_size(cfg, "config", MAX_METADATA_BYTES)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        parse_session_config(cfg, kind)  # known keys type-checked; the error names the key

        def differs(state: SessionStateMachine) -> bool:
            base = state.baseline
            return baseline is not None and (base is None or base.content != baseline)

        with self._locked():
            state = self._load(session_id, self._store)
            if state is not None and not differs(state):
                return state.to_wire()  # the common case: no write at all

            def op(batch: _Batch) -> SessionState:
                st = self._session(batch, session_id)
                if st is None:
                    st = self._create_session(batch, session_id, kind, cfg, baseline)
                elif differs(st):
                    if _is_placeholder(st.baseline):
                        self._fill_baseline(batch, st, baseline)
                    else:
                        self._change_baseline(batch, st, baseline)
                return st.to_wire()

            return self._write(op)

    def _create_session(
        self,
        batch: _Batch,
        session_id: str,
        kind: str,
        cfg: dict[str, Any],
        baseline: str | None,
    ) -> SessionStateMachine:
        st = SessionStateMachine(session_id)
        batch.states[session_id] = st
        batch.emit(st, SESSION_CREATED, {"kind": kind, "config": cfg})
        batch.txn.add_session(session_id, kind, "running", batch.now, cfg)
        self._add_baseline(batch, st, baseline)
        return st

    def _add_baseline(self, batch: _Batch, state: SessionStateMachine, text: str | None) -> str:
        """Add ``text`` as the baseline of the session's current generation."""
        return self._add_candidate(
            batch,
            state,
            content=text,
            payload=None,
            parent_id=None,
            metadata=None,
            is_baseline=True,
        )

    def _fill_baseline(self, batch: _Batch, state: SessionStateMachine, text: str | None) -> None:
        """The session was created before its prompt was known (candidates seeded
        first): the first known prompt becomes the baseline of the same generation,
        so the seeded candidates stay live; the empty placeholder is archived."""
        old = state.baseline_candidate_id
        self._add_baseline(batch, state, text)
        if old is not None:
            batch.emit(
                state, CANDIDATE_ARCHIVED, {"candidate_id": old, "reason": "baseline_filled"}
            )
            batch.txn.set_candidate_status([old], "archived")

    def _change_baseline(self, batch: _Batch, state: SessionStateMachine, text: str | None) -> None:
        old_generation = state.generation
        old_baseline = state.baseline_candidate_id
        stale = [
            c.candidate_id
            for c in state.candidates.values()
            if c.status == "active" and c.generation == old_generation
        ]
        batch.emit(
            state,
            BASELINE_CHANGED,
            {
                "generation": old_generation + 1,
                "previous_generation": old_generation,
                "previous_baseline_id": old_baseline,
            },
        )
        new_id = self._add_baseline(batch, state, text)
        for cid in stale:
            batch.emit(state, CANDIDATE_ARCHIVED, {"candidate_id": cid, "reason": "prompt_changed"})
        batch.txn.set_candidate_status(stale, "archived")
        sid, n = state.session_id, len(stale)
        batch.after_commit.append(
            lambda: logger.warning(
                "session %s: the app's baseline prompt changed; started generation %d with "
                "baseline %s and archived %d candidate(s) of the old prompt",
                sid,
                old_generation + 1,
                new_id,
                n,
            )
        )

    def get_state(self, session_id: str) -> SessionState:
        """The session's state in the wire shape; :class:`NotFoundError` if unknown."""
        with self._locked():
            return self._read(session_id).to_wire()

    def session_state(self, session_id: str) -> SessionStateMachine:
        """A deep copy of the session's in-memory state (for optimizers and tests)."""
        with self._locked():
            return SessionStateMachine.from_snapshot(self._read(session_id).to_snapshot())

    def session_ids(self) -> list[str]:
        """Every session id in the store, oldest first."""
        return self._store.session_ids()

    def set_status(self, session_id: str, status: str) -> SessionState:
        """Set the session status (``running``, ``paused``, ``cancelled``, ``completed``)."""
        validate_session_id(session_id)
        if status not in SESSION_STATUSES:
            raise InvalidRequestError(f"status must be one of {SESSION_STATUSES}, not {status!r}")

        def op(batch: _Batch) -> SessionState:
            state = self._session(batch, session_id)
            if state is None:
                raise NotFoundError(f"unknown session {session_id!r}", code="session_not_found")
            self._set_status(batch, state, status, "requested")
            return state.to_wire()

        return self._write(op)

    def update_config(
        self, session_id: str, config: Mapping[str, Any], *, replace: bool = False
    ) -> SessionState:
        """Merge ``config`` into the session's config (or ``replace`` it); validated
        like :meth:`ensure_session`'s. Takes effect at once (policy and optimizer)."""
        validate_session_id(session_id)
        if not isinstance(config, Mapping):
            raise InvalidRequestError("config must be a mapping")

        def op(batch: _Batch) -> SessionState:
            state = self._session(batch, session_id)
            if state is None:
                raise NotFoundError(f"unknown session {session_id!r}", code="session_not_found")
            merged = dict(config) if replace else {**state.config, **config}
            try:
                json_size(merged, "config", MAX_METADATA_BYTES)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
            parse_session_config(merged, state.kind)
            if merged != state.config:
                batch.emit(state, CONFIG_UPDATED, {"config": merged})
            return state.to_wire()

        return self._write(op)

    def update_optimizer(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        owner: str | None = None,
        lease_seconds: float | None = None,
    ) -> bool:
        """Patch the session's ``optimizer`` state (``None`` values delete keys).

        With ``owner``: refused (``False``) while another owner holds an
        unexpired lease; ``lease_seconds > 0`` takes or renews the lease,
        ``0`` releases it. One optimizer writer per session across processes.
        """
        validate_session_id(session_id)
        body = dict(patch)
        try:
            json_size(body, "optimizer patch", MAX_CANDIDATE_BYTES)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

        def op(batch: _Batch) -> bool:
            state = self._session(batch, session_id)
            if state is None:
                raise NotFoundError(f"unknown session {session_id!r}", code="session_not_found")
            out = dict(body)
            if owner is not None:
                lease = state.optimizer.get("lease")
                if (
                    isinstance(lease, Mapping)
                    and lease.get("owner") != owner
                    and float(lease.get("until") or 0.0) > batch.now
                ):
                    return False
                if lease_seconds is not None:
                    if lease_seconds > 0:
                        out["lease"] = {"owner": owner, "until": batch.now + lease_seconds}
                    elif lease is not None:
                        out["lease"] = None
            if out:
                batch.emit(state, OPTIMIZER, {"patch": out})
            return True

        return self._write(op)

    # -- candidates ---------------------------------------------------------

    def add_candidate(
        self,
        session_id: str,
        content: str | None,
        *,
        payload: Any = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Add an active candidate to the session's current generation; return its id.

        ``content`` is the prompt text; it may be ``None`` when ``payload`` is a
        structured candidate (any JSON value, e.g. a ``transformation`` dict).
        """
        validate_session_id(session_id)
        if content is not None and not isinstance(content, str):
            raise InvalidRequestError("content must be a string or None")
        if content is None and payload is None:
            raise InvalidRequestError("a candidate needs content or a payload")
        if parent_id is not None and not is_id(parent_id):
            raise InvalidRequestError("parent_id must be a candidate id")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidRequestError("metadata must be a mapping")
        meta = dict(metadata) if metadata else None
        try:
            if content is not None and utf8_len(content) > MAX_CANDIDATE_BYTES:
                raise ValueError(f"content is over {MAX_CANDIDATE_BYTES} bytes")
            json_size(payload, "payload", MAX_CANDIDATE_BYTES)
            json_size(meta, "metadata", MAX_METADATA_BYTES)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

        def op(batch: _Batch) -> str:
            state = self._session(batch, session_id)
            if state is None:  # seeding before traffic: the first call fills the baseline
                state = self._create_session(batch, session_id, "mipro_online", {}, None)
            if parent_id is not None and parent_id not in state.candidates:
                raise NotFoundError(
                    f"unknown parent candidate {parent_id!r} in session {session_id!r}",
                    code="candidate_not_found",
                )
            return self._add_candidate(
                batch,
                state,
                content=content,
                payload=payload,
                parent_id=parent_id,
                metadata=meta,
                is_baseline=False,
            )

        return self._write(op)

    def archive_candidate(
        self, session_id: str, candidate_id: str, *, reason: str = "archived"
    ) -> bool:
        """Archive a candidate; return False if it was archived already.

        The current baseline cannot be archived (:class:`InvalidRequestError`);
        an unknown id raises :class:`NotFoundError`.
        """
        validate_session_id(session_id)
        if not isinstance(reason, str) or len(reason) > 200:
            raise InvalidRequestError("reason must be a string of at most 200 characters")

        def op(batch: _Batch) -> bool:
            state = self._session(batch, session_id)
            if state is None:
                raise NotFoundError(f"unknown session {session_id!r}", code="session_not_found")
            cand = state.candidates.get(candidate_id) if isinstance(candidate_id, str) else None
            if cand is None:
                raise NotFoundError(
                    f"unknown candidate {candidate_id!r} in session {session_id!r}",
                    code="candidate_not_found",
                )
            if cand.is_baseline:
                raise InvalidRequestError(
                    "the baseline candidate cannot be archived (change the app's prompt instead)"
                )
            if cand.status == "archived":
                return False
            batch.emit(state, CANDIDATE_ARCHIVED, {"candidate_id": candidate_id, "reason": reason})
            batch.txn.set_candidate_status([candidate_id], "archived")
            return True

        return self._write(op)

    def candidate_session(self, candidate_id: str) -> str | None:
        """The session a candidate belongs to, ``None`` if unknown. A candidate never
        moves, so a known answer is kept in memory (no store read, no store lock)."""
        if not is_id(candidate_id):
            return None
        session_id = self._candidate_sessions.get(candidate_id)
        if session_id is None:  # not seen yet: maybe added by another process or replica
            session_id = self._store.candidate_session(candidate_id)
            if session_id is not None:
                self._remember_candidate(candidate_id, session_id)
        return session_id

    def get_candidate(self, candidate_id: str) -> CandidateItem:
        """One candidate with content, payload and statistics; :class:`NotFoundError` if unknown."""
        if not is_id(candidate_id):
            raise NotFoundError(f"unknown candidate {candidate_id!r}", code="candidate_not_found")
        session_id = self.candidate_session(candidate_id)
        with self._locked():
            state = self._load(session_id, self._store) if session_id else None
            cand = state.candidates.get(candidate_id) if state is not None else None
            if cand is None:
                raise NotFoundError(
                    f"unknown candidate {candidate_id!r}", code="candidate_not_found"
                )
            return cand.to_item()

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
        """A page of candidates in the wire shape ``{items, next_cursor, system_id, ...}``.

        ``status``: ``active``, ``archived`` or ``None``/``all``. ``sort``: comma
        separated ``field[:asc|desc]`` over ``avg_reward``, ``objective`` (the
        mean reward for now), ``rollout_count``, ``created_at``; candidates
        without rewards sort last; creation order breaks ties; default
        ``created_at:asc``. ``include`` containing ``prompt_text`` (or
        ``candidate_content``) adds ``candidate_content``; ``artifact_payload``
        is always present because structured candidates need it. ``cursor`` is
        the opaque ``next_cursor`` of the previous page.
        """
        validate_session_id(session_id)
        if status not in (None, "all", "active", "archived"):
            raise InvalidRequestError(f"status must be active, archived or all, not {status!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidRequestError(f"limit must be an integer from 1 to 1000, not {limit!r}")
        keys = _parse_sort(sort)
        offset = _decode_cursor(cursor)
        if isinstance(include, str):
            include = [part.strip() for part in include.split(",")]
        with_content = "prompt_text" in include or "candidate_content" in include
        with self._locked():
            state = self._read(session_id)
            cands = [
                c
                for c in state.candidates.values()
                if status in (None, "all") or c.status == status
            ]
            cands.sort(key=lambda c: _sort_key(c, keys))
            page = cands[offset : offset + limit]
            items = [c.to_item(content=with_content) for c in page]
            kind = state.kind or "mipro_online"
        more = offset + limit < len(cands)
        return {
            "items": items,
            "next_cursor": _encode_cursor(offset + limit) if more else None,
            "system_id": session_id,
            "job_id": None,
            "algorithm": kind.split("_", 1)[0],
            "mode": "online",
            "sort": ",".join(f"{f}:{'desc' if d else 'asc'}" for f, d in keys),
        }

    # -- rollouts and rewards -------------------------------------------------

    def record_rollouts(self, records: Sequence[RolloutRecord]) -> RolloutsResult:
        """Store rollouts, idempotent on ``rollout_id``, in one transaction.

        ``candidate_id=None`` (the app's own prompt was served) counts for the
        baseline of the session's current generation. Records for unknown
        sessions or candidates, or malformed ones, are skipped and counted
        (one warning per batch): the rest of the batch is stored. A rollout id
        repeated within the batch is accepted once, then a duplicate, exactly as
        if the records had come in separate calls.
        """
        statuses = [ROLLOUT_SKIPPED] * len(records)
        result = RolloutsResult(statuses=statuses)
        parsed: list[ValidRollout] = []
        now = time.time()
        for i, record in enumerate(records):
            try:
                parsed.append(parse_rollout(i, record, now))
            except ValueError as exc:
                result.errors.append((i, str(exc)))
        if parsed:

            def op(batch: _Batch) -> None:
                known = batch.txn.get_rollouts([r.rollout_id for r in parsed])
                rows: list[RolloutRow] = []
                for r in parsed:
                    row = known.get(r.rollout_id)
                    if row is not None:
                        if row.detail_seq is None and row.session_id == r.session_id:
                            # A reward created this rollout first; keep the details now.
                            st = self._session(batch, row.session_id)
                            if st is not None:
                                payload = r.detail  # ours (built by _parse_rollout): no copy
                                payload["candidate_id"] = row.candidate_id
                                payload["supplement"] = True
                                text = _add_members(
                                    r.encoded,
                                    ',"candidate_id":',
                                    encode_json(row.candidate_id),
                                    ',"supplement":true',
                                )
                                ev = batch.emit(st, ROLLOUT, payload, text)
                                batch.txn.set_rollout_detail(r.rollout_id, ev.seq)
                                known[r.rollout_id] = row._replace(detail_seq=ev.seq)
                                result.supplemented += 1
                                statuses[r.index] = ROLLOUT_SUPPLEMENTED
                                continue
                        result.duplicates += 1
                        statuses[r.index] = ROLLOUT_DUPLICATE
                        continue
                    state = self._session(batch, r.session_id)
                    if state is None:
                        result.errors.append((r.index, f"unknown session {r.session_id!r}"))
                        continue
                    cid = r.candidate_id or state.baseline_candidate_id
                    if cid is None or cid not in state.candidates:
                        result.errors.append(
                            (r.index, f"unknown candidate {r.candidate_id!r} in {r.session_id!r}")
                        )
                        continue
                    payload = r.detail
                    payload["candidate_id"] = cid
                    text = _add_members(r.encoded, ',"candidate_id":', encode_json(cid))
                    ev = batch.emit(state, ROLLOUT, payload, text)
                    row = RolloutRow(r.rollout_id, r.session_id, cid, r.created_at, ev.seq, ev.seq)
                    known[r.rollout_id] = row
                    rows.append(row)
                    result.accepted += 1
                    statuses[r.index] = ROLLOUT_ACCEPTED
                if rows:
                    batch.txn.add_rollouts(rows)

            self._write(op)
        result.skipped = len(result.errors)
        if result.errors:
            result.errors.sort()
            logger.warning(
                "skipped %d of %d rollout record(s); first: %s",
                result.skipped,
                len(records),
                result.errors[0][1],
            )
        return result

    def record_rewards(self, records: Sequence[RewardRecord]) -> list[RewardResult]:
        """Store rewards in one transaction; one result per input, in order.

        ``accepted``: stored and counted once for the rollout's candidate.
        ``duplicate``: the ``idempotency_key`` was seen before (no change).
        ``rejected`` (with ``error``): the value is not a finite real number
        (``bool`` and strings are not), the rollout is unknown, feedback is
        over 64 KiB, ... A rejected item never affects the others.

        A reward whose rollout is unknown is still accepted when it names its
        ``session_id`` and ``candidate_id`` (``None`` meaning the baseline):
        its rollout may be recorded later by another process, so the rollout
        is created now. ``stop: true`` marks the session ``completed``.
        """
        results: list[RewardResult | None] = [None] * len(records)
        parsed: list[ValidReward] = []
        now = time.time()
        for i, record in enumerate(records):
            item = parse_reward(i, record, now)
            if isinstance(item, ValidReward):
                parsed.append(item)
            else:
                results[i] = item
        if parsed:

            def op(batch: _Batch) -> None:
                txn = batch.txn
                known = txn.get_rollouts(list({r.rollout_id: None for r in parsed}))
                # Keys are scoped per session (stored as "<session>\x1f<key>"): the session
                # is the rollout's, else the one the reward names. Keys stored before
                # scoping (no separator) still count as seen.
                scoped: dict[int, str] = {}
                for r in parsed:
                    row = known.get(r.rollout_id)
                    sid = row.session_id if row is not None else r.session_id
                    scoped[r.index] = _scoped_key(sid or "", r.key)
                seqs = txn.reward_key_seqs([*scoped.values(), *(r.key for r in parsed)])
                in_batch: dict[str, tuple[str, float]] = {}
                key_rows: list[tuple[str, str, int, str]] = []
                new_rollouts: list[RolloutRow] = []
                for r in parsed:
                    row = known.get(r.rollout_id)
                    skey = _scoped_key(
                        row.session_id if row is not None else r.session_id or "", r.key
                    )
                    if skey != scoped[r.index]:  # its rollout was created earlier in this batch
                        seqs.update(txn.reward_key_seqs([skey]))
                    if row is not None and r.session_id not in (None, row.session_id):
                        results[r.index] = rejected(
                            r.key,
                            f"rollout {r.rollout_id!r} belongs to another session, "
                            f"not {r.session_id!r}",
                        )
                        continue
                    if skey in in_batch or skey in seqs or r.key in seqs:
                        if skey in in_batch:
                            first: tuple[str | None, float] | None = in_batch[skey]
                        elif skey in seqs:
                            first = self._stored_reward(txn, skey, seqs[skey])
                        else:
                            first = None  # stored before keys were scoped: not compared
                        if first is not None and first != (r.rollout_id, r.value):
                            results[r.index] = rejected(
                                r.key,
                                f"{IDEMPOTENCY_CONFLICT}: this idempotency_key was used for "
                                f"another reward (rollout {first[0]!r}, value {first[1]!r}); "
                                "a key names one reward",
                            )
                        else:
                            results[r.index] = {"idempotency_key": r.key, "status": "duplicate"}
                        continue
                    state = self._session(batch, row.session_id) if row is not None else None
                    if row is None:
                        row, state, error = self._implicit_rollout(batch, r)
                        if row is None or state is None:
                            results[r.index] = rejected(r.key, error)
                            continue
                        known[r.rollout_id] = row
                        new_rollouts.append(row)
                    elif state is None:  # cannot happen with a consistent store
                        results[r.index] = rejected(r.key, f"unknown session {row.session_id!r}")
                        continue
                    payload: dict[str, Any] = {
                        "idempotency_key": r.key,
                        "rollout_id": r.rollout_id,
                        "candidate_id": row.candidate_id,
                        "value": r.value,
                        "created_at": r.created_at,
                    }
                    if r.feedback is not None:
                        payload["feedback"] = r.feedback
                    if r.metadata is not None:
                        payload["metadata"] = r.metadata
                    if r.stop:
                        payload["stop"] = True
                    ev = batch.emit(state, REWARD, payload)
                    skey = _scoped_key(state.session_id, r.key)
                    key_rows.append((skey, state.session_id, ev.seq, r.rollout_id))
                    in_batch[skey] = (r.rollout_id, r.value)
                    if r.stop:
                        self._set_status(batch, state, "completed", "stop")
                    results[r.index] = {"idempotency_key": r.key, "status": "accepted"}
                if new_rollouts:
                    txn.add_rollouts(new_rollouts)
                if key_rows:
                    txn.add_reward_keys(key_rows)

            self._write(op)
        return results  # type: ignore[return-value]  # every slot is filled above

    @staticmethod
    def _stored_reward(txn: WriteTxn, skey: str, seq: int) -> tuple[str | None, float] | None:
        """``(rollout_id, value)`` of the reward stored under ``skey`` at ``seq``
        (``rollout_id`` as the event has it: ``None`` if it has none)."""
        session_id = skey.partition(_KEY_SEP)[0]
        for ev in txn.read_events(session_id, seq - 1, 1):
            if ev.seq == seq and ev.type == REWARD:
                return ev.payload.get("rollout_id"), float(ev.payload.get("value", 0.0))
        return None

    def _implicit_rollout(
        self, batch: _Batch, r: ValidReward
    ) -> tuple[RolloutRow | None, SessionStateMachine | None, str]:
        unknown = (
            f"unknown rollout_id {r.rollout_id!r} (a reward may precede its rollout only when "
            "it names the session_id and candidate_id)"
        )
        if r.session_id is None:
            return None, None, unknown
        state = self._session(batch, r.session_id)
        if state is None:
            return None, None, f"{unknown}; unknown session {r.session_id!r}"
        cid = r.candidate_id or state.baseline_candidate_id
        if cid is None or cid not in state.candidates:
            return None, None, f"{unknown}; unknown candidate {r.candidate_id!r}"
        ev = batch.emit(
            state,
            ROLLOUT,
            {
                "rollout_id": r.rollout_id,
                "candidate_id": cid,
                "served_candidate_id": r.candidate_id,
                "created_at": r.created_at,
                "implicit": True,
            },
        )
        return (
            RolloutRow(r.rollout_id, state.session_id, cid, r.created_at, ev.seq, None),
            state,
            "",
        )

    # -- history (for optimizers and reflection) --------------------------------

    def iter_events(self, session_id: str, after_seq: int = 0) -> Iterator[Event]:
        """The session's events with ``seq > after_seq``, oldest first, read in pages."""
        validate_session_id(session_id)  # now, not at the first next()
        return self._event_pages(session_id, after_seq)

    def _event_pages(self, session_id: str, after_seq: int) -> Iterator[Event]:
        last = after_seq
        while True:
            page = self._store.read_events(session_id, last, 1000)
            yield from page
            if len(page) < 1000:
                return
            last = page[-1].seq

    def rollout_records(self, session_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The session's latest rollouts, newest first, each with its rewards.

        Each item: ``rollout_id, candidate_id, served_candidate_id, created_at,
        key, bucket, model, metadata, input, output, implicit`` and ``rewards``
        (``idempotency_key, value, feedback, metadata, created_at``).
        """
        validate_session_id(session_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidRequestError("limit must be an integer from 1 to 10000")
        rows = self._store.recent_rollouts(session_id, limit)
        details = self._store.events_at(
            r.detail_seq if r.detail_seq is not None else r.seq for r in rows
        )
        rewards: dict[str, list[dict[str, Any]]] = {}
        for ev in self._store.reward_events_for([r.rollout_id for r in rows]):
            p = ev.payload
            rewards.setdefault(p["rollout_id"], []).append(
                {
                    "idempotency_key": p["idempotency_key"],
                    "value": p["value"],
                    "feedback": p.get("feedback"),
                    "metadata": p.get("metadata"),
                    "created_at": p.get("created_at", ev.created_at),
                }
            )
        out: list[dict[str, Any]] = []
        for r in rows:
            detail = details.get(r.detail_seq if r.detail_seq is not None else r.seq)
            p = detail.payload if detail is not None else {}
            out.append(
                {
                    "rollout_id": r.rollout_id,
                    "candidate_id": r.candidate_id,
                    "served_candidate_id": p.get("served_candidate_id"),
                    "created_at": r.created_at,
                    "key": p.get("key"),
                    "bucket": p.get("bucket"),
                    "model": p.get("model"),
                    "metadata": p.get("metadata"),
                    "input": p.get("input"),
                    "output": p.get("output"),
                    "implicit": r.detail_seq is None,
                    "rewards": rewards.get(r.rollout_id, []),
                }
            )
        return out

    def close(self) -> None:
        """Stop the optimizer runner, close the store and drop the in-memory states."""
        if self._optimizer is not None:
            self._optimizer.stop()
        with self._locked():
            self._states.clear()
            self._snap_at.clear()
            self._candidate_sessions.clear()
            self._store.close()


# -- parsing helpers ---------------------------------------------------------


_KEY_SEP = "\x1f"
IDEMPOTENCY_CONFLICT = "idempotency_key conflict"
"""The start of the error of a reward whose key names another reward (answered 409)."""


def _scoped_key(session_id: str, key: str) -> str:
    return f"{session_id}{_KEY_SEP}{key}"


def _add_members(encoded: str, *members: str) -> str:
    """``encoded`` (a non-empty JSON object from :func:`encode_json`) with ``members``
    (``',"key":'`` and encoded values, in order) appended before its ``}``.

    The same text as encoding the dict with those keys added last, without
    encoding the (possibly large: a trace) rest of it again.
    """
    return encoded[:-1] + "".join(members) + "}"


def _parse_sort(sort: str | None) -> list[tuple[str, bool]]:
    """``"avg_reward:desc,created_at"`` -> ``[("avg_reward", True), ("created_at", False)]``."""
    if sort is not None and not isinstance(sort, str):
        raise InvalidRequestError("sort must be a string")
    if sort is None or not sort.strip():
        sort = DEFAULT_SORT
    keys: list[tuple[str, bool]] = []
    for part in sort.split(","):
        name, _, direction = part.strip().partition(":")
        name, direction = name.strip(), (direction.strip().lower() or "desc")
        if name not in SORT_FIELDS or direction not in ("asc", "desc"):
            raise InvalidRequestError(
                f"invalid sort {part.strip()!r}: use field[:asc|desc] with field one of {SORT_FIELDS}"
            )
        keys.append((name, direction == "desc"))
    return keys


def _sort_key(cand: CandidateState, keys: list[tuple[str, bool]]) -> tuple[Any, ...]:
    out: list[Any] = []
    for name, desc in keys:
        if name in ("avg_reward", "objective"):
            value: float | None = cand.avg_reward
        elif name == "rollout_count":
            value = cand.rollout_count
        else:
            value = cand.created_at
        if value is None:
            out.append((1, 0.0))  # no rewards yet: last in either direction
        else:
            out.append((0, -value if desc else value))
    out.append(cand.seq)
    return tuple(out)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = data["o"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InvalidRequestError("invalid cursor") from None
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidRequestError("invalid cursor")
    return offset
