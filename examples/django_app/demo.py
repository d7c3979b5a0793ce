"""Scripted, offline demo of the Django example: classify, rate later, show the stats.

    .venv/bin/python examples/django_app/demo.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def demo() -> dict[str, Any]:
    """Run the demo; returns the session state."""
    sys.path.insert(0, str(HERE))
    tmp = tempfile.mkdtemp()
    os.environ.setdefault("SYNTH_DB", str(Path(tmp) / "synth.db"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "support_site.settings")
    import django

    django.setup()
    from django.test import Client
    from support_site import llm

    import synth_middleware as synth

    backend = llm.backend()
    backend.ensure_session(llm.SESSION, baseline=llm.SYSTEM)
    backend.add_candidate(
        llm.SESSION, llm.SYSTEM.replace("You are a support assistant for a bank.",
                                        "You are a precise banking intent classifier.")
    )
    tickets = [("I lost my card yesterday", "lost_or_stolen_card"),
               ("My PIN is blocked", "pin_blocked"),
               ("Can I cancel a transfer?", "cancel_transfer")]
    http = Client()
    for i in range(9):
        text, expected = tickets[i % len(tickets)]
        path = "/classify" if i % 2 else "/aclassify"
        resp = http.post(path, json.dumps({"text": text}), content_type="application/json",
                         headers={"x-user-id": f"user-{i % 4}"})
        token = resp["x-synth-rollout"]
        got = resp.json()["intent"]
        fb = http.post("/synth/feedback", content_type="application/json",
                       data=json.dumps({"token": token, "reward": float(got == expected)}))
        assert fb.status_code == 202, fb.content
        if i < 2:
            print(f"POST {path} {text!r} -> {got}; x-synth-rollout: {token[:24]}...")
    synth.flush(5)
    state = backend.get_state(llm.SESSION)
    for c in state["candidates"]:
        print(f"  {c['candidate_id']}  baseline={c['is_baseline']!s:5}  "
              f"rollouts={c['rollout_count']}  rewards={c['reward_count']}  mean={c['avg_reward']}")
    return state


if __name__ == "__main__":
    demo()
