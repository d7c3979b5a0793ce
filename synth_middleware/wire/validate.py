"""Checks of single wire values: rewards, timestamps, feedback, ids, JSON sizes.

Pure functions over :mod:`synth_middleware.wire.limits`; ``reward()`` in the
client, the engine's ingest and the server's routes call these same ones, so
a value one of them accepts is never refused by another.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from typing import Any, TypeGuard

from synth_middleware.errors import InvalidRequestError
from synth_middleware.wire.limits import (
    MAX_ABS_REWARD,
    MAX_FEEDBACK_BYTES,
    MAX_ID_CHARS,
    MAX_SESSION_ID_CHARS,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
)

SESSION_ID_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_SESSION_ID_CHARS}}}")
"""A session id: 1-200 characters of ``[A-Za-z0-9._:-]`` (match with ``fullmatch``)."""
TIMESTAMP_ERROR = f"created_at must be epoch seconds from {MIN_TIMESTAMP:g} to {MAX_TIMESTAMP:g}"
"""The sentence for a ``created_at`` outside ``[MIN_TIMESTAMP, MAX_TIMESTAMP]``."""

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_json(value: Any) -> str:
    """Compact, strict JSON (no NaN/inf; non-ASCII escaped, so lone surrogates are safe):
    the text of every body we send and every payload the engine stores."""
    return _encode(value)


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (lone surrogates count as three)."""
    # the common short ASCII case without encoding
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def json_size(value: Any, what: str, limit: int) -> int:
    """Size of ``value`` as strict JSON; raise ``ValueError`` with a clear message if it
    is not JSON-able or over ``limit`` bytes."""
    try:
        size = len(encode_json(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable (no NaN/inf): {exc}") from None
    if size > limit:
        raise ValueError(f"{what} is {size} bytes as JSON, over the {limit} byte limit")
    return size


def feedback_error(feedback: object) -> str | None:
    """Why ``feedback`` cannot be stored (a sentence), or ``None`` (``None`` is fine)."""
    if feedback is None:
        return None
    if not isinstance(feedback, str):
        return "feedback must be a string or None"
    size = utf8_len(feedback)
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


def is_session_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid session id (see :data:`SESSION_ID_RE`)."""
    return isinstance(value, str) and SESSION_ID_RE.fullmatch(value) is not None


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is 1-200 chars of ``[A-Za-z0-9._:-]``, else raise
    :class:`~synth_middleware.errors.InvalidRequestError`."""
    if not is_session_id(session_id):
        shown = repr(session_id)
        if len(shown) > 80:  # never log a 5,000-character name in full
            shown = shown[:60] + f"... ({len(shown) - 2} characters)"
        raise InvalidRequestError(
            f"invalid session_id {shown}: use 1-200 characters of A-Z a-z 0-9 . _ : -"
        )
    return session_id  # is_session_id checked the type


def is_id(value: object) -> TypeGuard[str]:
    """A usable opaque id: non-empty str of at most :data:`MAX_ID_CHARS`, storable as
    UTF-8, no NUL (PostgreSQL's text cannot hold one)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of about {int(math.log10(abs(value))) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
