"""Containers (task apps): the contract an optimizer evaluates prompts against.

Build one from a task definition, serve it in-process or standalone, and call
it from the backend side::

    from synth_middleware.offline.container import (
        InProcessContainer, Outcome, TaskDefinition, create_container_app,
    )

    app = create_container_app(TaskDefinition(name="qa", splits={"train": rows}, rollout=fn))
    with InProcessContainer(app) as c:            # c.url, c.api_key
        ...

Standalone: ``synth-middleware container serve module:app``.
The container only ever sees the baseline prompt: during optimization its
``inference_url`` is the backend's proxy, which substitutes the candidate.
The app and the runners need the ``server`` extra (Starlette, uvicorn); names
are imported on first use, so importing this package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

_EXPORTS: dict[str, str] = {
    "ENV_API_KEY": "app",
    "ContainerSettings": "app",
    "LLMError": "app",
    "Outcome": "app",
    "RolloutContext": "app",
    "RolloutFn": "app",
    "TaskDefinition": "app",
    "chat_completions_url": "app",
    "create_container_app": "app",
    "ensure_environment_api_key": "app",
    "AsyncContainerClient": "client",
    "ContainerClient": "client",
    "ContainerError": "client",
    "ContainerUnreachable": "client",
    "RolloutFailed": "client",
    "RolloutTimeout": "client",
    "rollout_body": "client",
    "InvalidRolloutResponse": "models",
    "RolloutRequest": "models",
    "RolloutResponse": "models",
    "RolloutResult": "models",
    "parse_rollout_response": "models",
    "OnlineRolloutResult": "online",
    "OnlineRunner": "online",
    "InProcessContainer": "runner",
    "InProcessServer": "runner",
    "wait_healthy": "runner",
}

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
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(
            f"module 'synth_middleware.offline.container' has no attribute {name!r}"
        )
    value = getattr(importlib.import_module(f"synth_middleware.offline.container.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
