"""Exceptions raised by synth-middleware.

The request path never raises these into the app (see ARCHITECTURE "Never");
they surface from explicit calls such as ``reward()`` with bad input, or from
backend methods the app calls directly.
"""

from __future__ import annotations


class SynthError(Exception):
    """Base class for every error this library raises."""


class CandidateError(SynthError, ValueError):
    """A candidate payload could not be parsed or applied."""


class BackendError(SynthError):
    """A backend call failed. ``status`` is the HTTP status where there is one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (network trouble, 408, 429, 5xx)."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


class NotFoundError(BackendError):
    """The session, candidate or rollout does not exist on the backend."""

    def __init__(self, message: str, *, code: str = "not_found") -> None:
        super().__init__(message, status=404, code=code)


class InvalidRequestError(BackendError):
    """The backend refused the request as malformed (a 4xx that retrying cannot fix)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request") -> None:
        super().__init__(message, status=status, code=code)


class TokenError(SynthError, ValueError):
    """A rollout token is malformed, forged or expired."""
