"""Test helpers: a recording OpenAI-compatible server and in-process HTTP clients.

Importing this package needs the optional ``starlette`` and ``uvicorn`` packages
(``pip install synth-middleware[server]``). The rest of the library never imports it.
"""

from __future__ import annotations

from synth_middleware.testing.openai_server import (
    FakeOpenAIServer,
    ReplyFn,
    async_in_memory_http_client,
    default_reply,
    in_memory_http_client,
)

__all__ = [
    "FakeOpenAIServer",
    "ReplyFn",
    "async_in_memory_http_client",
    "default_reply",
    "in_memory_http_client",
]
