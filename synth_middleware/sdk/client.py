"""Deprecated location: the SDK clients now live in :mod:`synth_middleware.offline.sdk.client`.

Kept so that imports of ``synth_middleware.sdk.client`` keep working (no warning at import:
tests may run with ``-W error``); new code imports ``synth_middleware.offline.sdk.client``.
"""

from __future__ import annotations

from synth_middleware.offline.sdk.client import (
    AsyncSynthClient,
    SynthClient,
)

__all__ = [
    "AsyncSynthClient",
    "SynthClient",
]
