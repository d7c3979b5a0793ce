"""Cheap unique ids for the request path.

``os.urandom`` releases the GIL for a syscall, which lets a background thread
run in the middle of the app's call; a per-process generator seeded from it
costs a fraction of that. Ids name things, they are not secrets (tokens that
must not be forged are signed). Re-seeded after fork so parent and child never
repeat each other's ids.
"""

from __future__ import annotations

import os
import random

from synth_middleware import _fork

_rng = random.Random(os.urandom(32))


def random_hex(bits: int = 96) -> str:
    """``bits`` random bits as lower-case hex (fixed width)."""
    return f"{_rng.getrandbits(bits):0{bits // 4}x}"


def _reseed() -> None:
    _rng.seed(os.urandom(32))


_fork.after_fork_in_child(_reseed)
