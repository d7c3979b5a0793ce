"""The engine in-process: a :class:`~synth_middleware.backends.base.Backend` over SQLite.

::

    from synth_middleware.backends.local import LocalBackend

    backend = LocalBackend()  # .synth/synth.db, shared by every process that opens it
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from synth_middleware.backends.base import (
    CandidateItem,
    RewardRecord,
    RewardResult,
    RolloutRecord,
    SessionKind,
    SessionState,
)
from synth_middleware.engine import (
    Engine,
    OptimizerOptions,
    SqliteStore,
    is_postgres_url,
    open_store,
)

DEFAULT_PATH = ".synth/synth.db"


class LocalBackend:
    """:class:`~synth_middleware.backends.base.Backend` backed by an in-process
    :class:`~synth_middleware.engine.Engine` over a SQLite file.

    Safe to share between threads; several processes may open the same file
    (each one tails the shared event log). ``path=":memory:"`` keeps
    everything in this process (tests). A ``postgresql://`` URL puts the log on
    PostgreSQL instead (the ``postgres`` extra). Pass ``engine`` to share one engine.
    ``optimizer=True`` (or :class:`OptimizerOptions`) runs the online
    optimizers (MIPRO/GEPA proposals) in a background thread of this process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        engine: Engine | None = None,
        snapshot_every: int = 1000,
        busy_timeout: float = 10.0,
        optimizer: OptimizerOptions | bool | None = None,
    ) -> None:
        self._path = str(path)
        if engine is None:
            if optimizer is True:
                optimizer = OptimizerOptions()
            store = (
                open_store(path)
                if is_postgres_url(path)
                else SqliteStore(path, busy_timeout=busy_timeout)
            )
            engine = Engine(
                store,
                snapshot_every=snapshot_every,
                optimizer=optimizer or None,
            )
            self._owns_engine = True
        else:
            self._owns_engine = False
        self._engine = engine

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` for an in-process database; a PostgreSQL
        URL without its password)."""
        store = self._engine.store
        return str(getattr(store, "path", None) or getattr(store, "display_url", self._path))

    @property
    def engine(self) -> Engine:
        """The engine behind this backend."""
        return self._engine

    def ensure_session(
        self,
        session_id: str,
        *,
        baseline: str | None = None,
        kind: SessionKind = "mipro_online",
        config: Mapping[str, Any] | None = None,
    ) -> SessionState:
        """Create the session if new; record a prompt change if ``baseline`` differs.
        ``config`` holds the optimizer keys (see ``synth_middleware.engine.config``)."""
        return self._engine.ensure_session(session_id, baseline=baseline, kind=kind, config=config)

    def get_state(self, session_id: str) -> SessionState:
        """The session's state with per-candidate statistics."""
        return self._engine.get_state(session_id)

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
        return self._engine.list_candidates(
            session_id, status=status, limit=limit, cursor=cursor, sort=sort, include=include
        )

    def get_candidate(self, candidate_id: str) -> CandidateItem:
        """One candidate with its full payload."""
        return self._engine.get_candidate(candidate_id)

    def record_rollouts(self, rollouts: Sequence[RolloutRecord]) -> None:
        """Store rollouts (idempotent on ``rollout_id``); bad records are skipped with a warning."""
        self._engine.record_rollouts(rollouts)

    def record_rewards(self, rewards: Sequence[RewardRecord]) -> list[RewardResult]:
        """Store rewards; one result per input, in order."""
        return self._engine.record_rewards(rewards)

    def add_candidate(
        self,
        session_id: str,
        content: str | None,
        *,
        payload: Any = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Add a candidate (prompt text, or ``payload`` for a structured one); return its id."""
        return self._engine.add_candidate(
            session_id, content, payload=payload, parent_id=parent_id, metadata=metadata
        )

    def archive_candidate(
        self, session_id: str, candidate_id: str, *, reason: str = "archived"
    ) -> bool:
        """Archive a candidate; False if it was archived already."""
        return self._engine.archive_candidate(session_id, candidate_id, reason=reason)

    def close(self) -> None:
        """Close the database (only if this backend created the engine)."""
        if self._owns_engine:
            self._engine.close()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
