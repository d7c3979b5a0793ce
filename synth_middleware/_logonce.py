"""Log a recurring problem once (or once a while), not on every call.

A backend that is down, a user callable that raises or a malformed candidate
would otherwise write the same line per request or per batch; the promise is
"log once". :class:`LogOnce` remembers which keys it logged; ``every`` turns
"once" into "at most once per ``every`` seconds" for problems worth seeing
again while they last, and :meth:`LogOnce.reset` re-arms a key once the
problem went away.
"""

from __future__ import annotations

import logging
import time

__all__ = ["LogOnce"]


class LogOnce:
    """Per-key log-once for one logger.

    Args:
        logger: where the lines go.
        prefix: put before each message (``"synth-middleware: "`` for the client's).
        every: seconds after which a key may be logged again; ``None``: never again
            until :meth:`reset`.
    """

    __slots__ = ("_at", "every", "logger", "prefix")

    def __init__(
        self, logger: logging.Logger, *, prefix: str = "", every: float | None = None
    ) -> None:
        self.logger = logger
        self.prefix = prefix
        self.every = every
        self._at: dict[str, float] = {}  # key -> when it was last logged

    def warning(self, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` as a warning unless ``key`` was logged (recently);
        ``True`` when it was logged now."""
        return self.log(logging.WARNING, key, msg, *args, exc_info=exc_info)

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Like :meth:`warning` at ``level``."""
        now = time.monotonic()
        last = self._at.get(key)
        if last is not None and (self.every is None or now - last < self.every):
            return False
        # two threads may both get here: a line logged twice beats a lock on every call
        self._at[key] = now
        self.logger.log(level, self.prefix + msg, *args, exc_info=exc_info)
        return True

    def reset(self, key: str) -> None:
        """Log ``key`` again the next time (the problem went away)."""
        self._at.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._at
