"""synth-middleware: wrap your OpenAI client in one line and let live traffic
improve your prompts.

    import openai, synth_middleware as synth

    client = synth.wrap(openai.OpenAI(), session="support-classifier")
    resp = client.chat.completions.create(model="gpt-4.1-nano", messages=[...])
    synth.reward(resp, 1.0)

Importing this package imports no optional extra (server, FastAPI, Django).
"""

from synth_middleware._tokens import TokenData, decode_token
from synth_middleware._version import __version__
from synth_middleware.client.rewards import flush, reward, stats
from synth_middleware.client.wrap import wrap
from synth_middleware.errors import (
    BackendError,
    CandidateError,
    InvalidRequestError,
    NotFoundError,
    SynthError,
    TokenError,
)
from synth_middleware.rollout import Rollout, current_rollout, rollout, rollout_of
from synth_middleware.settings import Settings, configure, settings

__all__ = [
    "BackendError",
    "CandidateError",
    "InvalidRequestError",
    "NotFoundError",
    "Rollout",
    "Settings",
    "SynthError",
    "TokenData",
    "TokenError",
    "__version__",
    "configure",
    "current_rollout",
    "decode_token",
    "flush",
    "reward",
    "rollout",
    "rollout_of",
    "settings",
    "stats",
    "wrap",
]


def __getattr__(name: str) -> object:
    # Backends import lazily so `import synth_middleware` stays light.
    if name == "LocalBackend":
        from synth_middleware.backends.local import LocalBackend

        return LocalBackend
    if name == "HttpBackend":
        from synth_middleware.backends.http import HttpBackend

        return HttpBackend
    if name in ("SynthClient", "AsyncSynthClient"):
        from synth_middleware.offline import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'synth_middleware' has no attribute {name!r}")
