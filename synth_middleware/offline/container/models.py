"""The task-app (container) wire shapes, as pydantic models.

Request::

    {"trace_correlation_id": "run-1",
     "env": {"seed": 0, "config": {}},
     "policy": {"config": {"model": "gpt-4.1-nano",
                           "inference_url": "http://backend/.../proxy/ro_1",
                           "prompt_template": {...}}}}      # baseline only, optional

Response (``reward_info``, the newer SDKs' name; the vendor's ``RolloutResponse``
reads ``metrics`` as an alias of it and refuses an answer carrying both)::

    {"trace_correlation_id": "run-1",
     "trajectories": [{"env_id": "banking77::train::0", "policy_id": "policy",
                       "steps": [{"obs": {...}, "tool_calls": [...], "reward": 1.0,
                                  "done": true, "info": {...}}],
                       "length": 1, "inference_url": "..."}],
     "reward_info": {"episode_rewards": [1.0], "outcome_reward": 1.0, "num_steps": 1,
                     "num_episodes": 1, "outcome_score": 1.0, "details": {...}},
     "aborted": false, "ops_executed": 1}

Requests ignore unknown fields (peers send more) but type-check the ones we
know. :func:`parse_rollout_response` reads an answer from any peer and
accepts ``metrics`` or ``reward_info`` (whichever carries ``outcome_reward``),
or synth-containers' ``{status, summary: {outcome_reward | reward | score}}``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "InvalidRolloutResponse",
    "PolicyConfig",
    "RolloutEnv",
    "RolloutMetrics",
    "RolloutPolicy",
    "RolloutRequest",
    "RolloutResponse",
    "RolloutResult",
    "RolloutStep",
    "Trajectory",
    "parse_rollout_response",
]

MAX_ID_CHARS = 256


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class RolloutEnv(_Lenient):
    """``env``: which instance to run (``seed`` indexes the task's dataset)."""

    seed: int = Field(0, ge=0, description="index into the task's dataset (split in config)")
    config: dict[str, Any] = Field(default_factory=dict)
    env_name: str | None = Field(None, max_length=200)


class PolicyConfig(_Lenient):
    """``policy.config``: the model to call and where.

    ``inference_url`` is a chat-completions base URL (the container appends
    ``/chat/completions`` unless it is already there); during optimization it
    is the backend's proxy, which substitutes the candidate prompt, so the
    container only ever holds the baseline ``prompt_template``.
    """

    model: str | None = Field(None, max_length=200)
    inference_url: str = Field(min_length=1, max_length=4096)
    prompt_template: dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=100_000)

    @field_validator("inference_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value


class RolloutPolicy(_Lenient):
    """``policy``: ``{policy_id?, policy_name?, config}``."""

    policy_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    policy_name: str | None = Field(None, max_length=MAX_ID_CHARS)
    config: PolicyConfig


class RolloutRequest(_Lenient):
    """``POST /rollout``: run one episode."""

    trace_correlation_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    run_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    env: RolloutEnv = Field(default_factory=RolloutEnv)
    policy: RolloutPolicy
    timeout_seconds: float | None = Field(None, gt=0, le=3600)


class RolloutStep(_Lenient):
    """One step of a trajectory."""

    obs: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    reward: float | None = None
    done: bool = True
    info: dict[str, Any] = Field(default_factory=dict)


class Trajectory(_Lenient):
    """The steps of one episode."""

    env_id: str
    policy_id: str
    steps: list[RolloutStep]
    length: int
    inference_url: str | None = None


class RolloutMetrics(_Lenient):
    """The reward summary, sent as both ``metrics`` and ``reward_info``."""

    episode_rewards: list[float]
    outcome_reward: float
    num_steps: int
    num_episodes: int = 1
    outcome_score: float
    details: dict[str, Any] = Field(default_factory=dict)


class RolloutResponse(_Lenient):
    """``POST /rollout``'s answer."""

    trace_correlation_id: str
    run_id: str | None = None
    trajectories: list[Trajectory]
    reward_info: RolloutMetrics
    metrics: RolloutMetrics | None = None  # older peers' name; never sent with reward_info
    aborted: bool = False
    ops_executed: int = 1


class InvalidRolloutResponse(ValueError):
    """A peer's ``/rollout`` answer has no usable reward (or is not a rollout answer)."""


class RolloutResult(BaseModel):
    """What a backend keeps from a rollout answer, whatever its dialect."""

    model_config = ConfigDict(frozen=True)

    trace_correlation_id: str | None
    reward: float
    aborted: bool
    details: dict[str, Any]
    raw: dict[str, Any]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_FAILED_STATUSES = frozenset({"failed", "error", "errored", "cancelled", "canceled", "aborted"})


def parse_rollout_response(data: Any) -> RolloutResult:
    """Validate a peer's ``/rollout`` answer and extract its outcome reward.

    The reward is ``reward_info.outcome_reward`` (newer SDKs), else
    ``metrics.outcome_reward``, else ``metrics.outcome_score``, else the mean
    of ``metrics.episode_rewards``; it must be a finite number. Raises
    :class:`InvalidRolloutResponse` naming what is wrong.
    """
    if not isinstance(data, dict):
        raise InvalidRolloutResponse(f"expected a JSON object, got {type(data).__name__}")
    reward: float | None = None
    details: dict[str, Any] = {}
    for key in ("reward_info", "metrics"):
        block = data.get(key)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise InvalidRolloutResponse(f"{key} must be an object")
        for field in ("outcome_reward", "outcome_score"):
            if block.get(field) is not None:  # null: not reported here
                value = _finite(block[field])
                if value is None:
                    raise InvalidRolloutResponse(f"{key}.{field} must be a finite number")
                reward = value
                break
        if reward is None and isinstance(block.get("episode_rewards"), list):
            values = [_finite(v) for v in block["episode_rewards"]]
            if values and all(v is not None for v in values):
                reward = math.fsum(v for v in values if v is not None) / len(values)
        if reward is not None:
            if isinstance(block.get("details"), dict):
                details = dict(block["details"])
            break
    status = data.get("status")
    if reward is None:  # synth-containers: {status, summary: {outcome_reward | reward | score}}
        summary = data.get("summary")
        if isinstance(summary, dict):
            for field in ("outcome_reward", "reward", "score"):
                if summary.get(field) is not None:
                    reward = _finite(summary[field])
                    if reward is None:
                        raise InvalidRolloutResponse(f"summary.{field} must be a finite number")
                    break
    if reward is None:
        if isinstance(status, str) and status.lower() in _FAILED_STATUSES:
            detail = data.get("status_detail") or data.get("error") or status
            raise InvalidRolloutResponse(f"the rollout {status}: {str(detail)[:200]}")
        raise InvalidRolloutResponse(
            "no outcome reward: expected reward_info.outcome_reward, metrics.outcome_reward "
            "or summary.reward"
        )
    trajectories = data.get("trajectories", [])
    if not isinstance(trajectories, list):
        raise InvalidRolloutResponse("trajectories must be a list")
    if not details:
        for traj in trajectories:
            steps = traj.get("steps") if isinstance(traj, dict) else None
            if isinstance(steps, list) and steps and isinstance(steps[-1], dict):
                info = steps[-1].get("info")
                if isinstance(info, dict):
                    details = dict(info)
    tcid = data.get("trace_correlation_id")
    aborted = bool(data.get("aborted", False)) or (
        isinstance(status, str) and status.lower() in _FAILED_STATUSES
    )
    try:
        return RolloutResult(
            trace_correlation_id=tcid if isinstance(tcid, str) else None,
            reward=reward,
            aborted=bool(aborted),
            details=details,
            raw=data,
        )
    except ValidationError as exc:  # pragma: no cover - the fields above are already checked
        raise InvalidRolloutResponse(str(exc)) from None
