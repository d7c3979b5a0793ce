"""The domain of a reward and of a timestamp: moved to :mod:`synth_middleware.wire`
(``limits`` and ``validate``), the one definition for the client, the server's routes
and the engine. Re-exported here so that the old import path keeps working."""

from synth_middleware.wire.limits import (
    MAX_ABS_REWARD,
    MAX_FEEDBACK_BYTES,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
)
from synth_middleware.wire.validate import (
    as_reward,
    as_timestamp,
    clamp_reward,
    feedback_error,
    reward_error,
)

__all__ = [
    "MAX_ABS_REWARD",
    "MAX_FEEDBACK_BYTES",
    "MAX_TIMESTAMP",
    "MIN_TIMESTAMP",
    "as_reward",
    "as_timestamp",
    "clamp_reward",
    "feedback_error",
    "reward_error",
]
