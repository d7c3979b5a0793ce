"""The limits of the wire API: one definition for the client, the SDK, the server's
models and routes, and the engine.

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

MAX_ABS_REWARD = 1e6
"""The largest reward magnitude."""
MIN_TIMESTAMP = 0.0
"""The earliest ``created_at`` (epoch seconds: 1970-01-01)."""
MAX_TIMESTAMP = 1e11
"""The latest ``created_at`` (epoch seconds: the year 5138)."""
MAX_FEEDBACK_BYTES = 64 * 1024
"""Feedback text of a reward, in UTF-8 bytes."""
MAX_ID_CHARS = 256
"""An opaque id (rollout, candidate, idempotency key, correlation id), in characters."""
MAX_SESSION_ID_CHARS = 200
"""A session id, in characters of ``[A-Za-z0-9._:-]``."""
MAX_NAME_CHARS = 200
"""A short name (a system's, a config's, an archive reason), in characters."""
MAX_METADATA_BYTES = 64 * 1024
"""Metadata of a reward or candidate, and a session's config, as compact JSON."""
MAX_CANDIDATE_BYTES = 1024 * 1024
"""A candidate's text (UTF-8) or payload (JSON), a baseline, an optimizer patch."""
MAX_ROLLOUT_DETAIL_BYTES = 256 * 1024
"""A rollout's details as JSON; past this its ``input`` and ``output`` are dropped."""
MAX_BATCH_RECORDS = 10_000
"""Records in one ``/rewards/batch`` or ``/rollouts/batch`` request."""
