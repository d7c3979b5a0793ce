"""Several server replicas on one PostgreSQL database: who owns which session, failover,
and the tail of the shared log.

::

    engine, replicas = open_engine("postgresql://synth@db/synth", optimizer=True)
    replicas.start()          # (``synth-middleware serve --db postgresql://...`` does this)
    ...
    replicas.stop()           # hands its sessions over at once
    engine.close()

What every replica does, whoever owns the session:

* accepts every write (rollouts, rewards, candidates, status, config) by
  appending to the shared event log; idempotency holds across replicas
  because the ``reward_keys`` / ``rollouts`` primary keys are checked inside
  the (database-wide serialised) write transaction;
* serves reads from its own in-memory state, caught up from the log before
  each read, or at most ``max_staleness`` old (the store's setting), and
  never older than its own last write;
* tails the log (one indexed query every ``poll_interval``): sessions changed
  by other replicas wake this replica's change feed (SSE, long polls, the
  proxy's candidate cache) and, for sessions it owns, its optimizer.

What only the owner does: the online optimizer (pruning, best tracking,
proposal rounds), so proposals run once per trigger across replicas. The
optimizer runner steps a session only inside :meth:`ReplicaCoordinator.owner_work`,
which yields ``False`` unless this replica holds the session's lease, and
*fences* every write it makes: the store re-checks the lease (owner and
epoch, unexpired by the database clock) inside the write transaction, so a
replica that lost its lease (paused by the OS, cut off from the database)
cannot write owner-only events afterwards. Nothing else needs forwarding:
non-owners append, the owner reads the log.

The lease (table ``session_leases``: owner, epoch, expiry):

* times are the database's clock (``clock_timestamp()``), so replica clocks
  may disagree; each replica also keeps a local deadline (monotonic clock,
  taken *before* the renewing statement was sent, so it ends no later than
  the database's expiry) and stops owner work when it passes, even if the
  database is unreachable;
* every ``heartbeat_interval`` the owner renews all its leases in one
  statement, re-registers in ``replicas`` and claims sessions whose lease is
  missing or expired (a claim bumps the epoch; claims race safely: the
  conditional upsert lets exactly one replica win);
* placement: rendezvous hashing of the session id over live replicas
  (heartbeat younger than ``lease_seconds``); the preferred replica claims at
  once, others only after ``claim_grace`` (so sessions spread out instead of
  going to whoever polls first), and an owner hands a few sessions per
  heartbeat to their preferred replica when one joins (never one whose
  optimizer step is running);
* a replica that stops cleanly releases its leases (expiry set to now), so a
  rolling restart moves sessions within one heartbeat; one killed with
  SIGKILL loses them when they expire: takeover after at most
  ``lease_seconds + heartbeat_interval`` (+ ``claim_grace`` when the
  preferred survivor is slow). The new owner rebuilds the session (snapshot
  + log, if it had not loaded it), clears the dead owner's optimizer round
  lease in the log, and wakes its optimizer. Rewards and reads never wait
  for any of this: they do not need an owner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from synth_middleware.engine._optimizer_options import OptimizerOptions
from synth_middleware.engine.engine import Engine
from synth_middleware.engine.factory import open_store
from synth_middleware.engine.state import (
    BASELINE_CHANGED,
    CANDIDATE_ADDED,
    CANDIDATE_ARCHIVED,
    CONFIG_UPDATED,
    REWARD,
    SESSION_STATUS,
)
from synth_middleware.wire import encode_json

if TYPE_CHECKING:
    from synth_middleware.engine.store_pg import PostgresStore

__all__ = ["ReplicaCoordinator", "ReplicaOptions", "Takeover", "open_engine"]

logger = logging.getLogger("synth_middleware.replicas")

# Event types after which the owner's optimizer looks at a session again (as the engine's).
_WAKE_TYPES = sorted(
    {REWARD, CANDIDATE_ADDED, CANDIDATE_ARCHIVED, BASELINE_CHANGED, SESSION_STATUS, CONFIG_UPDATED}
)
_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
_TAKEOVERS_KEPT = 100


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """Timing of leases and of the log tail.

    ``lease_seconds``: how long a lease lasts without renewal (takeover time
    after a crash is about this). ``heartbeat_interval`` (default a sixth of
    the lease): renewal and claim period. ``poll_interval``: period of the log
    tail. ``claim_grace`` (default two heartbeats): how long a non-preferred
    replica leaves a free session to its preferred one. ``owner``: whether this
    replica may own sessions at all (a replica without an optimizer must not).
    ``rebalance``: sessions handed to a newly joined preferred replica per
    heartbeat (0: never).
    """

    lease_seconds: float = 3.0
    heartbeat_interval: float | None = None
    poll_interval: float = 0.05
    claim_grace: float | None = None
    owner: bool = True
    rebalance: int = 4

    @property
    def heartbeat(self) -> float:
        """The effective heartbeat interval."""
        return self.heartbeat_interval or self.lease_seconds / 6

    @property
    def grace(self) -> float:
        """The effective claim grace."""
        return self.claim_grace if self.claim_grace is not None else 2 * self.heartbeat


@dataclass(frozen=True, slots=True)
class Takeover:
    """A session this replica claimed from another (dead or departed) owner."""

    session_id: str
    previous_owner: str | None
    epoch: int
    lease_expired_at: float | None  # database clock, epoch seconds
    claimed_at: float  # database clock, epoch seconds
    rebuild_ms: float  # loading the session (snapshot + log) on this replica


@dataclass(slots=True)
class _Lease:
    epoch: int
    deadline: float  # time.monotonic(): stop owner work after this


def _rank(session_id: str, replica_id: str) -> bytes:
    return hashlib.blake2b(f"{session_id}\x1f{replica_id}".encode(), digest_size=8).digest()


def preferred_replica(session_id: str, replicas: list[str]) -> str | None:
    """Rendezvous hashing: the replica that should own ``session_id`` among ``replicas``."""
    return max(replicas, key=lambda r: _rank(session_id, r)) if replicas else None


class ReplicaCoordinator:
    """Leases, failover and the log tail for one replica (one engine) on a PostgreSQL store.

    Thread-safe; runs one daemon thread between :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        store: PostgresStore,
        *,
        replica_id: str | None = None,
        options: ReplicaOptions | None = None,
    ) -> None:
        self.store = store
        self.options = opts = options or ReplicaOptions()
        if opts.lease_seconds <= 0 or opts.heartbeat >= opts.lease_seconds:
            raise ValueError("need 0 < heartbeat_interval < lease_seconds")
        self.replica_id = (
            replica_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        )
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._owned: dict[str, _Lease] = {}
        self._busy: dict[str, int] = {}
        self._listeners: list[Callable[[set[str]], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tail_seq: int | None = None
        self._heartbeats = 0
        self._errors = 0
        self._released = False
        self.takeovers: list[Takeover] = []

    # -- wiring ----------------------------------------------------------------

    def bind(self, engine: Engine) -> None:
        """The engine whose sessions this replica serves (and whose optimizer it gates)."""
        self._engine = engine

    def add_change_listener(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(session_ids)`` from the tail thread when the log shows changes
        (other replicas' writes included); it must be quick."""
        self._listeners.append(listener)

    def gate_options(self, optimizer: bool | OptimizerOptions) -> OptimizerOptions | None:
        """``optimizer`` (as for :class:`~synth_middleware.engine.Engine`) gated on ownership."""
        if not optimizer:
            return None
        opts = optimizer if isinstance(optimizer, OptimizerOptions) else OptimizerOptions()
        return replace(opts, session_gate=self.owner_work)

    # -- ownership -------------------------------------------------------------

    def owns(self, session_id: str) -> bool:
        """Whether this replica holds the session's lease (and its local deadline has not passed)."""
        lease = self._owned.get(session_id)
        return lease is not None and time.monotonic() < lease.deadline

    def owned(self) -> dict[str, int]:
        """``{session_id: epoch}`` of the sessions this replica owns now."""
        now = time.monotonic()
        with self._lock:
            return {s: lease.epoch for s, lease in self._owned.items() if now < lease.deadline}

    @contextmanager
    def owner_work(self, session_id: str) -> Iterator[bool]:
        """Yield whether this replica may do the session's owner-only work now; while it
        does, every write transaction of this thread is fenced by the lease."""
        from synth_middleware.engine.store_pg import fenced

        with self._lock:
            lease = self._owned.get(session_id)
            ok = lease is not None and time.monotonic() < lease.deadline
            if ok:
                self._busy[session_id] = self._busy.get(session_id, 0) + 1
        if not ok or lease is None:
            yield False
            return
        try:
            with fenced(session_id, self.replica_id, lease.epoch):
                yield True
        finally:
            with self._lock:
                left = self._busy.get(session_id, 1) - 1
                if left:
                    self._busy[session_id] = left
                else:
                    self._busy.pop(session_id, None)

    def status(self) -> dict[str, Any]:
        """What this replica is doing (for health checks, tests and benchmarks)."""
        return {
            "replica_id": self.replica_id,
            "owner": self.options.owner,
            "owned": sorted(self.owned()),
            "takeovers": [asdict(t) for t in self.takeovers],
            "tail_seq": self._tail_seq,
            "heartbeats": self._heartbeats,
        }

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> ReplicaCoordinator:
        """Start the tail and heartbeat thread (idempotent); the first heartbeat runs before
        this returns, so a lone replica owns its sessions at once."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._released = False
        with self.store.connection() as conn:
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            self._tail_seq = int(row[0]) if row else 0
        if self.options.owner:
            try:
                self._heartbeat()
            except Exception as exc:  # the thread retries
                logger.warning("replica %s: first heartbeat failed: %r", self.replica_id, exc)
        self._thread = threading.Thread(target=self._run, name="synth-replicas", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop the thread; with ``release``, stop this engine's optimizer and hand every
        owned session over at once (other replicas claim them at their next heartbeat)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)
        self._thread = None
        if not release or not self.options.owner or self._released:
            return
        self._released = True
        engine = self._engine
        if engine is not None and engine.optimizer is not None:
            engine.optimizer.stop()
        with self._lock:
            self._owned.clear()
        try:
            with self.store.connection() as conn:
                conn.execute(
                    f"UPDATE session_leases SET expires_at = {_DB_NOW} WHERE owner = %s",
                    (self.replica_id,),
                )
                conn.execute("DELETE FROM replicas WHERE replica_id = %s", (self.replica_id,))
        except Exception as exc:  # they expire by themselves
            logger.warning("replica %s: could not release its leases: %r", self.replica_id, exc)

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        opts = self.options
        next_beat = time.monotonic() + opts.heartbeat
        while not self._stop.is_set():
            try:
                if opts.owner and time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + opts.heartbeat
                    self._heartbeat()
                self._tail()
            except Exception as exc:  # database trouble: leases lapse locally, retry
                self._errors += 1
                if self._errors in (1, 10, 100) or self._errors % 1000 == 0:
                    logger.warning(
                        "replica %s: %r (%d failures in a row)", self.replica_id, exc, self._errors
                    )
            else:
                if self._errors:
                    logger.warning(
                        "replica %s: database reachable again after %d failures",
                        self.replica_id,
                        self._errors,
                    )
                    self._errors = 0
            self._stop.wait(opts.poll_interval)

    def _tail(self) -> None:
        """Wake listeners (and the optimizer, for owned sessions) for sessions that changed."""
        if self._tail_seq is None:
            return
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT session_id, MAX(seq), bool_or(type = ANY(%s)) FROM events"
                " WHERE seq > %s GROUP BY session_id",
                (_WAKE_TYPES, self._tail_seq),
            ).fetchall()
        if not rows:
            return
        self._tail_seq = max(self._tail_seq, *(int(r[1]) for r in rows))
        self.store.invalidate({r[0]: int(r[1]) for r in rows})
        changed = {r[0] for r in rows}
        for listener in self._listeners:
            try:
                listener(changed)
            except Exception:
                logger.exception("replica %s: a change listener failed", self.replica_id)
        engine = self._engine
        if engine is not None and engine.optimizer is not None:
            wake = [r[0] for r in rows if r[2] and self.owns(r[0])]
            if wake:
                engine.optimizer.notify(wake)

    def _heartbeat(self) -> None:
        """Register, renew owned leases, claim free ones, hand some to their preferred owner."""
        opts = self.options
        me, ttl = self.replica_id, opts.lease_seconds
        started = time.monotonic()
        deadline = started + ttl * 0.95  # the database's expiry is at least started + ttl
        self._heartbeats += 1
        with self.store.connection() as conn:
            row = conn.execute(
                "INSERT INTO replicas (replica_id, started_at, heartbeat_at, info)"
                f" VALUES (%s, {_DB_NOW}, {_DB_NOW}, %s) ON CONFLICT (replica_id)"
                " DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at RETURNING heartbeat_at",
                (me, encode_json({"pid": os.getpid(), "host": socket.gethostname()})),
            ).fetchone()
            now = float(row[0]) if row else time.time()
            renewed = dict(
                conn.execute(
                    "UPDATE session_leases SET expires_at = %s WHERE owner = %s"
                    " AND expires_at > %s RETURNING session_id, epoch",
                    (now + ttl, me, now),
                ).fetchall()
            )
            live = [
                r[0]
                for r in conn.execute(
                    "SELECT replica_id FROM replicas WHERE heartbeat_at > %s", (now - ttl,)
                )
            ]
            if me not in live:
                live.append(me)
            free = conn.execute(
                "SELECT s.session_id, s.created_at, l.owner, l.expires_at"
                " FROM sessions s LEFT JOIN session_leases l ON l.session_id = s.session_id"
                " WHERE l.session_id IS NULL OR l.expires_at <= %s",
                (now,),
            ).fetchall()
            wanted: dict[str, tuple[str | None, float | None]] = {}
            for sid, created_at, owner, expires_at in free:
                since = float(expires_at) if expires_at is not None else float(created_at)
                if preferred_replica(sid, live) == me or now - since >= opts.grace:
                    wanted[sid] = (owner, float(expires_at) if expires_at is not None else None)
            claimed: dict[str, int] = {}
            if wanted:
                claimed = dict(
                    conn.execute(
                        "INSERT INTO session_leases (session_id, owner, epoch, expires_at)"
                        " SELECT sid, %s, 1, %s FROM json_array_elements_text(%s::json) AS sid"
                        " ON CONFLICT (session_id) DO UPDATE SET owner = EXCLUDED.owner,"
                        " epoch = session_leases.epoch + 1, expires_at = EXCLUDED.expires_at"
                        " WHERE session_leases.expires_at <= %s RETURNING session_id, epoch",
                        (me, now + ttl, json.dumps(sorted(wanted)), now),
                    ).fetchall()
                )
            handed = self._hand_over(conn, renewed, live)
            if self._heartbeats % 100 == 0:  # forget replicas gone for ten minutes
                conn.execute("DELETE FROM replicas WHERE heartbeat_at < %s", (now - 600,))
        with self._lock:
            lost = [s for s in self._owned if s not in renewed and s not in claimed]
            self._owned = {
                s: _Lease(e, deadline) for s, e in {**renewed, **claimed}.items() if s not in handed
            }
        for sid in lost:
            logger.warning("replica %s: lost the lease of session %s", me, sid)
        for sid, epoch in claimed.items():
            previous, expired_at = wanted[sid]
            self._took_over(sid, epoch, previous, expired_at, now)

    def _hand_over(self, conn: Any, renewed: Mapping[str, int], live: list[str]) -> set[str]:
        """Release up to ``rebalance`` idle sessions whose preferred live replica is another."""
        if not self.options.rebalance or len(live) < 2:
            return set()
        with self._lock:
            give = [
                s
                for s in sorted(renewed)
                if s not in self._busy and preferred_replica(s, live) != self.replica_id
            ][: self.options.rebalance]
            for sid in give:  # stop owner work first, then release
                self._owned.pop(sid, None)
        if give:
            conn.execute(  # expired as of now: the preferred replica claims it at once
                f"UPDATE session_leases SET expires_at = {_DB_NOW} WHERE owner = %s"
                " AND session_id = ANY(ARRAY(SELECT json_array_elements_text(%s::json)))",
                (self.replica_id, json.dumps(give)),
            )
        return set(give)

    def _took_over(
        self, sid: str, epoch: int, previous: str | None, expired_at: float | None, now: float
    ) -> None:
        """A claimed session: rebuild it here, clear a dead owner's round lease, wake the
        optimizer."""
        engine = self._engine
        if engine is None:
            return
        if previous is None or previous == self.replica_id:  # a new session, or ours again
            if engine.optimizer is not None:
                engine.optimizer.notify([sid])
            return
        t0 = time.perf_counter()
        self.store.invalidate({sid: 2**62})  # read the log now, whatever the staleness
        try:
            state = engine.session_state(sid)  # snapshot + log if this replica had not loaded it
        except Exception as exc:
            logger.warning("replica %s: loading session %s failed: %r", self.replica_id, sid, exc)
            return
        rebuild_ms = (time.perf_counter() - t0) * 1e3
        self.takeovers = [
            *self.takeovers[-(_TAKEOVERS_KEPT - 1) :],
            Takeover(sid, previous, epoch, expired_at, now, rebuild_ms),
        ]
        logger.info(
            "replica %s: took session %s over from %s (epoch %d, rebuilt in %.1f ms)",
            self.replica_id,
            sid,
            previous,
            epoch,
            rebuild_ms,
        )
        runner = engine.optimizer
        if runner is None:
            return
        lease = state.optimizer.get("lease")
        if isinstance(lease, Mapping) and lease.get("owner") != runner.owner:
            # The previous owner's optimizer round died with it; its lease in the log
            # would block rounds here until it expires. Fenced: only while we own it.
            try:
                with self.owner_work(sid) as mine:
                    if mine:
                        engine.update_optimizer(sid, {"lease": None})
            except Exception as exc:
                logger.warning(
                    "replica %s: clearing %s's round lease: %r", self.replica_id, sid, exc
                )
        runner.notify([sid])


def open_engine(
    target: str | os.PathLike[str],
    *,
    optimizer: bool | OptimizerOptions = False,
    max_staleness: float = 0.0,
    replica_options: ReplicaOptions | None = None,
    snapshot_every: int = 1000,
) -> tuple[Engine, ReplicaCoordinator | None]:
    """An engine on ``target`` (SQLite path or PostgreSQL URL) and, for PostgreSQL, its
    (not yet started) :class:`ReplicaCoordinator`, with the optimizer gated on ownership.

    ``max_staleness`` (seconds) applies to PostgreSQL only. A replica without the
    optimizer never owns sessions (``replica_options.owner`` is forced off)."""
    from synth_middleware.engine.factory import is_postgres_url

    if not is_postgres_url(target):
        return Engine(open_store(target), optimizer=optimizer, snapshot_every=snapshot_every), None
    store: Any = open_store(target, max_staleness=max_staleness)
    opts = replica_options or ReplicaOptions()
    if not optimizer:
        opts = replace(opts, owner=False)
    coordinator = ReplicaCoordinator(store, options=opts)
    engine = Engine(
        store, optimizer=coordinator.gate_options(optimizer), snapshot_every=snapshot_every
    )
    coordinator.bind(engine)
    return engine, coordinator
