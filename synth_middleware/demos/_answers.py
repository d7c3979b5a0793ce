"""Reading a model's answer as JSON: one definition for the task's reward and the
stand-in's example parsing."""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["json_string_values"]


def json_string_values(text: str, keys: Sequence[str]) -> list[str] | None:
    """The string values of a JSON object answer: those under ``keys`` first (in that
    order), then the others in the object's order. ``None`` when ``text`` is not a
    JSON object (the caller then reads it as plain text)."""
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    named = [k for k in keys if isinstance(data.get(k), str)]
    named += [k for k, v in data.items() if isinstance(v, str) and k not in named]
    return [data[k] for k in named]
