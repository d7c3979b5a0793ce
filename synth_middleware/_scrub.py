"""Scrub credentials out of text we pass on or log.

An upstream's error text may quote the key we sent (OpenAI's 401 names
``sk-abcd****...wxyz``: its first 8 and last 4 characters), and a misbehaving
upstream may echo request headers whole. :class:`Scrubber` removes, by value,
every credential it was given, their leading and trailing 8 characters, and
anything that looks like a masked or OpenAI-style key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
# A masked key ("sk-abcd****...wxyz", "****1234") or an OpenAI-style key.
_KEYLIKE = re.compile(r"\S*\*{3,}\S*|\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}")
_MIN_SECRET = 8


class Scrubber:
    """``scrubber(text)``: ``text`` without the given secrets or anything key-like."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        parts: set[str] = set()
        for s in secrets:
            if not s or len(s) < _MIN_SECRET:
                continue
            parts.add(s)
            if len(s) >= 16:  # fragments of short secrets would be common words
                parts.update((s[:8], s[-8:]))
        # Longest first, so a whole key goes before its fragments.
        ordered = sorted(parts, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(p) for p in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return _KEYLIKE.sub(REDACTED, text)

    def clean(self, text: str) -> bool:
        """Whether ``text`` needs no scrubbing."""
        return self(text) == text
