"""The session SDK: create online sessions, read candidates, report rewards.

::

    from synth_middleware.offline.sdk import SynthClient

    session = SynthClient().optimization.online.create(kind="gepa_online", config_path="gepa.toml")
    urls = session.get_prompt_urls()          # Pattern A: call urls["chat_completions_url"]
    state = session.get_status()              # Pattern B: fetch the best candidate yourself

Works against ``synth-middleware serve`` and the hosted API alike (only the
URL changes). Needs only ``httpx`` and ``pydantic``.
"""

from synth_middleware.offline.sdk.client import AsyncSynthClient, SynthClient
from synth_middleware.offline.sdk.config import (
    ConfigError,
    OptimizationConfig,
    load_config,
    parse_config,
)
from synth_middleware.offline.sdk.sessions import (
    GepaOnlineSession,
    MiproOnlineSession,
    OnlineSession,
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
