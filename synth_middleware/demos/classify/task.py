"""A text-classification task for any label set, and its container.

One rollout: the text of ``seed`` (in the split named by ``env.config.split``,
default ``train``) goes to the model with the system prompt (the baseline:
:func:`baseline_prompt`, a generic instruction listing the label names, built
from the label set alone) and a user turn ``Query: <text>``; the model answers
with a forced tool call whose one parameter is an enum of the labels (or,
with ``env.config.mode = "text"``, in plain text). The reward is 1.0 when the
label the answer names (:meth:`LabelMatcher.match`) is the expected label,
else 0.0; the expected label goes into the step's ``info`` and so into the
reward's metadata (``expected``, ``predicted``), which is where the
optimizer's reflective proposer reads it.

Serve it standalone with::

    CLASSIFY_TRAIN=train.csv CLASSIFY_TEST=test.csv \\
    synth-middleware container serve synth_middleware.demos.classify.task:create_app --factory
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from synth_middleware.demos._answers import json_string_values
from synth_middleware.demos.classify.data import Example, LabelledData, load_labelled

__all__ = [
    "DEFAULT_USER_TEMPLATE",
    "TOOL_NAME",
    "ClassifyTask",
    "LabelMatcher",
    "Prediction",
    "baseline_prompt",
    "create_app",
    "task_definition",
]

TOOL_NAME = "classify"
DEFAULT_USER_TEMPLATE = "Query: {query}"
_ANSWER_KEYS = ("label", "intent", "category", "class", "answer")


def baseline_prompt(labels: Sequence[str], *, tool_name: str = TOOL_NAME) -> str:
    """The generic baseline instruction: what to do and the label names, one per line
    (nothing about any particular dataset)."""
    listed = "\n".join(f"- {label}" for label in labels)
    return (
        f"Classify the user's query into exactly one of the following {len(labels)} labels:\n"
        f"{listed}\n\n"
        f"Answer with the `{tool_name}` tool, giving one label exactly as written above."
    )


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


class LabelMatcher:
    """Which known label an answer names.

    In order: the answer is a label (exactly, then ignoring case and surrounding
    quotes, backticks and a final period, then ignoring case, punctuation and
    spacing when that identifies one label); a JSON object's ``label``/
    ``intent``/``category``/``class``/``answer`` value (then any string value);
    else the longest label named as a whole phrase inside the answer.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._exact = set(self.labels)
        folded: dict[str, list[str]] = {}
        normed: dict[str, list[str]] = {}
        for label in self.labels:
            folded.setdefault(label.strip().casefold(), []).append(label)
            normed.setdefault(_norm(label), []).append(label)
        self._folded = {k: v[0] for k, v in folded.items() if len(v) == 1}
        self._normed = {k: v[0] for k, v in normed.items() if len(v) == 1 and k}
        self._search = sorted(self._normed, key=len, reverse=True)

    def _whole(self, text: str) -> str | None:
        if text in self._exact:
            return text
        t = text.strip().strip("`\"'").strip()
        if t.endswith(".") and t[:-1] in self._exact:
            return t[:-1]
        if t in self._exact:
            return t
        hit = self._folded.get(t.casefold()) or self._folded.get(t.rstrip(".").casefold())
        if hit is not None:
            return hit
        return self._normed.get(_norm(t))

    def match(self, answer: str) -> str | None:
        """The label ``answer`` names, or ``None``."""
        hit = self._whole(answer)
        if hit is not None:
            return hit
        values = json_string_values(answer, _ANSWER_KEYS)
        if values is not None:
            for value in values:
                hit = self._whole(value)
                if hit is not None:
                    return hit
            return None
        padded = f" {_norm(answer.strip())} "
        for cand in self._search:
            if f" {cand} " in padded:
                return self._normed[cand]
        return None


@dataclass(frozen=True, slots=True)
class Prediction:
    """A parsed answer: the label it names (``None`` if none), the raw answer text."""

    label: str | None
    raw: str


class ClassifyTask:
    """Prompt building, answer parsing and scoring for one label set (no I/O), shared
    by the container, the demo's Pattern B loop and the held-out evaluation.

    ``system_prompt`` defaults to :func:`baseline_prompt`; ``user_template`` may use
    ``{query}`` and ``{labels}`` (the label names, comma separated); the tool is
    ``tool_name`` with one enum parameter ``field``.
    """

    def __init__(
        self,
        labels: Sequence[str],
        *,
        system_prompt: str | None = None,
        user_template: str = DEFAULT_USER_TEMPLATE,
        tool_name: str = TOOL_NAME,
        field: str = "label",
        tool_description: str = "Classify the query into exactly one of the labels.",
    ) -> None:
        self.labels = tuple(labels)
        if len(set(self.labels)) < 2:
            raise ValueError("a classification task needs at least two distinct labels")
        self.matcher = LabelMatcher(self.labels)
        self.tool_name = tool_name
        self.field = field
        self.tool_description = tool_description
        self.user_template = user_template
        self.system_prompt = system_prompt or baseline_prompt(self.labels, tool_name=tool_name)
        self.label_list = ", ".join(self.labels)

    def user_message(self, query: str) -> str:
        """The user turn for one query."""
        return self.user_template.format(
            query=query, labels=self.label_list, intents=self.label_list
        )

    def messages(self, query: str, *, system_prompt: str | None = None) -> list[dict[str, str]]:
        """The baseline messages for one query."""
        return [
            {"role": "system", "content": system_prompt or self.system_prompt},
            {"role": "user", "content": self.user_message(query)},
        ]

    @property
    def tool(self) -> dict[str, Any]:
        """The function tool: one required string parameter, an enum of the labels."""
        return {
            "type": "function",
            "function": {
                "name": self.tool_name,
                "description": self.tool_description,
                "parameters": {
                    "type": "object",
                    "properties": {
                        self.field: {
                            "type": "string",
                            "enum": list(self.labels),
                            "description": "The label, exactly as listed.",
                        }
                    },
                    "required": [self.field],
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
            "tool_choice": {"type": "function", "function": {"name": self.tool_name}},
        }

    @property
    def prompt_template(self) -> dict[str, Any]:
        """The baseline prompt as a ``pattern`` (``{query}`` wildcard)."""
        return {
            "object": "pattern",
            "messages": [
                {"role": "system", "order": 0, "pattern": self.system_prompt, "name": "system"},
                {"role": "user", "order": 1, "pattern": self.user_template, "name": "query"},
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
        def get(key: str) -> Any:
            return msg.get(key) if isinstance(msg, Mapping) else getattr(msg, key, None)

        for call in get("tool_calls") or []:
            fn = (
                call.get("function")
                if isinstance(call, Mapping)
                else getattr(call, "function", None)
            )
            args = (
                fn.get("arguments") if isinstance(fn, Mapping) else getattr(fn, "arguments", None)
            )
            if isinstance(args, str):
                return Prediction(self._from_arguments(args), args)
        content = get("content")
        text = content if isinstance(content, str) else ""
        return Prediction(self.matcher.match(text) if text else None, text)

    def _from_arguments(self, args: str) -> str | None:
        try:
            data = json.loads(args)
        except ValueError:
            return self.matcher.match(args)
        if isinstance(data, dict) and isinstance(data.get(self.field), str):
            hit = self.matcher.match(data[self.field])
            if hit is not None:
                return hit
        return self.matcher.match(args)

    @staticmethod
    def reward(prediction: Prediction, gold: str) -> float:
        """1.0 when the answer names the expected label, else 0.0."""
        return 1.0 if prediction.label is not None and prediction.label == gold else 0.0


def task_definition(
    data: LabelledData,
    task: ClassifyTask | None = None,
    *,
    shuffle_seed: int = 0,
    description: str | None = None,
) -> Any:
    """The :class:`~synth_middleware.offline.container.TaskDefinition` of ``data``.

    Splits ``train`` and ``test`` are the files' rows in a fixed pseudo-random
    order (``shuffle_seed``), so seeds ``0..n-1`` are a uniform sample.
    """
    from synth_middleware.offline.container import Outcome, RolloutContext, TaskDefinition

    task = task or ClassifyTask(data.labels)
    splits = {
        "train": data.shuffled("train", shuffle_seed),
        "test": data.shuffled("test", shuffle_seed),
    }

    async def rollout(ctx: RolloutContext) -> Outcome:
        example: Example = ctx.instance
        system = _system_of(ctx.prompt_template) or task.system_prompt
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
        name=data.name,
        description=description
        or f"{data.name}: text classification into {len(data.labels)} labels, reward 1 if exact.",
        version="1.0",
        splits=splits,
        rollout=rollout,
        default_split="train",
        prompt_template=task.prompt_template,
        info={
            "dataset": {"labels": list(data.labels), "shuffle_seed": shuffle_seed},
            "rubric": {
                "outcome": {"criteria": "1.0 when the answer names the expected label, else 0.0"}
            },
            "inference": {"tool": task.tool_name, "modes": ["tool", "text"]},
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
                    for name in ("pattern", "content", "text"):
                        if isinstance(m.get(name), str):
                            return str(m[name])
    return None


def create_app(
    train: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    shuffle_seed: int | None = None,
    api_key: str | None = None,
    **settings: Any,
) -> Any:
    """The container app of a labelled dataset (files from the arguments or
    ``$CLASSIFY_TRAIN``/``$CLASSIFY_TEST``, columns from ``$CLASSIFY_TEXT_COL``/
    ``$CLASSIFY_LABEL_COL``); ``settings`` are
    :class:`~synth_middleware.offline.container.ContainerSettings` fields."""
    from synth_middleware.offline.container import create_container_app

    train = train or os.environ.get("CLASSIFY_TRAIN")
    test = test or os.environ.get("CLASSIFY_TEST")
    if not train or not test:
        raise ValueError("pass train= and test= (or set CLASSIFY_TRAIN and CLASSIFY_TEST)")
    if shuffle_seed is None:
        shuffle_seed = int(os.environ.get("CLASSIFY_SHUFFLE_SEED") or 0)
    data = load_labelled(
        train,
        test,
        text_col=text_col or os.environ.get("CLASSIFY_TEXT_COL") or "text",
        label_col=label_col or os.environ.get("CLASSIFY_LABEL_COL") or None,
    )
    return create_container_app(
        task_definition(data, shuffle_seed=shuffle_seed), api_key=api_key, **settings
    )
