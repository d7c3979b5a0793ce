"""Persistence for the engine: an append-only event log plus lookup tables.

The engine talks to storage only through :class:`Store` and :class:`WriteTxn`,
so :class:`~synth_middleware.engine.store_pg.PostgresStore` can replace
:class:`SqliteStore` (``open_store`` picks one from a path or URL). The log is
the source of truth; the side tables (sessions, candidates, rollouts, reward
keys, snapshots) are written in the same transaction and only serve lookups
and idempotency.

A write transaction must exclude every other writer on the same database
(SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level advisory lock),
because readers tail the log with ``seq > last_seen`` and must never see a
lower seq commit after a higher one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from synth_middleware import _fork
from synth_middleware.engine.schema import latest_version, pending, statements
from synth_middleware.engine.state import Event
from synth_middleware.errors import BackendError
from synth_middleware.wire.validate import encode_json  # the one strict JSON; re-exported

SCHEMA_VERSION = latest_version("sqlite")  # PRAGMA user_version; tables: engine/schema.py

# Connections inherited across fork() must never be used or closed in the
# child (SQLite's rule); we drop them here so the GC never closes them either.
_ABANDONED: list[sqlite3.Connection] = []

_decode = json.loads


class StorageError(BackendError):
    """The database failed (locked past the busy timeout, disk full, ...). Retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, code="storage_error")


class RolloutRow(NamedTuple):
    """A row of the ``rollouts`` lookup table.

    ``seq`` is the event that created the rollout; ``detail_seq`` the event
    holding its details (``None`` for a rollout created implicitly by a reward
    whose rollout record has not arrived yet).
    """

    rollout_id: str
    session_id: str
    candidate_id: str | None
    created_at: float
    seq: int
    detail_seq: int | None


class CandidateRow(NamedTuple):
    """A row of the ``candidates`` lookup table."""

    candidate_id: str
    session_id: str
    generation: int
    created_as_baseline: bool
    parent_id: str | None
    status: str
    created_at: float
    seq: int


class Store(ABC):
    """Storage the engine needs. Implementations must be safe to share between threads."""

    @abstractmethod
    def read_events(self, session_id: str, after_seq: int, limit: int | None = None) -> list[Event]:
        """Events of one session with ``seq > after_seq``, in seq order."""

    @abstractmethod
    def load_snapshot(self, session_id: str) -> tuple[int, dict[str, Any]] | None:
        """The latest ``(seq, state)`` snapshot of a session, if any."""

    @abstractmethod
    def candidate_session(self, candidate_id: str) -> str | None:
        """The session a candidate belongs to, if the candidate exists."""

    @abstractmethod
    def session_ids(self) -> list[str]:
        """All session ids, oldest first."""

    @abstractmethod
    def recent_rollouts(self, session_id: str, limit: int) -> list[RolloutRow]:
        """The session's latest rollouts, newest first."""

    @abstractmethod
    def events_at(self, seqs: Iterable[int]) -> dict[int, Event]:
        """Events by seq."""

    @abstractmethod
    def reward_events_for(self, rollout_ids: Sequence[str]) -> list[Event]:
        """Reward events of the given rollouts, in seq order."""

    @abstractmethod
    def write(self) -> Any:
        """A context manager yielding a :class:`WriteTxn`; commits on success, rolls back
        on error. Excludes every other writer for its duration."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


class WriteTxn(ABC):
    """One write transaction. Reads inside it see everything committed before it began."""

    @abstractmethod
    def read_events(self, session_id: str, after_seq: int, limit: int | None = None) -> list[Event]:
        """As :meth:`Store.read_events`, inside the transaction."""

    @abstractmethod
    def load_snapshot(self, session_id: str) -> tuple[int, dict[str, Any]] | None:
        """As :meth:`Store.load_snapshot`, inside the transaction."""

    @abstractmethod
    def next_seq(self) -> int:
        """The first unused seq; the caller numbers its events from it."""

    @abstractmethod
    def append_events(self, events: Sequence[Event], payloads: Sequence[str] | None = None) -> None:
        """Append events (already numbered from :meth:`next_seq`).

        ``payloads``, when given, holds each event's payload already encoded with
        :func:`encode_json` (the engine encodes each payload once, a rollout's while
        it checks its size, so the store must not encode it again); ``None``
        encodes them here. The stored text is the same either way.
        """

    @abstractmethod
    def add_session(
        self, session_id: str, kind: str, status: str, created_at: float, config: Any
    ) -> None:
        """Insert a ``sessions`` row."""

    @abstractmethod
    def set_session_status(self, session_id: str, status: str) -> None:
        """Mirror a status change into ``sessions``."""

    @abstractmethod
    def add_candidate(self, row: CandidateRow) -> None:
        """Insert a ``candidates`` row."""

    @abstractmethod
    def set_candidate_status(self, candidate_ids: Sequence[str], status: str) -> None:
        """Mirror a status change into ``candidates``."""

    @abstractmethod
    def candidate_exists(self, candidate_id: str) -> bool:
        """Whether any session has a candidate with this id."""

    @abstractmethod
    def existing_reward_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are already recorded."""

    def reward_key_seqs(self, keys: Sequence[str]) -> dict[str, int]:
        """The event seq of each of ``keys`` already recorded (to compare a replay's body)."""
        raise NotImplementedError

    @abstractmethod
    def get_rollouts(self, rollout_ids: Sequence[str]) -> dict[str, RolloutRow]:
        """Known rollouts among ``rollout_ids``."""

    @abstractmethod
    def add_rollouts(self, rows: Sequence[RolloutRow]) -> None:
        """Insert ``rollouts`` rows."""

    @abstractmethod
    def set_rollout_detail(self, rollout_id: str, detail_seq: int) -> None:
        """Point an implicit rollout at the event carrying its details."""

    @abstractmethod
    def add_reward_keys(self, rows: Sequence[tuple[str, str, int, str]]) -> None:
        """Insert ``(idempotency_key, session_id, seq, rollout_id)`` rows."""

    @abstractmethod
    def save_snapshot(self, session_id: str, seq: int, state: dict[str, Any]) -> None:
        """Store a snapshot unless a newer one exists."""


# SQLite's default limit on host parameters is 32766 since 3.32; stay well below.
_CHUNK = 500


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _event(session_id: str, seq: int, type_: str, payload: str, created_at: float) -> Event:
    return Event(seq, session_id, type_, _decode(payload), created_at)


class _SqliteReads:
    """Queries shared by the store (autocommit reads) and its write transactions."""

    _conn: sqlite3.Connection

    def read_events(self, session_id: str, after_seq: int, limit: int | None = None) -> list[Event]:
        sql = (
            "SELECT seq, type, payload, created_at FROM events"
            " WHERE session_id = ? AND seq > ? ORDER BY seq"
        )
        args: tuple[Any, ...] = (session_id, after_seq)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        rows = self._conn.execute(sql, args).fetchall()
        return [Event(s, session_id, t, _decode(p), c) for s, t, p, c in rows]

    def load_snapshot(self, session_id: str) -> tuple[int, dict[str, Any]] | None:
        row = self._conn.execute(
            "SELECT seq, state FROM snapshots WHERE session_id = ?", (session_id,)
        ).fetchone()
        return (row[0], _decode(row[1])) if row else None


class SqliteWriteTxn(_SqliteReads, WriteTxn):
    """A ``BEGIN IMMEDIATE`` transaction on a :class:`SqliteStore` connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def next_seq(self) -> int:
        # sqlite_sequence holds the largest seq ever used, even if rows were deleted.
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return (row[0] if row else 0) + 1

    def append_events(self, events: Sequence[Event], payloads: Sequence[str] | None = None) -> None:
        if payloads is None:
            payloads = [encode_json(e.payload) for e in events]
        self._conn.executemany(
            "INSERT INTO events (seq, session_id, type, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                (e.seq, e.session_id, e.type, p, e.created_at)
                for e, p in zip(events, payloads, strict=True)
            ],
        )

    def add_session(
        self, session_id: str, kind: str, status: str, created_at: float, config: Any
    ) -> None:
        self._conn.execute(
            "INSERT INTO sessions (session_id, kind, status, created_at, config)"
            " VALUES (?, ?, ?, ?, ?)",
            (session_id, kind, status, created_at, encode_json(config)),
        )

    def set_session_status(self, session_id: str, status: str) -> None:
        self._conn.execute(
            "UPDATE sessions SET status = ? WHERE session_id = ?", (status, session_id)
        )

    def add_candidate(self, row: CandidateRow) -> None:
        self._conn.execute(
            "INSERT INTO candidates (candidate_id, session_id, generation, created_as_baseline,"
            " parent_id, status, created_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.candidate_id,
                row.session_id,
                row.generation,
                int(row.created_as_baseline),
                row.parent_id,
                row.status,
                row.created_at,
                row.seq,
            ),
        )

    def set_candidate_status(self, candidate_ids: Sequence[str], status: str) -> None:
        self._conn.executemany(
            "UPDATE candidates SET status = ? WHERE candidate_id = ?",
            [(status, cid) for cid in candidate_ids],
        )

    def candidate_exists(self, candidate_id: str) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM candidates WHERE candidate_id = ?", (candidate_id,)
            ).fetchone()
            is not None
        )

    def existing_reward_keys(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self._conn.execute(
                    f"SELECT idempotency_key FROM reward_keys WHERE idempotency_key IN ({marks})",
                    tuple(chunk),
                )
            )
        return found

    def reward_key_seqs(self, keys: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            found.update(
                self._conn.execute(
                    "SELECT idempotency_key, seq FROM reward_keys"
                    f" WHERE idempotency_key IN ({marks})",
                    tuple(chunk),
                ).fetchall()
            )
        return found

    def get_rollouts(self, rollout_ids: Sequence[str]) -> dict[str, RolloutRow]:
        found: dict[str, RolloutRow] = {}
        for chunk in _chunks(rollout_ids):
            marks = ",".join("?" * len(chunk))
            for r in self._conn.execute(
                "SELECT rollout_id, session_id, candidate_id, created_at, seq, detail_seq"
                f" FROM rollouts WHERE rollout_id IN ({marks})",
                tuple(chunk),
            ):
                found[r[0]] = RolloutRow(*r)
        return found

    def add_rollouts(self, rows: Sequence[RolloutRow]) -> None:
        self._conn.executemany(
            "INSERT INTO rollouts (rollout_id, session_id, candidate_id, created_at, seq,"
            " detail_seq) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    def set_rollout_detail(self, rollout_id: str, detail_seq: int) -> None:
        self._conn.execute(
            "UPDATE rollouts SET detail_seq = ? WHERE rollout_id = ?", (detail_seq, rollout_id)
        )

    def add_reward_keys(self, rows: Sequence[tuple[str, str, int, str]]) -> None:
        self._conn.executemany(
            "INSERT INTO reward_keys (idempotency_key, session_id, seq, rollout_id)"
            " VALUES (?, ?, ?, ?)",
            rows,
        )

    def save_snapshot(self, session_id: str, seq: int, state: dict[str, Any]) -> None:
        # Another process may have written a newer one: never go backwards.
        self._conn.execute(
            "INSERT INTO snapshots (session_id, seq, state) VALUES (?, ?, ?)"
            " ON CONFLICT (session_id) DO UPDATE SET seq = excluded.seq, state = excluded.state"
            " WHERE excluded.seq > snapshots.seq",
            (session_id, seq, encode_json(state)),
        )


class SqliteStore(_SqliteReads, Store):
    """:class:`Store` over one SQLite file (WAL), shareable by threads and processes.

    One connection per process, guarded by a lock; several processes share the
    file and serialise their writes with ``BEGIN IMMEDIATE`` (waiting up to
    ``busy_timeout`` seconds). ``":memory:"`` works within one process.
    """

    def __init__(
        self, path: str | os.PathLike[str] = ".synth/synth.db", *, busy_timeout: float = 10.0
    ) -> None:
        self.path = str(path)
        self._busy_timeout = busy_timeout
        if self.path != ":memory:" and not self.path.startswith("file:"):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._reopen = False  # forked: the connection is the parent's; open our own
        self._closed = False
        self._conn = self._open()
        _fork.reset_after_fork(self, "_after_fork")

    # -- connection management ---------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
                uri=self.path.startswith("file:"),
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")  # two processes may create the schema at once
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise StorageError(
                    f"{self.path}: schema version {version} is newer than this library's"
                    f" ({SCHEMA_VERSION}); upgrade synth-middleware"
                )
            for migration in pending("sqlite", version):
                for stmt in statements(migration.ddl("sqlite") or ""):
                    conn.execute(stmt)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            return conn
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc

    def _after_fork(self) -> None:
        # in a forked child: never touch the parent's connection (the next use opens
        # ours); a lock held by a parent's thread would stay held forever
        _ABANDONED.append(self._conn)
        self._lock = threading.RLock()
        self._reopen = True

    def _check(self) -> None:
        if self._reopen:
            with self._lock:
                if self._reopen:
                    self._conn = self._open()
                    self._reopen = False
        if self._closed:
            raise StorageError("the store is closed")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        self._check()
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {exc}") from exc

    # -- Store -------------------------------------------------------------

    def read_events(self, session_id: str, after_seq: int, limit: int | None = None) -> list[Event]:
        with self._reading():
            return super().read_events(session_id, after_seq, limit)

    def load_snapshot(self, session_id: str) -> tuple[int, dict[str, Any]] | None:
        with self._reading():
            return super().load_snapshot(session_id)

    def candidate_session(self, candidate_id: str) -> str | None:
        with self._reading():
            row = self._conn.execute(
                "SELECT session_id FROM candidates WHERE candidate_id = ?", (candidate_id,)
            ).fetchone()
            return row[0] if row else None

    def session_ids(self) -> list[str]:
        with self._reading():
            rows = self._conn.execute("SELECT session_id FROM sessions ORDER BY created_at")
            return [r[0] for r in rows]

    def recent_rollouts(self, session_id: str, limit: int) -> list[RolloutRow]:
        with self._reading():
            rows = self._conn.execute(
                "SELECT rollout_id, session_id, candidate_id, created_at, seq, detail_seq"
                " FROM rollouts WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
                (session_id, limit),
            ).fetchall()
            return [RolloutRow(*r) for r in rows]

    def events_at(self, seqs: Iterable[int]) -> dict[int, Event]:
        wanted = sorted(set(seqs))
        out: dict[int, Event] = {}
        with self._reading():
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                for s, sid, t, p, c in self._conn.execute(
                    "SELECT seq, session_id, type, payload, created_at FROM events"
                    f" WHERE seq IN ({marks})",
                    tuple(chunk),
                ):
                    out[s] = _event(sid, s, t, p, c)
        return out

    def reward_events_for(self, rollout_ids: Sequence[str]) -> list[Event]:
        out: list[Event] = []
        with self._reading():
            for chunk in _chunks(list(rollout_ids)):
                marks = ",".join("?" * len(chunk))
                for s, sid, t, p, c in self._conn.execute(
                    "SELECT e.seq, e.session_id, e.type, e.payload, e.created_at"
                    " FROM reward_keys k JOIN events e ON e.seq = k.seq"
                    f" WHERE k.rollout_id IN ({marks})",
                    tuple(chunk),
                ):
                    out.append(_event(sid, s, t, p, c))
        out.sort(key=lambda e: e.seq)
        return out

    @contextmanager
    def write(self) -> Iterator[SqliteWriteTxn]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolls back (and re-raises) on any error."""
        self._check()
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot start a write: {exc}") from exc
            try:
                yield SqliteWriteTxn(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error matters more
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"{self.path}: {exc}") from exc
                raise

    def close(self) -> None:
        """Close the connection (idempotent). Other processes keep using the file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._reopen:  # a forked child never closes the parent's
                self._conn.close()
