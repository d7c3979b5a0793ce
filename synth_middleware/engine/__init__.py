"""The embedded optimization backend: an event-sourced store of sessions,
candidates, rollouts and rewards.

Use it in-process through :class:`~synth_middleware.backends.local.LocalBackend`,
or directly::

    from synth_middleware.engine import Engine, SqliteStore

    engine = Engine(SqliteStore(".synth/synth.db"))
    engine.ensure_session("support-bot", baseline="You are a helpful assistant.")
"""

from synth_middleware.engine.engine import Engine, RolloutsResult, validate_session_id
from synth_middleware.engine.state import (
    CandidateState,
    Event,
    SessionStateMachine,
    best_candidate,
)
from synth_middleware.engine.store import SqliteStore, StorageError, Store, WriteTxn

__all__ = [
    "CandidateState",
    "Engine",
    "Event",
    "RolloutsResult",
    "SessionStateMachine",
    "SqliteStore",
    "StorageError",
    "Store",
    "WriteTxn",
    "best_candidate",
    "validate_session_id",
]
