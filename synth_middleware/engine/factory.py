"""The parts an engine is assembled from.

Open the right store for a path or URL: ``open_store(".synth/synth.db")``,
``open_store("postgresql://user:pw@host/db")``. Used by ``synth-middleware serve
--db`` and :func:`~synth_middleware.server.create_app`; SQLite stays the default
for anything that is not a PostgreSQL URL.

Attach the online optimizer runner to an engine: ``attach_optimizer(engine,
OptimizerOptions(...))`` (what ``Engine(store, optimizer=...)`` does). The runner
calls into the engine and the engine notifies the runner; built here, neither
module imports the other.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from synth_middleware.engine._optimizer_options import OptimizerOptions
from synth_middleware.engine._optimizer_runner import OptimizerHost, OptimizerRunner
from synth_middleware.engine.store import SqliteStore, Store

__all__ = ["attach_optimizer", "display_target", "is_postgres_url", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


def display_target(target: str | os.PathLike[str]) -> str:
    """``target`` safe to print: a URL's password is replaced by ``***``."""
    if is_postgres_url(target):
        from synth_middleware.engine.store_pg import redact_url

        return redact_url(str(target))
    return str(target)


def open_store(target: str | os.PathLike[str], **options: Any) -> Store:
    """A :class:`~synth_middleware.engine.store_pg.PostgresStore` for a PostgreSQL URL,
    else a :class:`~synth_middleware.engine.store.SqliteStore` on the file (or
    ``":memory:"``). ``options`` go to the store's constructor (e.g.
    ``max_staleness`` or ``max_connections`` for PostgreSQL, ``busy_timeout``
    for SQLite)."""
    if is_postgres_url(target):
        from synth_middleware.engine.store_pg import PostgresStore

        return PostgresStore(str(target), **options)
    return SqliteStore(target, **options)


class _Attachable(OptimizerHost, Protocol):
    """An engine that takes an attached runner (:class:`~synth_middleware.engine.Engine`)."""

    def attach_optimizer(self, optimizer: OptimizerRunner) -> None:
        """Register ``optimizer`` for commit notifications and close."""
        ...


def attach_optimizer(
    engine: _Attachable, options: OptimizerOptions | None = None
) -> OptimizerRunner:
    """Build the :class:`~synth_middleware.engine.OptimizerRunner` for ``engine``,
    attach it (the engine notifies it after commits and stops it on close) and
    return it. The background thread starts at the first notification."""
    runner = OptimizerRunner(engine, options or OptimizerOptions())
    engine.attach_optimizer(runner)
    return runner
