"""The Banking77 intent-classification task and its container: the generic
classification task (:mod:`synth_middleware.demos.classify.task`) with Banking77's
own prompt.

One rollout: the query of ``seed`` (in the split named by ``env.config.split``,
default ``train``) goes to the model with the system prompt and the list of
intents; the model answers with a forced tool call ``banking77_classify``
whose ``intent`` is an enum of the 77 labels (or, with ``env.config.mode =
"text"``, in plain text, parsed). The reward is 1.0 when the answer names the
gold label, else 0.0; the expected label goes into the step's ``info`` and the
reward ``details`` (``expected``, ``predicted``, ``correct``), which is where
the optimizer reads it.

Serve it standalone with::

    synth-middleware container serve synth_middleware.demos.banking77.task:create_app --factory
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from synth_middleware.demos.banking77 import data as dataset
from synth_middleware.demos.classify.task import ClassifyTask, Prediction
from synth_middleware.demos.classify.task import task_definition as _generic_definition

__all__ = [
    "SYSTEM_PROMPT",
    "TOOL_NAME",
    "USER_TEMPLATE",
    "Banking77Task",
    "Prediction",
    "create_app",
    "task_definition",
]

TOOL_NAME = "banking77_classify"
SYSTEM_PROMPT = (
    "You are an expert banking assistant that classifies customer queries into banking "
    "intents. Given a customer message, respond with exactly one intent label from the "
    f"provided list using the `{TOOL_NAME}` tool."
)
USER_TEMPLATE = (
    "Customer query: {query}\n\nAvailable intents:\n{intents}\n\n"
    "Classify the query into exactly one of the intents above."
)


class Banking77Task(ClassifyTask):
    """The generic classification task with Banking77's prompt, user turn and tool
    (``banking77_classify`` with an ``intent`` enum)."""

    def __init__(self, labels: Sequence[str], *, system_prompt: str = SYSTEM_PROMPT) -> None:
        super().__init__(
            labels,
            system_prompt=system_prompt,
            user_template=USER_TEMPLATE,
            tool_name=TOOL_NAME,
            field="intent",
            tool_description="Classify a banking customer query into one Banking77 intent.",
        )

    @property
    def intents(self) -> str:
        """The intents, comma separated (as the user turn lists them)."""
        return self.label_list


def task_definition(
    data: dataset.Banking77,
    *,
    shuffle_seed: int = 0,
    system_prompt: str = SYSTEM_PROMPT,
) -> Any:
    """The :class:`~synth_middleware.offline.container.TaskDefinition` of Banking77.

    Splits ``train`` and ``test`` are the files' rows in a fixed pseudo-random
    order (``shuffle_seed``), so seeds ``0..n-1`` are a uniform sample.
    """
    return _generic_definition(
        data.as_labelled(),
        Banking77Task(data.labels, system_prompt=system_prompt),
        shuffle_seed=shuffle_seed,
        description="Banking77 intent classification: one query, 77 intents, reward 1 if exact.",
    )


def create_app(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    shuffle_seed: int | None = None,
    api_key: str | None = None,
    **settings: Any,
) -> Any:
    """The Banking77 container app (data from ``data_dir``/``$BANKING77_DIR``/the cache).

    ``shuffle_seed`` defaults to ``$BANKING77_SHUFFLE_SEED`` or 0; ``settings``
    are :class:`~synth_middleware.offline.container.ContainerSettings` fields.
    """
    from synth_middleware.offline.container import create_container_app

    if shuffle_seed is None:
        shuffle_seed = int(os.environ.get("BANKING77_SHUFFLE_SEED") or 0)
    data = dataset.load(data_dir)
    return create_container_app(
        task_definition(data, shuffle_seed=shuffle_seed), api_key=api_key, **settings
    )
