"""The engine's tables and their migrations, one list for the SQLite and PostgreSQL stores.

Each :class:`Migration` has a version and its DDL per dialect. The core
tables (the event log, the lookup tables, snapshots) are one template
rendered for both databases, so the two stores cannot drift apart; only the
column types differ (SQLite's ``REAL`` is a double, PostgreSQL's is a float4,
so PostgreSQL gets ``DOUBLE PRECISION``; seq columns are ``BIGINT`` there).
A migration a dialect does not need (the replica leases exist only on
PostgreSQL) has no DDL for it, and that dialect's version stops below it.

Where the version is recorded:

* SQLite: ``PRAGMA user_version``, as before this module existed (files
  written by earlier releases are at version 1 and open unchanged; SQLite
  files stay at version 1 while no migration touches SQLite, so older
  releases keep opening them).
* PostgreSQL: the one-row table ``synth_schema_version``, written in the
  same transaction as the DDL (PostgreSQL's DDL is transactional), under an
  advisory lock so that replicas starting together migrate once.

A database newer than the library refuses to open with a clear error, never
half-works.

Why a small versioned list and not Alembic: Alembic needs SQLAlchemy, which
the stores do not otherwise use (they talk to ``sqlite3`` and psycopg
directly), and its script directory and ``env.py`` are built for an
application's deploy step, whereas this library migrates itself when a store
opens, inside processes that embed it, concurrently from several replicas.
The schema is a handful of append-only tables; a list of ``(version, DDL)``
applied in one transaction under a lock is the whole job, and it is testable
on both databases with the same code. If the schema ever needs data
migrations with branching histories, Alembic is the tool to switch to: its
``alembic_version`` table can be seeded from ``synth_schema_version``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "seq_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "int": "INTEGER",
        "float": "REAL",
    },
    "postgresql": {
        "seq_pk": "BIGINT PRIMARY KEY",
        "int": "BIGINT",
        "float": "DOUBLE PRECISION",
    },
}

_CORE = """
CREATE TABLE IF NOT EXISTS events (
    seq {seq_pk},
    session_id TEXT NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at {float} NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session_seq ON events (session_id, seq);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at {float} NOT NULL,
    config TEXT
);
CREATE TABLE IF NOT EXISTS candidates (
    candidate_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    generation {int} NOT NULL,
    created_as_baseline INTEGER NOT NULL,
    parent_id TEXT,
    status TEXT NOT NULL,
    created_at {float} NOT NULL,
    seq {int} NOT NULL
);
CREATE INDEX IF NOT EXISTS candidates_session ON candidates (session_id, seq);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    candidate_id TEXT,
    created_at {float} NOT NULL,
    seq {int} NOT NULL,
    detail_seq {int}
);
CREATE INDEX IF NOT EXISTS rollouts_session_seq ON rollouts (session_id, seq);
CREATE TABLE IF NOT EXISTS reward_keys (
    idempotency_key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    seq {int} NOT NULL,
    rollout_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reward_keys_rollout ON reward_keys (rollout_id);
CREATE TABLE IF NOT EXISTS snapshots (
    session_id TEXT PRIMARY KEY,
    seq {int} NOT NULL,
    state TEXT NOT NULL
);
"""

# Replicas sharing one PostgreSQL database (synth_middleware.engine.replicas):
# who is alive, and which replica owns each session's single writer.
_REPLICAS = """
CREATE TABLE IF NOT EXISTS replicas (
    replica_id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    info TEXT
);
CREATE TABLE IF NOT EXISTS session_leases (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS session_leases_owner ON session_leases (owner);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``version`` and its DDL per dialect (``None``: not needed there)."""

    version: int
    description: str
    sqlite: str | None
    postgresql: str | None

    def ddl(self, dialect: Dialect) -> str | None:
        """This migration's DDL for ``dialect``, or ``None``."""
        return self.sqlite if dialect == "sqlite" else self.postgresql


def _render(template: str, dialect: Dialect) -> str:
    return template.format(**_TYPES[dialect])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "event log, lookup tables (sessions, candidates, rollouts, reward keys), snapshots",
        _render(_CORE, "sqlite"),
        _render(_CORE, "postgresql"),
    ),
    Migration(2, "replica registry and session leases (PostgreSQL only)", None, _REPLICAS),
)


def latest_version(dialect: Dialect) -> int:
    """The highest version with DDL for ``dialect`` (what a fresh database ends at)."""
    return max(m.version for m in MIGRATIONS if m.ddl(dialect) is not None)


def pending(dialect: Dialect, current: int) -> list[Migration]:
    """Migrations with DDL for ``dialect`` above ``current``, in order."""
    return [m for m in MIGRATIONS if m.version > current and m.ddl(dialect) is not None]


def statements(sql: str) -> list[str]:
    """Split DDL into statements (the templates hold no ``;`` inside statements)."""
    return [s.strip() for s in sql.split(";") if s.strip()]
