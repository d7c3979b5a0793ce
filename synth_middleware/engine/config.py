"""One session-configuration model, in the hosted API's dialect.

The hosted online optimizers take their settings from a TOML/JSON config
(``config_body`` / ``overrides`` of ``POST /api/v1/online/sessions``). Its
keys are our public dialect: ``online_proposer_min_rollouts`` (alias
``min_proposal_rollouts``), ``online_proposer_max_candidates``,
``online_rollouts_per_candidate``, ``online_prune_min_rollouts``,
``online_prune_threshold``, ``instructions_per_batch``, ``proposer_model``,
``proposer_url``, ... Both the flat form and the hosted nested form
(``[prompt_learning.mipro]`` / ``[prompt_learning.gepa]`` with a
``[...proposer]`` table) are accepted: see :func:`flatten_config`.

Unknown keys are kept (other tools' settings travel in the same config), known
keys are type-checked, and an error names the key::

    cfg = parse_session_config({"online_prune_min_rollouts": "many"})
    # InvalidRequestError: config.online_prune_min_rollouts: Input should be a valid integer...

A proposer API key is never taken from a config (it would be stored in the
event log and could come from any request): ``proposer_api_key`` must be
empty; keys come from the environment (see
:mod:`synth_middleware.engine.proposer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from synth_middleware.errors import InvalidRequestError

__all__ = ["SessionConfig", "flatten_config", "parse_session_config"]

# Keys of the hosted nested ``proposer`` table and the flat keys they map to.
_PROPOSER_KEYS = {
    "model": "proposer_model",
    "url": "proposer_url",
    "inference_url": "proposer_url",
    "temperature": "proposer_temperature",
    "max_tokens": "proposer_max_tokens",
    "timeout": "proposer_timeout",
    "instructions_per_batch": "instructions_per_batch",
    "api_key": "proposer_api_key",
}


def _int(default: int, *aliases: str, ge: int = 0, description: str = "") -> Any:
    return Field(
        default,
        ge=ge,
        strict=True,
        validation_alias=AliasChoices(*aliases) if aliases else None,
        description=description,
    )


class SessionConfig(BaseModel):
    """Validated settings of one online session (selection policy and optimizer).

    Every field has a default, so ``SessionConfig()`` is a working config.
    Extra keys are allowed and kept in ``model_extra``.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    # -- selection policy ------------------------------------------------------
    min_rollouts_for_best: int = _int(
        20,
        "min_rollouts_for_best",
        "online_promotion_min_rollouts",
        description="rewards a candidate needs before it can be named best",
    )
    promotion_confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        validation_alias=AliasChoices("promotion_confidence", "online_promotion_confidence"),
        description="1 - the chance that a generation ever names a challenger not truly better "
        "than the baseline (anytime-valid, checked after every reward)",
    )
    online_promotion_bonferroni: bool = Field(
        True,
        strict=True,
        description="spend the error level over the generation's challengers (the k-th is "
        "tested at alpha / (k (k + 1))); off tests each at alpha",
    )
    online_prune_min_rollouts: int = _int(
        20, description="rewards a candidate needs before it can be pruned"
    )
    online_prune_confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="P(mean below online_prune_threshold) needed to prune"
    )
    online_prune_margin: float = Field(
        0.01,
        ge=0.0,
        description="accepted for older configs; pruning now needs anytime-valid evidence "
        "that a candidate is worse than the baseline or the named best",
    )
    online_routing: Literal["thompson", "top_two"] = Field(
        "thompson", description="routing: Thompson sampling or top-two Thompson, with floors"
    )
    online_baseline_floor: float = Field(
        0.2,
        ge=0.0,
        le=0.5,
        description="share of traffic the reference keeps while a challenger is unresolved: "
        "the baseline until a challenger is named, then the named best",
    )
    online_routing_floor: float = Field(
        0.01, ge=0.0, le=0.1, description="share of traffic every active candidate keeps"
    )
    online_screen_probability: float = Field(
        0.9,
        ge=0.0,
        lt=1.0,
        description="a challenger enters the confirmatory test (engine.policy, Screening) when "
        "its posterior probability of beating the baseline reaches this; 0: every challenger "
        "is tested from its creation",
    )
    online_prune_threshold: float | None = Field(
        None,
        description="absolute reward floor: prune a candidate whose mean reward is below it "
        "with probability >= online_prune_confidence",
    )

    # -- optimizer trigger -------------------------------------------------------
    online_optimizer_enabled: bool = Field(True, strict=True)
    online_proposer_min_rollouts: int = _int(
        20,
        "online_proposer_min_rollouts",
        "min_proposal_rollouts",
        "online_proposer_min_rewards",
        description="rewards in the current generation before the first proposal",
    )
    online_proposer_max_candidates: int = _int(
        50, description="the most candidates the optimizer adds per generation"
    )
    online_max_live_candidates: int = _int(
        6, ge=1, description="the most active optimizer candidates at once (besides baseline)"
    )
    online_rollouts_per_candidate: int = _int(
        10, ge=1, description="rewards a new candidate gets before it counts as evaluated"
    )
    online_parallel_trials: int = _int(2, ge=1, description="candidates under evaluation at once")
    online_dormant_probability: float = Field(
        0.01,
        ge=0.0,
        lt=0.5,
        description="a candidate whose P(best) is below this gets (almost) no traffic from "
        "Thompson routing: its evaluation counts as done and it does not hold a live slot",
    )
    online_retire_min_rollouts: int = _int(
        5,
        ge=1,
        description="accepted for older configs; candidates are no longer retired for a low "
        "P(best): only anytime-valid evidence archives them (engine.policy)",
    )
    online_max_active_candidates: int = _int(
        20,
        ge=1,
        description="beyond this many active optimizer candidates, dormant ones are retired",
    )
    online_proposal_spacing: float = Field(
        1.0,
        ge=1.0,
        le=100.0,
        description="a proposal round waits until the generation's rewards reach this multiple "
        "of their count at the last proposal (2.0: proposals after 40, 80, 160, ... rewards, "
        "each written from twice the data of the one before); 1.0: no spacing",
    )
    online_history_rollouts: int = _int(
        2000, ge=10, description="recent rollouts an optimizer round reads"
    )

    # -- proposer ------------------------------------------------------------------
    proposer_model: str | None = Field(None, min_length=1, max_length=200)
    proposer_url: str | None = Field(None, min_length=1, max_length=2000)
    proposer_temperature: float = Field(0.7, ge=0.0, le=2.0)
    proposer_max_tokens: int = _int(1024, ge=16)
    proposer_timeout: float = Field(60.0, gt=0.0, le=600.0)
    proposer_api_key: str | None = Field(
        None, description="must be empty: keys come from the environment only"
    )

    # -- MIPRO online --------------------------------------------------------------
    instructions_per_batch: int = _int(2, ge=1)
    max_instructions: int = _int(16, ge=1)
    max_bootstrapped_demos: int = _int(3, ge=1)
    demo_sets_per_batch: int = _int(2, ge=0)
    max_demo_sets: int = _int(8, ge=0)
    demo_min_reward: float | None = Field(
        None,
        description="a trace is a demo candidate when its reward is at least this "
        "(default: the top of the observed rewards)",
    )
    proposer_max_examples: int = _int(
        3,
        ge=1,
        description="high-reward rollouts (distinct inputs, highest first) shown in a MIPRO "
        "instruction proposal prompt: what the instruction already gets right",
    )
    proposer_max_failures: int = _int(
        8,
        ge=1,
        description="low-reward rollouts (distinct inputs, lowest first) shown in a MIPRO "
        "instruction proposal prompt: what the new instruction must fix",
    )
    demo_format: Literal["text", "messages"] = Field(
        "text",
        description="text: demos appended to the instruction; messages: a transformation "
        "with example_injections",
    )

    # -- GEPA online ---------------------------------------------------------------
    reflection_minibatch_size: int = _int(3, ge=1)
    use_merge: bool = Field(False, strict=True)
    max_merge_invocations: int = _int(5)
    gepa_hash_buckets: int = _int(
        16, ge=1, description="buckets for inputs with no bucket and no expected label"
    )

    @model_validator(mode="before")
    @classmethod
    def _nested_proposer(cls, data: Any) -> Any:
        """Accept the hosted ``proposer = {model, temperature, ...}`` table."""
        if not isinstance(data, Mapping):
            return data
        nested = data.get("proposer")
        if not isinstance(nested, Mapping):
            return data
        out = dict(data)
        for key, flat in _PROPOSER_KEYS.items():
            if key in nested and flat not in data:
                out[flat] = nested[key]
        return out

    @field_validator("proposer_api_key")
    @classmethod
    def _no_key(cls, value: str | None) -> str | None:
        if value:
            raise ValueError(
                "API keys are never taken from a session config; set SYNTH_PROPOSER_API_KEY "
                "(or OPENAI_API_KEY) in the backend's environment"
            )
        return None

    @field_validator("online_prune_min_rollouts")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value


def flatten_config(data: Mapping[str, Any], kind: str | None = None) -> dict[str, Any]:
    """The flat key space from a hosted-shape config.

    ``{"prompt_learning": {"gepa": {...}}}`` or ``{"gepa": {...}}`` (``mipro``
    likewise) is lifted to the top level; the section matching ``kind``
    (``"gepa_online"`` -> ``gepa``) wins when both are present. Top-level flat
    keys override the lifted ones.
    """
    data = dict(data)
    scopes: list[Mapping[str, Any]] = []
    pl = data.get("prompt_learning")
    if isinstance(pl, Mapping):
        scopes.append(pl)
    scopes.append(data)
    algos = ["mipro", "gepa"]
    if kind:
        algo = kind.split("_", 1)[0]
        if algo in algos:
            algos.remove(algo)
            algos.append(algo)  # applied last: wins
    lifted: dict[str, Any] = {}
    for scope in scopes:
        for algo in algos:
            section = scope.get(algo)
            if isinstance(section, Mapping):
                lifted.update(section)
    return {**lifted, **data}


def parse_session_config(data: Mapping[str, Any] | None, kind: str | None = None) -> SessionConfig:
    """Validate a session config; :class:`InvalidRequestError` names the offending key(s).

    Accepts flat and hosted nested shapes (:func:`flatten_config`).
    """
    if data is None:
        return SessionConfig()
    if not isinstance(data, Mapping):
        raise InvalidRequestError("config must be a mapping")
    try:
        return SessionConfig.model_validate(flatten_config(data, kind))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or "config"
            problems.append(f"config.{loc}: {err.get('msg')}")
        raise InvalidRequestError("; ".join(problems)) from None
