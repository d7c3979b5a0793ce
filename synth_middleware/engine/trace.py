"""One rollout as an optimizer sees it: shared by the optimizers and the proposer's
prompt builders (a module of its own so that neither has to import the other)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Trace"]


@dataclass(frozen=True, slots=True)
class Trace:
    """One rollout as an optimizer sees it. ``input``/``output`` are ``None``
    when the client does not send traces."""

    rollout_id: str
    candidate_id: str | None
    input: str | None
    output: str | None
    reward: float | None
    feedback: str | None
    bucket: str | None
    expected: str | None
    created_at: float = 0.0
