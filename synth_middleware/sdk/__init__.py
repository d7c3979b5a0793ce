"""Deprecated location: the session SDK now lives in :mod:`synth_middleware.offline.sdk`.

Kept so that ``from synth_middleware.sdk import SynthClient`` keeps working (no warning
at import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.sdk``.
"""

from synth_middleware.offline.sdk import (
    AsyncSynthClient,
    ConfigError,
    GepaOnlineSession,
    MiproOnlineSession,
    OnlineSession,
    OptimizationConfig,
    SynthClient,
    load_config,
    parse_config,
)

__all__ = [
    "AsyncSynthClient",
    "ConfigError",
    "GepaOnlineSession",
    "MiproOnlineSession",
    "OnlineSession",
    "OptimizationConfig",
    "SynthClient",
    "load_config",
    "parse_config",
]
