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


def error_for_status(
    status: int, message: str, *, code: str | None = None, retry_after: float | None = None
) -> BackendError:
    """The one mapping from an HTTP error status to our exceptions (the HTTP backend and
    the SDK both use it): 404 is :class:`NotFoundError`; any other 4xx but 408 and 429
    is :class:`InvalidRequestError` (retrying cannot fix it); 408, 429, 5xx are a
    retryable :class:`BackendError`. ``retry_after`` (seconds) rides on the exception."""
    exc: BackendError
    if status == 404:
        exc = NotFoundError(message, code=code or "not_found")
    elif 400 <= status < 500 and status not in (408, 429):
        exc = InvalidRequestError(message, status=status, code=code or "invalid_request")
    else:
        exc = BackendError(message, status=status, code=code)
    exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc
