"""The embedded optimization backend: an event-sourced store of sessions,
candidates, rollouts and rewards.

Use it in-process through :class:`~synth_middleware.backends.local.LocalBackend`,
or directly::

    from synth_middleware.engine import Engine, SqliteStore

    engine = Engine(SqliteStore(".synth/synth.db"))
    engine.ensure_session("support-bot", baseline="You are a helpful assistant.")

With the online optimizers (MIPRO / GEPA, by session ``kind``) running in a
background thread; the proposer's key comes from ``SYNTH_PROPOSER_API_KEY``
(or ``OPENAI_API_KEY``), its model from the session config or here::

    engine = Engine(
        SqliteStore(".synth/synth.db"),
        optimizer=OptimizerOptions(proposer_model="gpt-4.1-mini"),
    )
    engine.ensure_session(
        "support-bot",
        baseline="You are a helpful assistant.",
        kind="gepa_online",
        config={"online_proposer_min_rollouts": 20, "online_prune_min_rollouts": 20},
    )

Selection (who is best, promotion, rollback, pruning) is
:mod:`synth_middleware.engine.policy`; the config keys are
:class:`~synth_middleware.engine.config.SessionConfig`.
"""

from synth_middleware.engine._optimizer_options import OptimizerOptions
from synth_middleware.engine._optimizer_runner import OptimizerRunner
from synth_middleware.engine.config import SessionConfig, parse_session_config
from synth_middleware.engine.engine import Engine, RolloutsResult
from synth_middleware.engine.factory import is_postgres_url, open_store
from synth_middleware.engine.state import (
    CandidateState,
    Event,
    SessionStateMachine,
    best_candidate,
)
from synth_middleware.engine.store import SqliteStore, StorageError, Store, WriteTxn
from synth_middleware.wire import validate_session_id

__all__ = [
    "CandidateState",
    "Engine",
    "Event",
    "OptimizerOptions",
    "OptimizerRunner",
    "RolloutsResult",
    "SessionConfig",
    "SessionStateMachine",
    "SqliteStore",
    "StorageError",
    "Store",
    "WriteTxn",
    "best_candidate",
    "is_postgres_url",
    "open_store",
    "parse_session_config",
    "validate_session_id",
]
