"""A support-intent classifier on FastAPI, with synth-middleware.

    .venv/bin/python examples/fastapi_app/app.py --demo    # scripted demo, offline
    .venv/bin/python examples/fastapi_app/app.py           # serve on 127.0.0.1:8000

Without ``OPENAI_API_KEY`` the model is a local stand-in (a keyword matcher
behind an OpenAI-compatible server, not an LLM), so everything runs offline.
With it, set ``MODEL`` (default ``gpt-4.1-nano``) and the real API is used.
The embedded backend keeps its SQLite file at ``SYNTH_DB`` (default
``.synth/example-fastapi.db``; the demo uses a temporary one).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import openai
from fastapi import FastAPI
from pydantic import BaseModel
from synth_middleware_fastapi import SynthMiddleware, SynthRollout, feedback_router

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend

SESSION = "support-intent"
INTENTS = [
    "card_arrival",
    "lost_or_stolen_card",
    "pin_blocked",
    "exchange_rate",
    "cancel_transfer",
    "request_refund",
]
SYSTEM = (
    "You are a support assistant for a bank. Classify the customer's message into one of: "
    + ", ".join(INTENTS)
    + ". Answer with the label only."
)
_KEYWORDS = {
    "arriv": "card_arrival", "still waiting": "card_arrival", "lost": "lost_or_stolen_card",
    "stolen": "lost_or_stolen_card", "pin": "pin_blocked", "rate": "exchange_rate",
    "cancel": "cancel_transfer", "refund": "request_refund",
}


def stand_in_reply(body: dict[str, Any]) -> str:
    """The offline stand-in model: the first intent whose keyword the message contains."""
    text = str(body.get("messages", [{}])[-1].get("content", "")).lower()
    return next((label for kw, label in _KEYWORDS.items() if kw in text), "card_arrival")


class Ticket(BaseModel):
    """A customer's message."""

    text: str


def create_app(client: openai.AsyncOpenAI, model: str) -> FastAPI:
    """The app: one classify endpoint, the middleware, and the feedback router."""
    app = FastAPI(title="support-intent classifier")
    # The one line: a rollout per request, its token in the x-synth-rollout header.
    app.add_middleware(SynthMiddleware, key_header="x-user-id")
    # POST /synth/feedback {"token", "reward", "feedback"?}: thumbs up/down, later.
    app.include_router(feedback_router())

    @app.post("/classify")
    async def classify(ticket: Ticket, rollout: SynthRollout) -> dict[str, Any]:
        resp = await client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": ticket.text}],
        )
        return {"intent": (resp.choices[0].message.content or "").strip(),
                "rollout_id": rollout.rollout_id, "candidate_id": rollout.candidate_id}

    return app


def _client(base_url: str | None, backend: LocalBackend) -> openai.AsyncOpenAI:
    raw = openai.AsyncOpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    return synth.wrap(raw, session=SESSION, backend=backend)


def demo() -> dict[str, Any]:
    """Classify a few tickets, rate them through the feedback endpoint, show the stats."""
    from fastapi.testclient import TestClient

    from synth_middleware.testing import FakeOpenAIServer

    with FakeOpenAIServer(reply=stand_in_reply) as model, tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(str(Path(tmp) / "synth.db"))
        backend.ensure_session(SESSION, baseline=SYSTEM)
        cand = backend.add_candidate(
            SESSION, SYSTEM.replace("You are a support assistant for a bank.",
                                    "You are a precise banking intent classifier.")
        )
        app = create_app(_client(model.url, backend), "stand-in")
        tickets = [("I lost my card yesterday", "lost_or_stolen_card"),
                   ("My PIN is blocked", "pin_blocked"),
                   ("What rate do you use for euros?", "exchange_rate"),
                   ("Where is my new card? Still waiting", "card_arrival")]
        with TestClient(app) as http:
            for i in range(12):
                text, expected = tickets[i % len(tickets)]
                resp = http.post("/classify", json={"text": text},
                                 headers={"x-user-id": f"user-{i % 5}"})
                token = resp.headers["x-synth-rollout"]  # the browser keeps this
                got = resp.json()["intent"]
                # later, in another request: the user's thumbs up or down
                fb = http.post("/synth/feedback",
                               json={"token": token, "reward": 1.0 if got == expected else 0.0})
                assert fb.status_code == 202, fb.text
                if i < 2:
                    print(f"POST /classify {text!r} -> {got}; x-synth-rollout: {token[:24]}...")
        synth.flush(5)
        state = backend.get_state(SESSION)
        print(f"candidate added: {cand}")
        for c in state["candidates"]:
            print(f"  {c['candidate_id']}  baseline={c['is_baseline']!s:5}  "
                  f"rollouts={c['rollout_count']}  rewards={c['reward_count']}  "
                  f"mean={c['avg_reward']}")
        backend.close()
        return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo", action="store_true", help="run the scripted demo and exit")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    if args.demo:
        demo()
        return
    import uvicorn

    backend = LocalBackend(os.environ.get("SYNTH_DB", ".synth/example-fastapi.db"))
    if os.environ.get("OPENAI_API_KEY"):
        app = create_app(_client(None, backend), os.environ.get("MODEL", "gpt-4.1-nano"))
        uvicorn.run(app, host="127.0.0.1", port=args.port)
        return
    from synth_middleware.testing import FakeOpenAIServer

    with FakeOpenAIServer(reply=stand_in_reply) as model:
        app = create_app(_client(model.url, backend), "stand-in")
        uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
