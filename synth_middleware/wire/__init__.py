"""The wire contract: one definition of what travels between client, SDK, server and engine.

The bottom layer: it imports nothing of this package but :mod:`synth_middleware.errors`
and the version, so every layer above may use it.

* :mod:`~synth_middleware.wire.types`: the JSON shapes (``RewardRecord``,
  ``SessionState``, ...) as typed dictionaries;
* :mod:`~synth_middleware.wire.limits`: the limits (ids, feedback, metadata,
  candidates, batches, rewards, timestamps);
* :mod:`~synth_middleware.wire.validate`: checks of single values against them;
* :mod:`~synth_middleware.wire.records`: validation of whole reward and rollout records;
* :mod:`~synth_middleware.wire.prompts`: a prompt's system text, in any of its spellings;
* :mod:`~synth_middleware.wire.dialect`: the sans-IO HTTP side (environment,
  headers, routes, ``Retry-After``), with :func:`error_for_status` mapping an
  error status to our exceptions.

The routes and bodies are described in ``docs/wire.md``.
"""

from synth_middleware.errors import error_for_status
from synth_middleware.wire.limits import (
    MAX_ABS_REWARD,
    MAX_BATCH_RECORDS,
    MAX_CANDIDATE_BYTES,
    MAX_FEEDBACK_BYTES,
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_NAME_CHARS,
    MAX_ROLLOUT_DETAIL_BYTES,
    MAX_SESSION_ID_CHARS,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
)
from synth_middleware.wire.types import (
    SESSION_KINDS,
    SESSION_STATUS_NAMES,
    CandidateItem,
    CandidateStats,
    RewardRecord,
    RewardResult,
    RolloutRecord,
    SessionKind,
    SessionState,
    SessionStatusName,
)
from synth_middleware.wire.validate import (
    as_reward,
    as_timestamp,
    clamp_reward,
    encode_json,
    feedback_error,
    is_id,
    is_session_id,
    reward_error,
    validate_session_id,
)

__all__ = [
    "MAX_ABS_REWARD",
    "MAX_BATCH_RECORDS",
    "MAX_CANDIDATE_BYTES",
    "MAX_FEEDBACK_BYTES",
    "MAX_ID_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_NAME_CHARS",
    "MAX_ROLLOUT_DETAIL_BYTES",
    "MAX_SESSION_ID_CHARS",
    "MAX_TIMESTAMP",
    "MIN_TIMESTAMP",
    "SESSION_KINDS",
    "SESSION_STATUS_NAMES",
    "CandidateItem",
    "CandidateStats",
    "RewardRecord",
    "RewardResult",
    "RolloutRecord",
    "SessionKind",
    "SessionState",
    "SessionStatusName",
    "as_reward",
    "as_timestamp",
    "clamp_reward",
    "encode_json",
    "error_for_status",
    "feedback_error",
    "is_id",
    "is_session_id",
    "reward_error",
    "validate_session_id",
]
