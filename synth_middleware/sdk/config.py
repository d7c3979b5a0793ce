"""Deprecated location: the SDK's config models now live in
:mod:`synth_middleware.offline.sdk.config`.

Kept so that imports of ``synth_middleware.sdk.config`` keep working (no warning at import:
tests may run with ``-W error``); new code imports ``synth_middleware.offline.sdk.config``.
"""

from __future__ import annotations

from synth_middleware.offline.sdk.config import (
    ALGORITHMS,
    ConfigError,
    InitialPrompt,
    MessagePattern,
    OptimizationConfig,
    PolicyConfig,
    PromptLearningConfig,
    load_config,
    parse_config,
)

__all__ = [
    "ALGORITHMS",
    "ConfigError",
    "InitialPrompt",
    "MessagePattern",
    "OptimizationConfig",
    "PolicyConfig",
    "PromptLearningConfig",
    "load_config",
    "parse_config",
]
