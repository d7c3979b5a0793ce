"""Deprecated location: the container app and its task definition now live in
:mod:`synth_middleware.offline.container.app`.

Kept so that imports of ``synth_middleware.container.app`` keep working (no warning at
import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.container.app``.
"""

from __future__ import annotations

from synth_middleware.offline.container.app import (
    ENV_API_KEY,
    ContainerSettings,
    LLMError,
    Outcome,
    RolloutContext,
    RolloutFn,
    TaskDefinition,
    chat_completions_url,
    create_container_app,
    ensure_environment_api_key,
)

__all__ = [
    "ENV_API_KEY",
    "ContainerSettings",
    "LLMError",
    "Outcome",
    "RolloutContext",
    "RolloutFn",
    "TaskDefinition",
    "chat_completions_url",
    "create_container_app",
    "ensure_environment_api_key",
]
