"""The durable reward outbox: rewards not yet confirmed by the backend, in SQLite.

One table in a SQLite file (WAL, ``synchronous=NORMAL``: a committed row
survives the process being killed; an OS crash may lose the last
transactions). Rows are written before delivery and deleted only once the
backend answered for them (``accepted``, ``duplicate`` or a permanent
``rejected``). Several processes may share one file:

* each process is an *owner* (``"<pid>:<random>"``) holding a lease in
  ``synth_outbox_owners`` that its reporter renews;
* rows belong to one owner; a process adopts the rows of an owner whose pid
  is gone, whose pid is its own (a previous incarnation), or whose lease ran
  out, in one transaction, so two processes never adopt the same rows;
* ``dest`` names the backend a row goes to, so one file can serve reporters
  for several backends.

``queued`` tells whether a row is in its owner's memory queue; rows with
``queued = 0`` (spilled when the memory queue was full, deferred after
delivery gave up, or adopted) wait to be claimed, not before ``not_before``.
This module does no threading of its own; the reporter drives it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from synth_middleware import _fork

log = logging.getLogger("synth_middleware")

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_ABANDONED: list[sqlite3.Connection] = []  # inherited across fork: never use or close
_CHUNK = 500  # ids per statement (SQLite's variable limit is 999 on old builds)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS synth_outbox (
    id INTEGER PRIMARY KEY,
    dest TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    owner TEXT NOT NULL,
    queued INTEGER NOT NULL DEFAULT 1,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS synth_outbox_by_owner
    ON synth_outbox (dest, owner, queued, not_before);
CREATE TABLE IF NOT EXISTS synth_outbox_owners (
    owner TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    lease_until REAL NOT NULL
);
"""

_token = ""


def owner_token() -> str:
    """This process's owner name, ``"<pid>:<random>"`` (new after fork)."""
    global _token
    if not _token:
        _token = f"{os.getpid()}:{os.urandom(6).hex()}"
    return _token


def _new_owner_after_fork() -> None:
    # a forked child is a new owner: it must not claim or renew the parent's rows
    global _token
    _token = ""


_fork.after_fork_in_child(_new_owner_after_fork)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


class Outbox:
    """Rewards pending delivery to one destination, in a SQLite file.

    Thread-safe (one connection per process behind a lock); fork-aware (the
    child opens its own connection and becomes a new owner).

    Args:
        path: the SQLite file (directories are created).
        dest: names the backend these rows go to.
        lease: seconds an owner's claim lasts without renewal.
        busy_timeout: seconds to wait for another process's write lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dest: str = "default",
        lease: float = 30.0,
        busy_timeout: float = 5.0,
    ) -> None:
        if not lease > 0:
            raise ValueError("lease must be positive")
        self.path = str(path)
        self.dest = dest
        self.lease = float(lease)
        self.busy_timeout = float(busy_timeout)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._conn_or_open()
        _fork.reset_after_fork(self, "_after_fork")

    def __repr__(self) -> str:
        return f"Outbox({self.path!r}, dest={self.dest!r})"

    # -- plumbing ---------------------------------------------------------------
    def _after_fork(self) -> None:
        # in a forked child: the parent's connection is not ours (never use or close
        # it) and its lock may be held by a thread the child does not have; the next
        # use opens the child's own connection
        if self._conn is not None:
            _ABANDONED.append(self._conn)
            self._conn = None
        self._lock = threading.RLock()

    def _conn_or_open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self._closed:
            raise RuntimeError("outbox is closed")
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._register(conn)
        return conn

    def _register(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO synth_outbox_owners (owner, pid, lease_until) VALUES (?, ?, ?)",
            (owner_token(), os.getpid(), time.time() + self.lease),
        )

    def _txn(self) -> _Txn:
        return _Txn(self)

    # -- writes -----------------------------------------------------------------
    def add(self, records: Sequence[Mapping[str, Any]], *, queued: bool = True) -> list[int | None]:
        """Insert rewards in one transaction; their row ids (``None`` for a record
        that is not JSON and so cannot be stored)."""
        me = owner_token()
        now = time.time()
        rows: list[tuple[str, str, float] | None] = []
        for rec in records:
            try:
                rows.append(
                    (
                        str(rec.get("idempotency_key") or ""),
                        _encode(rec),
                        float(rec.get("created_at") or now),
                    )
                )
            except (TypeError, ValueError):
                rows.append(None)
        ids: list[int | None] = []
        with self._txn() as conn:
            for row in rows:
                if row is None:
                    ids.append(None)
                    continue
                cur = conn.execute(
                    "INSERT INTO synth_outbox (dest, idempotency_key, body, created_at, owner, "
                    "queued) VALUES (?, ?, ?, ?, ?, ?)",
                    (self.dest, row[0], row[1], row[2], me, 1 if queued else 0),
                )
                ids.append(cur.lastrowid)
        return ids

    def delete(self, ids: Sequence[int]) -> None:
        """Forget delivered (or permanently rejected) rows."""
        if not ids:
            return
        with self._txn() as conn:
            for part in _chunks(ids):
                conn.execute(
                    f"DELETE FROM synth_outbox WHERE id IN ({','.join('?' * len(part))})",
                    tuple(part),
                )

    def defer(self, ids: Sequence[int], delay: float) -> None:
        """Take rows out of the memory queue; claim them again after ``delay`` seconds."""
        if not ids:
            return
        not_before = time.time() + max(0.0, delay)
        with self._txn() as conn:
            for part in _chunks(ids):
                conn.execute(
                    "UPDATE synth_outbox SET queued = 0, not_before = ? "
                    f"WHERE id IN ({','.join('?' * len(part))})",
                    (not_before, *part),
                )

    def claim(
        self, limit: int, *, ignore_not_before: bool = False
    ) -> list[tuple[int, dict[str, Any]]]:
        """Mark up to ``limit`` of this owner's waiting rows as queued; return them,
        oldest first. Rows that no longer parse are deleted (and logged)."""
        if limit <= 0:
            return []
        me = owner_token()
        horizon = float("inf") if ignore_not_before else time.time()
        out: list[tuple[int, dict[str, Any]]] = []
        bad: list[int] = []
        with self._txn() as conn:
            rows = conn.execute(
                "SELECT id, body FROM synth_outbox WHERE dest = ? AND owner = ? AND queued = 0 "
                "AND not_before <= ? ORDER BY id LIMIT ?",
                (self.dest, me, horizon, limit),
            ).fetchall()
            for rid, body in rows:
                try:
                    rec = json.loads(body)
                    if not isinstance(rec, dict):
                        raise ValueError("not an object")
                except ValueError:
                    bad.append(rid)
                    continue
                out.append((rid, rec))
            ids = [rid for rid, _ in out]
            for part in _chunks(ids):
                conn.execute(
                    f"UPDATE synth_outbox SET queued = 1 WHERE id IN ({','.join('?' * len(part))})",
                    tuple(part),
                )
            for part in _chunks(bad):
                conn.execute(
                    f"DELETE FROM synth_outbox WHERE id IN ({','.join('?' * len(part))})",
                    tuple(part),
                )
        if bad:
            log.error(
                "synth-middleware: outbox %s: dropped %d unreadable row(s)", self.path, len(bad)
            )
        return out

    def renew(self) -> None:
        """Extend this owner's lease."""
        with self._txn() as conn:
            self._register(conn)

    def adopt(self) -> int:
        """Take over the rows of owners that are gone (pid dead or our own pid from a
        previous run) or whose lease expired; return how many rows were adopted.
        Adopted rows wait to be claimed."""
        me = owner_token()
        my_pid = os.getpid()
        now = time.time()
        adopted = 0
        with self._txn() as conn:
            owners = conn.execute(
                "SELECT o.owner, w.pid, w.lease_until FROM "
                "(SELECT DISTINCT owner FROM synth_outbox WHERE dest = ? AND owner != ?) o "
                "LEFT JOIN synth_outbox_owners w ON w.owner = o.owner",
                (self.dest, me),
            ).fetchall()
            for owner, pid, lease_until in owners:
                if pid is None:
                    try:
                        pid = int(str(owner).split(":", 1)[0])
                    except ValueError:
                        pid = -1
                gone = pid == my_pid or not _pid_alive(pid)
                expired = lease_until is None or lease_until < now
                if not (gone or expired):
                    continue
                cur = conn.execute(
                    "UPDATE synth_outbox SET owner = ?, queued = 0, not_before = 0 "
                    "WHERE dest = ? AND owner = ?",
                    (me, self.dest, owner),
                )
                adopted += cur.rowcount
            # tidy owners that hold no rows any more and have long expired
            conn.execute(
                "DELETE FROM synth_outbox_owners WHERE lease_until < ? AND owner NOT IN "
                "(SELECT DISTINCT owner FROM synth_outbox)",
                (now - 10 * self.lease,),
            )
        return adopted

    # -- reads ------------------------------------------------------------------
    def waiting(self) -> int:
        """This owner's rows not in its memory queue (spilled, deferred or adopted)."""
        with self._txn() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM synth_outbox WHERE dest = ? AND owner = ? AND queued = 0",
                (self.dest, owner_token()),
            ).fetchone()
        return int(n)

    def count(self, *, mine: bool = False) -> int:
        """Rows for this destination (only this owner's with ``mine=True``)."""
        with self._txn() as conn:
            if mine:
                row = conn.execute(
                    "SELECT COUNT(*) FROM synth_outbox WHERE dest = ? AND owner = ?",
                    (self.dest, owner_token()),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*) FROM synth_outbox WHERE dest = ?", (self.dest,)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection (in the process that opened it)."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._closed = True
            if conn is not None:  # a forked child has none of the parent's
                try:
                    conn.execute(
                        "UPDATE synth_outbox_owners SET lease_until = 0 WHERE owner = ?",
                        (owner_token(),),
                    )
                except sqlite3.Error:
                    pass
                conn.close()


class _Txn:
    """``with outbox._txn() as conn``: the lock plus ``BEGIN IMMEDIATE`` ... ``COMMIT``."""

    __slots__ = ("_ob",)

    def __init__(self, ob: Outbox) -> None:
        self._ob = ob

    def __enter__(self) -> sqlite3.Connection:
        self._ob._lock.acquire()
        try:
            conn = self._ob._conn_or_open()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._ob._lock.release()
            raise
        return conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            conn = self._ob._conn
            if conn is not None and conn.in_transaction:
                if exc_type is None:
                    try:
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                else:
                    conn.execute("ROLLBACK")
        finally:
            self._ob._lock.release()
