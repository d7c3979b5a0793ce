"""How an engine runs its online optimizers (:class:`OptimizerOptions`).

Its own module, below both :mod:`synth_middleware.engine.engine` (which takes it
in ``Engine(optimizer=...)``) and the runner that reads it, so neither imports
the other for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from synth_middleware.engine.proposer import ClientFactory

__all__ = ["OptimizerOptions"]


@dataclass(frozen=True, slots=True)
class OptimizerOptions:
    """How an :class:`~synth_middleware.engine.Engine` runs its optimizers.

    ``proposer_client``: an OpenAI-compatible client for sessions that name no
    ``proposer_url`` (in-process use: the app's own client).
    ``proposer_model``: the model when neither the session config nor
    ``SYNTH_PROPOSER_MODEL`` names one. ``background=False`` runs rounds only
    when :meth:`~synth_middleware.engine.OptimizerRunner.step` is called (tests, scripts).
    """

    proposer_client: Any = None
    proposer_model: str | None = None
    env: Mapping[str, str] | None = None
    client_factory: ClientFactory | None = None
    interval: float = 1.0
    scan_interval: float = 15.0
    backoff_initial: float = 2.0
    backoff_max: float = 300.0
    lease_seconds: float = 300.0
    seed: int | None = None
    background: bool = True
    # Replicas: ``session_gate(session_id)`` is a context manager yielding whether this
    # process may do the session's owner-only work now (it holds the lease); the
    # background loop steps a session only inside it (engine/replicas.py).
    session_gate: Callable[[str], AbstractContextManager[bool]] | None = None
