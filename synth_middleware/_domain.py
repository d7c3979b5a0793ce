"""The domain of a reward and of a timestamp: one definition for the client, the
server's routes and the engine.

A reward is a finite real number with ``|value| <= MAX_ABS_REWARD`` (1e6).
Scale larger scores down before reporting them (e.g. report cost in dollars,
not micro-dollars); the statistics (running mean and variance) stay exact and
finite for any number of rewards inside that range. ``bool`` and strings are
not rewards. A timestamp (``created_at``) is epoch seconds between
``MIN_TIMESTAMP`` (1970-01-01) and ``MAX_TIMESTAMP`` (year 5138). Feedback
text is at most ``MAX_FEEDBACK_BYTES`` (64 KiB) of UTF-8: counted in bytes
everywhere, so text that ``reward()`` accepts is never refused later in the
background (it once counted characters while the engine counted bytes).
"""

from __future__ import annotations

import math
import numbers

MAX_ABS_REWARD = 1e6
MIN_TIMESTAMP = 0.0
MAX_TIMESTAMP = 1e11
MAX_FEEDBACK_BYTES = 64 * 1024


def feedback_error(feedback: object) -> str | None:
    """Why ``feedback`` cannot be stored (a sentence), or ``None`` (``None`` is fine)."""
    if feedback is None:
        return None
    if not isinstance(feedback, str):
        return "feedback must be a string or None"
    # UTF-8 length without encoding the common short ASCII case
    size = len(feedback) if feedback.isascii() else len(feedback.encode("utf-8", "surrogatepass"))
    if size > MAX_FEEDBACK_BYTES:
        return f"feedback is {size} bytes of UTF-8, over the {MAX_FEEDBACK_BYTES}-byte limit"
    return None


def _real(value: object) -> float | None:
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def reward_error(value: object) -> str | None:
    """Why ``value`` is not a reward (a sentence), or ``None`` if it is one."""
    number = _real(value)
    if number is None:
        return f"reward must be a finite real number, not {_show(value)}"
    if not -MAX_ABS_REWARD <= number <= MAX_ABS_REWARD:
        return (
            f"reward {_show(value)} is outside the allowed range "
            f"[-{MAX_ABS_REWARD:g}, {MAX_ABS_REWARD:g}]: scale it down"
        )
    return None


def as_reward(value: object) -> float | None:
    """``float(value)`` for a valid reward, else ``None``."""
    number = _real(value)
    if number is None or not -MAX_ABS_REWARD <= number <= MAX_ABS_REWARD:
        return None
    return number


def as_timestamp(value: object) -> float | None:
    """``float(value)`` for epoch seconds in ``[MIN_TIMESTAMP, MAX_TIMESTAMP]``, else ``None``."""
    number = _real(value)
    if number is None or not MIN_TIMESTAMP <= number <= MAX_TIMESTAMP:
        return None
    return number


def clamp_reward(value: float) -> float:
    """``value`` bounded to the reward range (``NaN`` becomes 0.0): for replaying old
    stored events written before the range was enforced."""
    if value != value:  # NaN
        return 0.0
    return max(-MAX_ABS_REWARD, min(MAX_ABS_REWARD, value))


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of about {int(math.log10(abs(value))) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
