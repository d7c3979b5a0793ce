"""Deprecated location: the containers now live in :mod:`synth_middleware.offline.container`.

Kept so that ``from synth_middleware.container import ...`` keeps working (no warning at
import: tests may run with ``-W error``); new code imports
``synth_middleware.offline.container``. Names still load on first use, as there, so
importing this package costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synth_middleware.offline import container as _container

if TYPE_CHECKING:
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
    from synth_middleware.offline.container.client import (
        AsyncContainerClient,
        ContainerClient,
        ContainerError,
        ContainerUnreachable,
        RolloutFailed,
        RolloutTimeout,
        rollout_body,
    )
    from synth_middleware.offline.container.models import (
        InvalidRolloutResponse,
        RolloutRequest,
        RolloutResponse,
        RolloutResult,
        parse_rollout_response,
    )
    from synth_middleware.offline.container.online import OnlineRolloutResult, OnlineRunner
    from synth_middleware.offline.container.runner import (
        InProcessContainer,
        InProcessServer,
        wait_healthy,
    )

__all__ = [
    "ENV_API_KEY",
    "AsyncContainerClient",
    "ContainerClient",
    "ContainerError",
    "ContainerSettings",
    "ContainerUnreachable",
    "InProcessContainer",
    "InProcessServer",
    "InvalidRolloutResponse",
    "LLMError",
    "OnlineRolloutResult",
    "OnlineRunner",
    "Outcome",
    "RolloutContext",
    "RolloutFailed",
    "RolloutFn",
    "RolloutRequest",
    "RolloutResponse",
    "RolloutResult",
    "RolloutTimeout",
    "TaskDefinition",
    "chat_completions_url",
    "create_container_app",
    "ensure_environment_api_key",
    "parse_rollout_response",
    "rollout_body",
    "wait_healthy",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'synth_middleware.container' has no attribute {name!r}")
    value = getattr(_container, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
