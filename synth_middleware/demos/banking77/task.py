"""The Banking77 intent-classification task and its container.

One rollout: the query of ``seed`` (in the split named by ``env.config.split``,
default ``train``) goes to the model with the system prompt and the list of
intents; the model answers with a forced tool call ``banking77_classify``
whose ``intent`` is an enum of the 77 labels (or, with ``env.config.mode =
"text"``, in plain text, parsed). The reward is 1.0 when the normalised
prediction equals the gold label, else 0.0; the expected label goes into the
step's ``info`` and the reward ``details`` (``expected``, ``predicted``,
``correct``), which is where the optimizer reads it.

Serve it standalone with::

    synth-middleware container serve synth_middleware.demos.banking77.task:create_app --factory
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from synth_middleware.demos.banking77 import data as dataset
from synth_middleware.demos.banking77.parsing import LabelSet, label_of, normalize_label

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


@dataclass(frozen=True, slots=True)
class Prediction:
    """A parsed answer: the label it names (``None`` if none), the raw answer text."""

    label: str | None
    raw: str


class Banking77Task:
    """Prompt building, answer parsing and scoring (no I/O), shared by the container,
    the demo's Pattern B loop and the held-out evaluation."""

    def __init__(self, labels: Sequence[str], *, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.labels = tuple(labels)
        self.label_set = LabelSet(self.labels)
        self.system_prompt = system_prompt
        self.intents = ", ".join(self.labels)

    def user_message(self, query: str) -> str:
        """The user turn: the query and the list of intents."""
        return USER_TEMPLATE.format(query=query, intents=self.intents)

    def messages(self, query: str, *, system_prompt: str | None = None) -> list[dict[str, str]]:
        """The baseline messages for one query."""
        return [
            {"role": "system", "content": system_prompt or self.system_prompt},
            {"role": "user", "content": self.user_message(query)},
        ]

    @property
    def tool(self) -> dict[str, Any]:
        """The ``banking77_classify`` function tool (``intent``: enum of the labels)."""
        return {
            "type": "function",
            "function": {
                "name": TOOL_NAME,
                "description": "Classify a banking customer query into one Banking77 intent.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "intent": {
                            "type": "string",
                            "enum": list(self.labels),
                            "description": "The intent label, exactly as listed.",
                        }
                    },
                    "required": ["intent"],
                    "additionalProperties": False,
                },
            },
        }

    def request_params(self, *, mode: str = "tool") -> dict[str, Any]:
        """Extra chat-completions parameters: the forced tool call (``mode="tool"``) or none."""
        if mode == "text":
            return {}
        return {
            "tools": [self.tool],
            "tool_choice": {"type": "function", "function": {"name": TOOL_NAME}},
        }

    @property
    def prompt_template(self) -> dict[str, Any]:
        """The baseline prompt as a ``pattern`` (``{query}`` and ``{intents}`` wildcards)."""
        return {
            "object": "pattern",
            "messages": [
                {"role": "system", "order": 0, "pattern": self.system_prompt, "name": "system"},
                {"role": "user", "order": 1, "pattern": USER_TEMPLATE, "name": "query"},
            ],
        }

    def parse(self, completion: Mapping[str, Any]) -> Prediction:
        """The label a chat completion names (tool arguments first, then text)."""
        try:
            msg = completion["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return Prediction(None, "")
        return self.parse_message(msg)

    def parse_message(self, msg: Any) -> Prediction:
        """The label one assistant message names (a dict or an OpenAI SDK object)."""
        get = msg.get if isinstance(msg, Mapping) else lambda k: getattr(msg, k, None)
        calls = get("tool_calls") or []
        for call in calls:
            fn = (
                call.get("function")
                if isinstance(call, Mapping)
                else getattr(call, "function", None)
            )
            args = (
                fn.get("arguments") if isinstance(fn, Mapping) else getattr(fn, "arguments", None)
            )
            if isinstance(args, str):
                label = label_of(args, self.label_set)
                return Prediction(label, args)
        content = get("content")
        text = content if isinstance(content, str) else ""
        return Prediction(label_of(text, self.label_set) if text else None, text)

    @staticmethod
    def reward(prediction: Prediction, gold: str) -> float:
        """1.0 when the normalised prediction equals the normalised gold label."""
        if prediction.label is None:
            return 0.0
        return 1.0 if normalize_label(prediction.label) == normalize_label(gold) else 0.0


def task_definition(
    data: dataset.Banking77,
    *,
    shuffle_seed: int = 0,
    system_prompt: str = SYSTEM_PROMPT,
) -> Any:
    """The :class:`~synth_middleware.container.TaskDefinition` of Banking77.

    Splits ``train`` and ``test`` are the files' rows in a fixed pseudo-random
    order (``shuffle_seed``), so seeds ``0..n-1`` are a uniform sample.
    """
    from synth_middleware.container import Outcome, RolloutContext, TaskDefinition

    task = Banking77Task(data.labels, system_prompt=system_prompt)
    splits = {
        "train": data.shuffled("train", shuffle_seed),
        "test": data.shuffled("test", shuffle_seed),
    }

    async def rollout(ctx: RolloutContext) -> Outcome:
        example: dataset.Example = ctx.instance
        template = ctx.prompt_template
        system = _system_of(template) or task.system_prompt
        mode = str(ctx.env_config.get("mode") or "tool")
        messages = task.messages(example.text, system_prompt=system)
        completion = await ctx.chat(messages, **task.request_params(mode=mode))
        pred = task.parse(completion)
        reward = task.reward(pred, example.label)
        msg = completion["choices"][0]["message"]
        return Outcome(
            reward=reward,
            obs={"query": example.text, "index": ctx.seed, "split": ctx.split},
            tool_calls=list(msg.get("tool_calls") or []),
            info={
                "expected": example.label,
                "predicted": pred.label if pred.label is not None else pred.raw[:200],
                "correct": reward == 1.0,
                "model": completion.get("model"),
            },
        )

    return TaskDefinition(
        name="banking77",
        description="Banking77 intent classification: one query, 77 intents, reward 1 if exact.",
        version="1.0",
        splits=splits,
        rollout=rollout,
        default_split="train",
        prompt_template=task.prompt_template,
        info={
            "dataset": {"labels": list(data.labels), "shuffle_seed": shuffle_seed},
            "rubric": {
                "outcome": {
                    "criteria": "1.0 when the predicted intent equals the gold label after "
                    "normalisation (case and punctuation), else 0.0"
                }
            },
            "inference": {"tool": TOOL_NAME, "modes": ["tool", "text"]},
        },
        instance_info=lambda split, seed, ex: {"query": ex.text},
    )


def _system_of(template: Mapping[str, Any] | None) -> str | None:
    if not isinstance(template, Mapping):
        return None
    for key in ("messages", "sections", "prompt_sections"):
        items = template.get(key)
        if isinstance(items, list):
            for m in items:
                if isinstance(m, Mapping) and m.get("role") in ("system", "developer"):
                    for field in ("pattern", "content", "text"):
                        if isinstance(m.get(field), str):
                            return str(m[field])
    return None


def create_app(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    shuffle_seed: int | None = None,
    api_key: str | None = None,
    **settings: Any,
) -> Any:
    """The Banking77 container app (data from ``data_dir``/``$BANKING77_DIR``/the cache).

    ``shuffle_seed`` defaults to ``$BANKING77_SHUFFLE_SEED`` or 0; ``settings``
    are :class:`~synth_middleware.container.ContainerSettings` fields.
    """
    from synth_middleware.container import create_container_app

    if shuffle_seed is None:
        shuffle_seed = int(os.environ.get("BANKING77_SHUFFLE_SEED") or 0)
    data = dataset.load(data_dir)
    return create_container_app(
        task_definition(data, shuffle_seed=shuffle_seed), api_key=api_key, **settings
    )
