"""The engine's event log on PostgreSQL, for several server replicas sharing one database.

::

    from synth_middleware.engine import Engine, open_store

    engine = Engine(open_store("postgresql://synth:secret@db.internal/synth"))

Needs the ``postgres`` extra (``pip install 'synth-middleware[postgres]'``:
psycopg 3 and psycopg_pool). The tables are the SQLite store's (one
template, :mod:`synth_middleware.engine.schema`), migrated when the store
opens.

Ordering: ``seq`` order is commit order
---------------------------------------
Engines tail the log with ``seq > last_applied`` (per session, and the
replica coordinator globally). That is only safe if no transaction can
commit a seq lower than one a reader has already seen; otherwise the reader
moves past the gap and misses that event for good. With a PostgreSQL
sequence (or ``BIGSERIAL``) that is exactly what happens: two writers take
seqs 7 and 8, the one holding 8 commits first, a tailer reads 8, then 7
commits behind it.

So every write transaction takes one transaction-scoped advisory lock first
(``pg_advisory_xact_lock``; key derived from the schema, so two schemas in
one database do not contend) and numbers its events from ``MAX(seq) + 1``
*after* the lock is granted, in a separate statement: under READ COMMITTED
each statement takes a fresh snapshot, and a statement that started before
the lock was granted would not see the previous holder's commit. PostgreSQL
makes a commit visible (ProcArray) before it releases the transaction's
locks, so the next writer always sees its predecessor's events. Hence the
safe horizon for a tailer is simply its statement snapshot: every seq at or
below the highest committed seq is committed or will never exist (a rolled
back writer's seqs are reused by the next one), and nothing can appear
below it later. Readers take no lock at all.

Why one lock and not one per session: a write transaction may touch several
sessions, discovered only inside it (a batch of rewards finds its sessions
through the ``rollouts`` table), the engine numbers events from one global
counter taken at the start of the transaction, and the coordinator tails the
whole log in one query. Per-session locks would need the set of sessions up
front (or risk deadlocks), per-session seqs, and a horizon computed from
in-flight transactions. The price is that writes are serialised database
wide, commit (WAL flush) included: see the ``## Replicas`` benchmark. Writes
are batched (the server's writer group-commits concurrent requests), so one
transaction carries many rewards, and the lock is held for as few round trips
as possible: ``BEGIN``, the lock and ``MAX(seq)`` go in one message, the
inserts are buffered and sent with ``COMMIT`` in one pipeline.

Other choices
-------------
* Reads are single autocommit statements on pooled connections
  (psycopg_pool); a read that fails on a dead connection (the server
  restarted) is retried once on a fresh one.
* ``max_staleness`` (seconds, default 0: every read asks the database) lets
  :meth:`read_events` answer "nothing new" from memory when the session was
  checked that recently: reads are then at most that old, except that a
  process always sees its own writes at once.
* Owner-only writes (an optimizer round of the replica that holds the
  session's lease) run inside :func:`fenced`: the transaction checks, under
  the write lock, that the lease is still this owner's with the same epoch,
  and fails with :class:`LeaseLostError` otherwise, so a replica that lost
  its lease (paused, partitioned) cannot write owner-only events afterwards.
* Connection settings: ``lock_timeout`` bounds the wait for the write lock,
  ``idle_in_transaction_session_timeout`` frees it if a client hangs inside a
  transaction, TCP keepalives detect a dead peer; all overridable in the URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

try:
    import psycopg
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and psycopg_pool: "
        "pip install 'synth-middleware[postgres]'"
    ) from exc

from synth_middleware import _fork
from synth_middleware.engine.schema import latest_version, pending, statements
from synth_middleware.engine.state import Event
from synth_middleware.engine.store import (
    CandidateRow,
    RolloutRow,
    StorageError,
    Store,
    WriteTxn,
)
from synth_middleware.wire import encode_json

__all__ = [
    "SCHEMA_VERSION",
    "Fence",
    "LeaseLostError",
    "PostgresStore",
    "fenced",
    "redact_url",
]

logger = logging.getLogger("synth_middleware.engine.postgres")

SCHEMA_VERSION = latest_version("postgresql")

T = TypeVar("T")

_decode = json.loads
# Pools inherited across fork() must never be used or closed in the child (closing
# would end the parent's server sessions on the shared sockets): kept here forever.
_ABANDONED: list[Any] = []
_DEFAULT_OPTIONS = {
    "lock_timeout": "30s",
    "idle_in_transaction_session_timeout": "60s",
}
_CANDIDATE_CACHE = 100_000
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


class LeaseLostError(StorageError):
    """An owner-only write found that this replica no longer owns the session."""


class Fence(NamedTuple):
    """The lease an owner-only write must still hold when it commits."""

    session_id: str
    owner: str
    epoch: int


_FENCE: ContextVar[Fence | None] = ContextVar("synth_pg_fence", default=None)


@contextmanager
def fenced(session_id: str, owner: str, epoch: int) -> Iterator[None]:
    """Make every write transaction of this thread (context) check the session lease."""
    token = _FENCE.set(Fence(session_id, owner, epoch))
    try:
        yield
    finally:
        _FENCE.reset(token)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for ``parts`` (stable across processes)."""
    digest = hashlib.blake2b("\x1f".join(("synth-middleware", *parts)).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _event(seq: int, session_id: str, type_: str, payload: str, created_at: float) -> Event:
    return Event(seq, session_id, type_, _decode(payload), created_at)


_ROLLOUT_COLS = "rollout_id, session_id, candidate_id, created_at, seq, detail_seq"


def _text_array(items: Iterable[str]) -> str:
    """A ``text[]`` literal (``{"a","b\\"c"}``), built much faster than psycopg's array
    dumper. Sent as a plain parameter and planned afresh (``prepare=False``), it is a
    constant to the planner: an index scan on a big table, a hashed ``= ANY`` on a small
    one (a generic plan over an array parameter may scan the table once per element)."""
    return (
        "{" + ",".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in items) + "}"
    )


def _json_rows(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as a JSON array of objects, for ``json_populate_recordset`` (one parameter:
    several times faster to send than one array parameter per column)."""
    return encode_json([dict(zip(names, row, strict=True)) for row in rows])


class PgWriteTxn(WriteTxn):
    """One write transaction, holding the database-wide write lock.

    Inserts and updates are buffered and sent in one pipeline, before the next
    read of this transaction or together with ``COMMIT``, so a transaction
    costs few round trips while every read still sees its own writes.
    """

    def __init__(self, conn: psycopg.Connection[Any], next_seq: int) -> None:
        self._conn = conn
        self._next_seq = next_seq
        self._pending: list[tuple[str, Sequence[Any]]] = []
        self.written: dict[str, int] = {}  # session -> last seq appended

    # -- plumbing -----------------------------------------------------------

    def _buffer(self, query: str, params: Sequence[Any]) -> None:
        self._pending.append((query, params))

    def _flush(self, *, commit: bool = False) -> None:
        if not self._pending and not commit:
            return
        queries, self._pending = self._pending, []
        if commit:
            queries.append(("COMMIT", ()))
        if len(queries) == 1:
            self._conn.execute(queries[0][0], queries[0][1] or None)
            return
        with self._conn.pipeline():
            for query, params in queries:
                self._conn.execute(query, params or None)

    def _rows(
        self, query: str, params: Sequence[Any], *, prepare: bool | None = None
    ) -> list[tuple[Any, ...]]:
        self._flush()
        return self._conn.execute(query, params, prepare=prepare).fetchall()

    def commit(self) -> None:
        """Send the buffered writes and ``COMMIT`` (one pipeline)."""
        self._flush(commit=True)

    # -- WriteTxn -------------------------------------------------------------

    def read_events(self, session_id: str, after_seq: int, limit: int | None = None) -> list[Event]:
        query = (
            "SELECT seq, type, payload, created_at FROM events"
            " WHERE session_id = %s AND seq > %s ORDER BY seq"
        )
        params: tuple[Any, ...] = (session_id, after_seq)
        if limit is not None:
            query += " LIMIT %s"
            params += (limit,)
        return [Event(s, session_id, t, _decode(p), c) for s, t, p, c in self._rows(query, params)]

    def load_snapshot(self, session_id: str) -> tuple[int, dict[str, Any]] | None:
        rows = self._rows("SELECT seq, state FROM snapshots WHERE session_id = %s", (session_id,))
        return (rows[0][0], _decode(rows[0][1])) if rows else None

    def next_seq(self) -> int:
        return self._next_seq

    def append_events(self, events: Sequence[Event], payloads: Sequence[str] | None = None) -> None:
        if not events:
            return
        if payloads is None:
            payloads = [encode_json(e.payload) for e in events]
        self._buffer(
            "INSERT INTO events (seq, session_id, type, payload, created_at)"
            " SELECT seq, session_id, type, payload, created_at"
            " FROM json_populate_recordset(NULL::events, %s::json)",
            (
                _json_rows(
                    ("seq", "session_id", "type", "payload", "created_at"),
                    [
                        (e.seq, e.session_id, e.type, p, e.created_at)
                        for e, p in zip(events, payloads, strict=True)
                    ],
                ),
            ),
        )
        for e in events:
            if e.seq >= self._next_seq:
                self._next_seq = e.seq + 1
            self.written[e.session_id] = max(e.seq, self.written.get(e.session_id, 0))

    def add_session(
        self, session_id: str, kind: str, status: str, created_at: float, config: Any
    ) -> None:
        self._buffer(
            "INSERT INTO sessions (session_id, kind, status, created_at, config)"
            " VALUES (%s, %s, %s, %s, %s)",
            (session_id, kind, status, created_at, encode_json(config)),
        )

    def set_session_status(self, session_id: str, status: str) -> None:
        self._buffer("UPDATE sessions SET status = %s WHERE session_id = %s", (status, session_id))

    def add_candidate(self, row: CandidateRow) -> None:
        self._buffer(
            "INSERT INTO candidates (candidate_id, session_id, generation, created_as_baseline,"
            " parent_id, status, created_at, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
        if candidate_ids:
            self._buffer(
                "UPDATE candidates SET status = %s WHERE candidate_id = ANY(%s::text[])",
                (status, _text_array(candidate_ids)),
            )

    def candidate_exists(self, candidate_id: str) -> bool:
        return bool(self._rows("SELECT 1 FROM candidates WHERE candidate_id = %s", (candidate_id,)))

    def existing_reward_keys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        rows = self._rows(
            "SELECT idempotency_key FROM reward_keys WHERE idempotency_key = ANY(%s::text[])",
            (_text_array(keys),),
            prepare=False,
        )
        return {r[0] for r in rows}

    def reward_key_seqs(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        rows = self._rows(
            "SELECT idempotency_key, seq FROM reward_keys WHERE idempotency_key = ANY(%s::text[])",
            (_text_array(keys),),
            prepare=False,
        )
        return {r[0]: int(r[1]) for r in rows}

    def get_rollouts(self, rollout_ids: Sequence[str]) -> dict[str, RolloutRow]:
        if not rollout_ids:
            return {}
        rows = self._rows(
            f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE rollout_id = ANY(%s::text[])",
            (_text_array(rollout_ids),),
            prepare=False,
        )
        return {r[0]: RolloutRow(*r) for r in rows}

    def add_rollouts(self, rows: Sequence[RolloutRow]) -> None:
        if not rows:
            return
        self._buffer(
            f"INSERT INTO rollouts ({_ROLLOUT_COLS}) SELECT {_ROLLOUT_COLS}"
            " FROM json_populate_recordset(NULL::rollouts, %s::json)",
            (_json_rows(RolloutRow._fields, rows),),
        )

    def set_rollout_detail(self, rollout_id: str, detail_seq: int) -> None:
        self._buffer(
            "UPDATE rollouts SET detail_seq = %s WHERE rollout_id = %s", (detail_seq, rollout_id)
        )

    def add_reward_keys(self, rows: Sequence[tuple[str, str, int, str]]) -> None:
        if not rows:
            return
        self._buffer(
            "INSERT INTO reward_keys (idempotency_key, session_id, seq, rollout_id)"
            " SELECT idempotency_key, session_id, seq, rollout_id"
            " FROM json_populate_recordset(NULL::reward_keys, %s::json)",
            (_json_rows(("idempotency_key", "session_id", "seq", "rollout_id"), rows),),
        )

    def save_snapshot(self, session_id: str, seq: int, state: dict[str, Any]) -> None:
        self._buffer(
            "INSERT INTO snapshots (session_id, seq, state) VALUES (%s, %s, %s)"
            " ON CONFLICT (session_id) DO UPDATE SET seq = excluded.seq, state = excluded.state"
            " WHERE excluded.seq > snapshots.seq",
            (session_id, seq, encode_json(state)),
        )


class PostgresStore(Store):
    """:class:`~synth_middleware.engine.store.Store` on PostgreSQL (psycopg 3, pooled).

    ``url``: a libpq URL or conninfo string (``postgresql://user:pw@host:5432/db``;
    add ``?options=-csearch_path%3Dmyschema`` to use a schema other than the
    user's default). ``max_connections`` bounds the pool (writes hold one
    connection each; reads are single statements). ``max_staleness``: see the
    module doc. Safe to share between threads; after ``fork()`` the child
    opens its own pool.
    """

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 8,
        max_staleness: float = 0.0,
        connect_timeout: float = 10.0,
        application_name: str = "synth-middleware",
    ) -> None:
        if max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        self.url = url
        self.display_url = redact_url(url)
        self.max_staleness = float(max_staleness)
        self._min = max(1, min_connections)
        self._max = max(self._min, max_connections)
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._lock = threading.Lock()
        self._closed = False
        self._fresh: dict[str, tuple[int, float]] = {}  # session -> (max seq, checked at)
        self._candidates: dict[str, tuple[str, int]] = {}  # candidate -> (session, seq)
        self._reopen = False  # forked: the pool is the parent's; open our own
        self._pool = self._open_pool()
        _fork.reset_after_fork(self, "_after_fork")
        self.schema, self._write_sql = self._migrate()

    # -- connections -------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        given = psycopg.conninfo.conninfo_to_dict(self.url)
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 5}
        if "application_name" not in given:
            kwargs["application_name"] = self._application_name
        if "connect_timeout" not in given:
            kwargs["connect_timeout"] = max(1, int(self._connect_timeout))
        for key, value in _KEEPALIVES.items():
            if key not in given:
                kwargs[key] = value
        options = str(given.get("options") or "")
        extra = [f"-c {k}={v}" for k, v in _DEFAULT_OPTIONS.items() if k not in options]
        kwargs["options"] = " ".join([options, *extra]).strip()
        return kwargs

    def _open_pool(self) -> ConnectionPool[Any]:
        pool: ConnectionPool[Any] = ConnectionPool(
            self.url,
            min_size=self._min,
            max_size=self._max,
            kwargs=self._connect_kwargs(),
            open=False,
            name="synth-store",
            timeout=self._connect_timeout,
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            pool.close(timeout=0)
            raise StorageError(f"cannot connect to {self.display_url}: {exc}") from None
        return pool

    def _after_fork(self) -> None:
        # in a forked child: the pool's threads and sockets are the parent's (the next
        # use opens ours); a lock held by a parent's thread would stay held forever
        _ABANDONED.append(self._pool)
        self._lock = threading.Lock()
        self._fresh = {}
        self._reopen = True

    def _check(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")
        if self._reopen:
            with self._lock:
                if self._reopen:
                    self._pool = self._open_pool()
                    self._reopen = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection (for the replica coordinator and tests)."""
        self._check()
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StorageError(f"{self.display_url}: no connection available: {exc}") from None

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run a read; retry once on a connection that turned out dead."""
        for attempt in (1, 2):
            used: psycopg.Connection[Any] | None = None
            try:
                with self.connection() as conn:
                    used = conn
                    return fn(conn)
            except psycopg.OperationalError as exc:
                if attempt == 2 or used is None or not used.broken:
                    raise StorageError(f"{self.display_url}: {exc}") from exc
            except psycopg.Error as exc:
                raise StorageError(f"{self.display_url}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- schema --------------------------------------------------------------

    def _migrate(self) -> tuple[str, str]:
        """Apply pending migrations (once, even with replicas starting together)."""
        try:
            with self.connection() as conn:
                schema = conn.execute("SELECT current_schema()").fetchone()
                if schema is None or schema[0] is None:
                    raise StorageError(
                        f"{self.display_url}: no current schema (search_path names no schema "
                        "this user can use)"
                    )
                name = str(schema[0])
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name, "migrate"),))
                    found = conn.execute("SELECT to_regclass('synth_schema_version')").fetchone()
                    current = 0
                    if found is not None and found[0] is not None:  # no DDL when up to date
                        row = conn.execute(
                            "SELECT max(version) FROM synth_schema_version"
                        ).fetchone()
                        current = int(row[0]) if row and row[0] is not None else 0
                    else:
                        conn.execute(
                            "CREATE TABLE synth_schema_version ("
                            " version BIGINT NOT NULL, migrated_at DOUBLE PRECISION NOT NULL)"
                        )
                    if current > SCHEMA_VERSION:
                        raise StorageError(
                            f"{self.display_url}: schema version {current} is newer than this "
                            f"library's ({SCHEMA_VERSION}); upgrade synth-middleware"
                        )
                    steps = pending("postgresql", current)
                    for migration in steps:
                        for stmt in statements(migration.ddl("postgresql") or ""):
                            conn.execute(stmt)
                    if steps:
                        conn.execute("DELETE FROM synth_schema_version")
                        conn.execute(
                            "INSERT INTO synth_schema_version VALUES (%s, %s)",
                            (SCHEMA_VERSION, time.time()),
                        )
                        logger.info(
                            "synth-middleware: migrated %s (schema %s) from version %d to %d",
                            self.display_url,
                            name,
                            current,
                            SCHEMA_VERSION,
                        )
        except psycopg.Error as exc:
            self.close()
            raise StorageError(f"{self.display_url}: cannot prepare the schema: {exc}") from None
        except StorageError:
            self.close()
            raise
        key = lock_key(name, "write")
        # One message: BEGIN, the write lock, then the first free seq in a statement
        # of its own (its snapshot is taken after the lock is granted).
        write_sql = (
            f"BEGIN; SELECT pg_advisory_xact_lock({key});"
            " SELECT COALESCE(MAX(seq), 0) + 1 FROM events"
        )
        return name, write_sql

    # -- Store reads ---------------------------------------------------------

    def read_events(self, session_id: str, after_seq: int, limit: int | None = None) -> list[Event]:
        if self.max_staleness > 0:
            known = self._fresh.get(session_id)
            if (
                known is not None
                and after_seq >= known[0]
                and time.monotonic() - known[1] <= self.max_staleness
            ):
                return []
        started = time.monotonic()
        query = (
            "SELECT seq, type, payload, created_at FROM events"
            " WHERE session_id = %s AND seq > %s ORDER BY seq"
        )
        params: tuple[Any, ...] = (session_id, after_seq)
        if limit is not None:
            query += " LIMIT %s"
            params += (limit,)
        rows = self._read(lambda conn: conn.execute(query, params).fetchall())
        if limit is None or len(rows) < limit:
            self._note_fresh(session_id, rows[-1][0] if rows else after_seq, started)
        return [Event(s, session_id, t, _decode(p), c) for s, t, p, c in rows]

    def _note_fresh(self, session_id: str, max_seq: int, at: float) -> None:
        """Remember "no event of ``session_id`` above ``max_seq`` as of ``at``"."""
        known = self._fresh.get(session_id)
        if known is None or at >= known[1]:
            self._fresh[session_id] = (max_seq, at)

    def invalidate(self, changes: Mapping[str, int]) -> None:
        """Forget what :attr:`max_staleness` remembers about sessions that have events up to
        ``changes[session_id]`` (the log tail saw them) beyond what it remembers."""
        for sid, seq in changes.items():
            known = self._fresh.get(sid)
            if known is not None and known[0] < seq:
                self._fresh.pop(sid, None)

    def load_snapshot(self, session_id: str) -> tuple[int, dict[str, Any]] | None:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT seq, state FROM snapshots WHERE session_id = %s", (session_id,)
            ).fetchall()
        )
        return (rows[0][0], _decode(rows[0][1])) if rows else None

    def candidate_session(self, candidate_id: str) -> str | None:
        # A candidate never changes session and is never deleted: found ones are cached
        # (the server asks on every reward that names a candidate).
        known = self._candidates.get(candidate_id)
        if known is None:
            rows = self._read(
                lambda conn: conn.execute(
                    "SELECT session_id, seq FROM candidates WHERE candidate_id = %s",
                    (candidate_id,),
                ).fetchall()
            )
            if not rows:
                return None
            known = (str(rows[0][0]), int(rows[0][1]))
            if len(self._candidates) >= _CANDIDATE_CACHE:
                self._candidates.clear()
            self._candidates[candidate_id] = known
        self.invalidate({known[0]: known[1]})  # the caller is about to look the candidate up
        return known[0]

    def session_ids(self) -> list[str]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT session_id FROM sessions ORDER BY created_at, session_id"
            ).fetchall()
        )
        return [r[0] for r in rows]

    def recent_rollouts(self, session_id: str, limit: int) -> list[RolloutRow]:
        rows = self._read(
            lambda conn: conn.execute(
                f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE session_id = %s"
                " ORDER BY seq DESC LIMIT %s",
                (session_id, limit),
            ).fetchall()
        )
        return [RolloutRow(*r) for r in rows]

    def events_at(self, seqs: Iterable[int]) -> dict[int, Event]:
        wanted = sorted(set(seqs))
        if not wanted:
            return {}
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT seq, session_id, type, payload, created_at FROM events"
                " WHERE seq = ANY(%s::bigint[])",
                ("{" + ",".join(map(str, wanted)) + "}",),
                prepare=False,
            ).fetchall()
        )
        return {r[0]: _event(*r) for r in rows}

    def reward_events_for(self, rollout_ids: Sequence[str]) -> list[Event]:
        if not rollout_ids:
            return []
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT e.seq, e.session_id, e.type, e.payload, e.created_at"
                " FROM reward_keys k JOIN events e ON e.seq = k.seq"
                " WHERE k.rollout_id = ANY(%s::text[]) ORDER BY e.seq",
                (_text_array(rollout_ids),),
                prepare=False,
            ).fetchall()
        )
        return [_event(*r) for r in rows]

    # -- writes ------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[PgWriteTxn]:
        """One transaction under the database-wide write lock; commits on success,
        rolls back (and re-raises) on any error. Inside :func:`fenced`, fails with
        :class:`LeaseLostError` unless the fence's lease is still held."""
        fence = _FENCE.get()
        with self.connection() as conn:
            committed = False
            try:
                cur = conn.execute(self._write_sql)
                while cur.nextset():
                    pass
                row = cur.fetchone()
                txn = PgWriteTxn(conn, int(row[0]) if row else 1)
                if fence is not None:
                    self._check_fence(conn, fence)
                yield txn
                txn.commit()
                committed = True
            except BaseException as exc:
                if not committed and not conn.broken:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass  # the original error matters more
                if isinstance(exc, psycopg.Error):
                    raise StorageError(f"{self.display_url}: {exc}") from exc
                raise
        if txn.written:
            now = time.monotonic()
            for sid, seq in txn.written.items():
                self._note_fresh(sid, seq, now)

    @staticmethod
    def _check_fence(conn: psycopg.Connection[Any], fence: Fence) -> None:
        row = conn.execute(
            "SELECT 1 FROM session_leases WHERE session_id = %s AND owner = %s AND epoch = %s"
            " AND expires_at > EXTRACT(EPOCH FROM clock_timestamp())",
            fence,
        ).fetchone()
        if row is None:
            raise LeaseLostError(
                f"session {fence.session_id!r}: this replica's lease (epoch {fence.epoch}) "
                "is gone; owner-only write refused"
            )

    def close(self) -> None:
        """Close the pool (idempotent). Other processes keep using the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool = getattr(self, "_pool", None)
        if pool is not None and not self._reopen:  # a forked child never closes the parent's
            pool.close(timeout=5.0)
