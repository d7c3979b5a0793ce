"""The model clients, wrapped once per process.

Without ``OPENAI_API_KEY`` the model is a local stand-in (a keyword matcher
behind an OpenAI-compatible server, not an LLM) started on first use.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import openai

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend

SESSION = "support-intent"
INTENTS = ["card_arrival", "lost_or_stolen_card", "pin_blocked", "exchange_rate",
           "cancel_transfer", "request_refund"]
SYSTEM = (
    "You are a support assistant for a bank. Classify the customer's message into one of: "
    + ", ".join(INTENTS)
    + ". Answer with the label only."
)
MODEL = os.environ.get("MODEL", "gpt-4.1-nano" if os.environ.get("OPENAI_API_KEY") else "stand-in")
_KEYWORDS = {
    "arriv": "card_arrival", "still waiting": "card_arrival", "lost": "lost_or_stolen_card",
    "stolen": "lost_or_stolen_card", "pin": "pin_blocked", "rate": "exchange_rate",
    "cancel": "cancel_transfer", "refund": "request_refund",
}
_lock = threading.Lock()
_state: dict[str, Any] = {}


def stand_in_reply(body: dict[str, Any]) -> str:
    """The offline stand-in model: the first intent whose keyword the message contains."""
    text = str(body.get("messages", [{}])[-1].get("content", "")).lower()
    return next((label for kw, label in _KEYWORDS.items() if kw in text), "card_arrival")


def backend() -> LocalBackend:
    """The embedded backend (SQLite at ``SYNTH_DB``)."""
    _setup()
    return _state["backend"]  # type: ignore[no-any-return]


def _setup() -> None:
    with _lock:
        if _state:
            return
        base_url = None
        if not os.environ.get("OPENAI_API_KEY"):
            from synth_middleware.testing import FakeOpenAIServer

            server = FakeOpenAIServer(reply=stand_in_reply).start()
            _state["server"] = server
            base_url = server.url
        _state["base_url"] = base_url
        _state["backend"] = LocalBackend(os.environ.get("SYNTH_DB", ".synth/example-django.db"))


def _key() -> str:
    return os.environ.get("OPENAI_API_KEY", "none")


def client() -> openai.OpenAI:
    """The wrapped sync client (one per process)."""
    _setup()
    if "sync" not in _state:
        _state["sync"] = synth.wrap(
            openai.OpenAI(base_url=_state["base_url"], api_key=_key()),
            session=SESSION, backend=_state["backend"],
        )
    return _state["sync"]  # type: ignore[no-any-return]


def async_client() -> openai.AsyncOpenAI:
    """A wrapped async client (per call: under WSGI each async view has its own loop)."""
    _setup()
    return synth.wrap(
        openai.AsyncOpenAI(base_url=_state["base_url"], api_key=_key()),
        session=SESSION, backend=_state["backend"],
    )
