"""Request and response bodies of the wire API, as pydantic models.

Request models ignore unknown fields (so a client written for the hosted API,
which may send more, still works) but type-check the ones they know.
Response models document the answers in ``/openapi.json``; routes answer with
plain JSON of the same shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synth_middleware.wire.limits import (
    MAX_BATCH_RECORDS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_SESSION_ID_CHARS,
)
from synth_middleware.wire.types import SessionKind, SessionStatusName

SessionKindName = SessionKind  # the wire's names; this alias keeps the old import working


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- sessions -----------------------------------------------------------------


class SystemRef(_Request):
    """The optimized system (``{name}``)."""

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class CreateSessionRequest(_Request):
    """``POST /api/v1/online/sessions``: create a session, or return it if it exists.

    ``session_id`` makes the call idempotent (``ensure``); the baseline prompt
    is read from ``baseline``, then ``metadata.baseline_prompt``, then
    ``config_body.initial_prompt`` (text, or the system message of a
    ``messages`` list; also under ``config_body.prompt_learning``). A different
    baseline for an existing session starts a new generation.
    """

    kind: SessionKindName = "mipro_online"
    system: SystemRef | None = None
    system_name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    config_body: dict[str, Any] | None = None
    #: the hosted client's ``online.create(config=...)`` key: read as ``config_body``
    config: dict[str, Any] | None = None
    #: a TOML (or JSON) file the *server* reads, only inside its ``config_dirs``
    config_path: str | None = Field(default=None, max_length=4096)
    config_name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    overrides: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    session_id: str | None = Field(default=None, min_length=1, max_length=MAX_SESSION_ID_CHARS)
    correlation_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    baseline: str | None = None


class PromptUrls(_Response):
    """Where to send chat completions for a session (Pattern A)."""

    proxy_url: str
    online_url: str
    chat_completions_url: str


class CreateSessionResponse(PromptUrls):
    """The created (or existing) session and its URLs."""

    session_id: str
    correlation_id: str | None = None
    kind: str
    status: str
    created: bool


class CandidateSummary(_Response):
    """Per-candidate statistics inside a session state."""

    candidate_id: str
    avg_reward: float | None
    rollout_count: int
    reward_count: int
    reward_m2: float
    is_baseline: bool
    status: str
    parent_id: str | None


class SessionStateResponse(_Response):
    """``GET /api/v1/online/sessions/{id}``: the live state."""

    session_id: str
    kind: str
    status: str
    version: int
    rollout_count: int
    reward_count: int
    best_candidate_id: str | None
    best_reward: float | None
    best_objective_value: float | None
    baseline_candidate_id: str | None
    generation: int
    candidates: list[CandidateSummary]


class SessionList(_Response):
    """``GET /api/v1/online/sessions``."""

    items: list[SessionStateResponse]


class PatchSessionRequest(_Request):
    """``PATCH /api/v1/online/sessions/{id}``: ``{state: paused|running|cancelled}``."""

    state: SessionStatusName | None = None
    status: SessionStatusName | None = Field(default=None, description="alias of state")


# -- rewards ------------------------------------------------------------------


class RewardRequest(_Request):
    """``POST /api/v1/online/sessions/{id}/reward``.

    The value is ``reward_info.score`` (or ``reward``, ``outcome_reward``);
    without one, ``metadata`` (or ``reward_info``) ``{expected, predicted}``
    gives 1.0 when equal after normalisation, else 0.0. ``stop: true`` marks
    the session completed. ``idempotency_key`` (or the ``Idempotency-Key``
    header) makes a retry harmless.
    """

    reward_info: dict[str, Any] = Field(default_factory=dict)
    rollout_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    candidate_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    trace_ref: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, Any] | None = None
    artifact: Any = None
    stop: bool | None = None
    correlation_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    created_at: float | None = Field(default=None, allow_inf_nan=False)


class RewardAck(_Response):
    """The answer to one reward."""

    ok: bool
    status: Literal["accepted", "duplicate"]
    session_id: str
    rollout_id: str
    candidate_id: str | None
    idempotency_key: str
    reward: float


class RewardBatchRequest(_Request):
    """``POST /api/v1/rewards/batch``: ``{rewards: [RewardRecord, ...]}``.

    Each record: ``idempotency_key, rollout_id, value, created_at?, session_id?,
    candidate_id?, feedback?, metadata?, stop?``. Records are validated one by
    one: a bad record is ``rejected`` in its result and never affects the others.
    """

    rewards: list[Any] = Field(max_length=MAX_BATCH_RECORDS)


class RewardResultItem(_Response):
    """One record's outcome: ``accepted``, ``duplicate`` or ``rejected`` (with ``error``)."""

    idempotency_key: str
    status: Literal["accepted", "duplicate", "rejected"]
    error: str | None = None


class RewardBatchResponse(_Response):
    """One result per record, in order."""

    results: list[RewardResultItem]


class RolloutBatchRequest(_Request):
    """``POST /api/v1/rollouts/batch``: ``{rollouts: [RolloutRecord, ...]}``.

    Each record: ``session_id, rollout_id, candidate_id (null: the baseline),
    created_at?, key?, metadata?, bucket?, input?, output?, model?``.
    Idempotent on ``rollout_id``.
    """

    rollouts: list[Any] = Field(max_length=MAX_BATCH_RECORDS)


class RolloutError(_Response):
    """A skipped rollout record."""

    index: int
    error: str


class RolloutBatchResponse(_Response):
    """``accepted``: new rollouts; ``duplicates``: already stored; ``supplemented``:
    details added to a rollout a reward had created; ``skipped``: refused records.
    ``statuses``: each record's outcome (one of those four words), in request
    order, so a client that merged several batches can split the answer back."""

    accepted: int
    duplicates: int
    supplemented: int
    skipped: int
    errors: list[RolloutError]
    statuses: list[str]


# -- candidates ---------------------------------------------------------------


class CandidateItemResponse(_Response):
    """A candidate with its content, payload and statistics."""

    candidate_id: str
    system_id: str | None = None
    session_id: str | None = None
    candidate_content: str | None = None
    artifact_payload: Any = None
    status: str
    avg_reward: float | None
    score: float | None = None
    objective: float | None = None
    rollout_count: int
    reward_count: int
    parent_id: str | None
    is_baseline: bool
    created_at: float
    generation: int


class CandidatePage(_Response):
    """A page of candidates; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[CandidateItemResponse]
    next_cursor: str | None
    system_id: str
    job_id: str | None
    algorithm: str | None
    mode: str | None
    sort: str


class AddCandidateRequest(_Request):
    """``POST /api/v1/online/sessions/{id}/candidates``: prompt text and/or a structured payload."""

    candidate_content: str | None = None
    artifact_payload: Any = None
    parent_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    metadata: dict[str, Any] | None = None


class ArchiveRequest(_Request):
    """Optional body of ``POST /api/v1/candidates/{id}/archive``."""

    reason: str = Field(default="archived", max_length=MAX_NAME_CHARS)


class ArchiveResponse(_Response):
    """``changed`` is false when the candidate was archived already."""

    candidate_id: str
    session_id: str
    status: Literal["archived"]
    changed: bool


# -- legacy (older hosted routes) ---------------------------------------------


class MiproStatusRequest(_Request):
    """``POST /api/prompt-learning/online/mipro/systems/{id}/status``.

    ``status: "reward"`` with ``reward`` records a reward; any other status
    (``"done"``, ...) is acknowledged.
    """

    rollout_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    status: str = Field(min_length=1, max_length=64)
    reward: float | None = Field(default=None, allow_inf_nan=False)
    candidate_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    metadata: dict[str, Any] | None = None


class TimelineBucket(_Response):
    """Rollouts (and rewards) started in ``[start, end)``."""

    start: float
    end: float
    rollouts: int


class Timeline(_Response):
    """``GET /api/v1/online/sessions/{id}/timeline``."""

    session_id: str
    buckets: list[TimelineBucket]
