"""Optimization configs in TOML (``gepa.toml``, ``mipro.toml``), validated with pydantic.

::

    [prompt_learning]
    algorithm = "gepa"                 # or "mipro"
    system_name = "banking77"

    [prompt_learning.initial_prompt]   # the baseline the optimizer starts from
    messages = [
      { role = "system", pattern = "You are a banking assistant. Classify the intent." },
      { role = "user", pattern = "{query}" },
    ]

    [prompt_learning.policy]
    model = "gpt-4.1-nano"

    [prompt_learning.gepa]             # the engine's settings for this algorithm
    min_rollouts_for_best = 20         # rewards a candidate needs before it can be "best"
    min_proposal_rollouts = 20         # rewards before the first proposal
    proposer_model = "gpt-4.1-mini"

Unknown keys are errors (a typo must not silently fall back to a default);
:class:`ConfigError` names each bad key with its full path, what is wrong,
and the closest known key. Values of the algorithm section are checked by the
engine's own model (:class:`~synth_middleware.engine.config.SessionConfig`),
so the SDK and the server agree on what is valid.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synth_middleware.errors import SynthError

ALGORITHMS = {"gepa": "gepa_online", "mipro": "mipro_online"}
_SECRET_WORDS = ("key", "secret", "token", "password")  # never echo these values


class ConfigError(SynthError, ValueError):
    """A config file or dict is invalid; ``problems`` lists one line per bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid config:\n{lines}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessagePattern(_Section):
    """One message of the initial prompt; ``{placeholders}`` match the app's values."""

    role: Literal["system", "developer", "user", "assistant"]
    pattern: str | None = None
    content: str | None = None
    name: str | None = None
    order: int = 0

    @model_validator(mode="after")
    def _one_text(self) -> MessagePattern:
        if (self.pattern is None) == (self.content is None):
            raise ValueError("give exactly one of pattern or content")
        return self


class InitialPrompt(_Section):
    """The baseline prompt: plain ``text``, or ``messages`` patterns."""

    id: str | None = None
    name: str | None = None
    text: str | None = None
    messages: list[MessagePattern] = Field(default_factory=list)
    wildcards: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_prompt(self) -> InitialPrompt:
        if self.text is None and not self.messages:
            raise ValueError("give text or at least one message")
        return self


class PolicyConfig(_Section):
    """The model the app calls (informational for the optimizer)."""

    model: str | None = None
    provider: str | None = None
    inference_url: str | None = Field(default=None, pattern=r"^https?://")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class PromptLearningConfig(_Section):
    """``[prompt_learning]``.

    The optimizer's settings live in the section named like the algorithm
    (``[prompt_learning.gepa]`` or ``[prompt_learning.mipro]``), in the
    engine's dialect (see :class:`~synth_middleware.engine.config.SessionConfig`):
    ``min_rollouts_for_best``, ``online_proposer_min_rollouts`` (alias
    ``min_proposal_rollouts``), ``proposer_model`` or a ``[...proposer]`` table,
    ``instructions_per_batch``, ``reflection_minibatch_size``, ... The hosted
    offline keys (``num_generations``, ``population``, ...) are accepted too.
    """

    algorithm: Literal["gepa", "mipro"]
    system_name: str | None = Field(default=None, max_length=200)
    task_app_url: str | None = None
    container_url: str | None = None
    env_name: str | None = None
    initial_prompt: InitialPrompt | None = None
    policy: PolicyConfig | None = None
    gepa: dict[str, Any] | None = None
    mipro: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _section_matches(self) -> PromptLearningConfig:
        other = "mipro" if self.algorithm == "gepa" else "gepa"
        if getattr(self, other) is not None:
            raise ValueError(
                f"[prompt_learning.{other}] is set but algorithm is {self.algorithm!r}"
            )
        return self


class OptimizationConfig(_Section):
    """A whole config file."""

    prompt_learning: PromptLearningConfig

    @property
    def kind(self) -> str:
        """The session kind: ``gepa_online`` or ``mipro_online``."""
        return ALGORITHMS[self.prompt_learning.algorithm]

    def to_body(self) -> dict[str, Any]:
        """The ``config_body`` sent to the backend (unset keys left out)."""
        return self.model_dump(mode="json", exclude_none=True)


# Keys of the hosted offline optimizers, accepted (and passed on) in an algorithm section.
_HOSTED_SECTION_KEYS = frozenset(
    {
        "mode",
        "env_name",
        "proposer",
        "proposer_effort",
        "proposer_output_tokens",
        "num_generations",
        "children_per_generation",
        "minibatch_size",
        "pareto_set_size",
        "population",
        "rollout",
        "evaluation",
        "num_candidates",
        "num_trials",
        "max_labeled_demos",
    }
)


def _section_keys() -> list[str]:
    """Keys an algorithm section may hold: the engine's settings (and aliases) and hosted keys."""
    from synth_middleware.engine.config import SessionConfig

    keys: list[str] = []
    for name, info in SessionConfig.model_fields.items():
        keys.append(name)
        alias = info.validation_alias
        for choice in getattr(alias, "choices", ()):
            if isinstance(choice, str) and choice not in keys:
                keys.append(choice)
    return keys + sorted(_HOSTED_SECTION_KEYS)


def _section_problems(section: dict[str, Any], where: str) -> list[str]:
    """Unknown keys (with the closest known one) and bad values of an algorithm section."""
    from synth_middleware.engine.config import SessionConfig

    known = _section_keys()
    problems = []
    for key in section:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
            tip = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{where}.{key}: unknown key{tip}")
    if section.get("mode", "online") not in ("online", "offline"):
        problems.append(f"{where}.mode: must be 'online' or 'offline' (got {section['mode']!r})")
    try:
        SessionConfig.model_validate(section)
    except ValidationError as exc:
        for e in exc.errors():
            problems.append(_problem(e, prefix=f"{where}."))
    return problems


# -- errors that name the key -----------------------------------------------------------


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = OptimizationConfig
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        model = _model_of(info.annotation) if info is not None else None
    return list(model.model_fields) if model is not None else []


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _problem(error: Any, *, prefix: str = "") -> str:
    loc = tuple(error.get("loc", ()))
    where = prefix + _path(loc) if loc else prefix.rstrip(".") or _path(loc)
    kind = error.get("type")
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(loc[:-1]), n=1)
        tip = f" (did you mean {hint[0]!r}?)" if hint else ""
        known = ", ".join(_known_keys(loc[:-1]))
        return f"{where}: unknown key{tip}; known keys here: {known}"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    secret = any(w in str(loc[-1]).lower() for w in _SECRET_WORDS) if loc else False
    if (
        "input" in error
        and not secret
        and kind not in ("model_type", "dict_type")
        and not isinstance(error["input"], dict)
    ):
        return f"{where}: {message} (got {error['input']!r:.60})"
    return f"{where}: {message}"


def parse_config(data: Any, *, source: str = "config") -> OptimizationConfig:
    """Validate a config dict (raises :class:`ConfigError` naming every bad key)."""
    if isinstance(data, OptimizationConfig):
        return data
    try:
        config = OptimizationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_problem(e) for e in exc.errors()]) from None
    pl = config.prompt_learning
    section = getattr(pl, pl.algorithm)
    if section:
        problems = _section_problems(section, f"prompt_learning.{pl.algorithm}")
        if problems:
            raise ConfigError(source, problems)
    return config


def load_config(path: str | Path) -> OptimizationConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [f"not valid TOML: {exc}"]) from None
    return parse_config(data, source=str(p))
