"""How the wire API spells a prompt, read back as its system text.

A prompt travels as plain text, as ``{text|content|prompt|system_prompt: ...}``,
or as ``{messages|sections: [...]}`` whose system (or developer) message holds
it (``content``, ``pattern`` or ``text``). Config bodies, a container's
``/task_info`` ``prompt_template`` and the hosted client's ``initial_prompt``
all use these spellings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["prompt_text"]


def prompt_text(value: Any) -> str | None:
    """The system text of a prompt in any of the wire spellings, ``None`` if it has none."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        return None
    for key in ("text", "content", "prompt", "system_prompt"):
        if isinstance(value.get(key), str):
            return value[key]  # type: ignore[no-any-return]
    messages = value.get("messages") or value.get("sections")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, Mapping) and m.get("role") in ("system", "developer"):
                for key in ("content", "pattern", "text"):
                    if isinstance(m.get(key), str):
                        return m[key]  # type: ignore[no-any-return]
    return None
