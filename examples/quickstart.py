"""Quick start: a wrapped OpenAI client, a candidate applied, a reward recorded.

Runs offline: it starts a local OpenAI-compatible stand-in model server (it
echoes, it is not an LLM) and uses the embedded backend on a temporary SQLite
file. Run it with ``make quickstart``, or ``.venv/bin/python examples/quickstart.py``
(``python examples/quickstart.py`` once the venv is activated).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

try:
    import openai

    import synth_middleware as synth
    from synth_middleware.backends.local import LocalBackend
    from synth_middleware.testing import FakeOpenAIServer
except ImportError as exc:  # run outside the project's venv
    sys.exit(
        f"{exc}: run it in the project's venv: make quickstart, or .venv/bin/python {sys.argv[0]} "
        "(make .venv/.installed creates the venv)"
    )

SYSTEM = "You are a support assistant. Classify the customer's request."


def main() -> None:
    with FakeOpenAIServer() as model, tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(str(Path(tmp) / "synth.db"))
        print(f"stand-in model server (not an LLM) at {model.url}")

        # The one line: wrap the client for the prompt (session) it serves.
        # (ttl=1 so this short script sees new candidates quickly; the default is 30 s.)
        # selection: serve a non-baseline candidate when there is one (an A/B rule);
        # the default, "explore", would route by Thompson sampling instead.
        def prefer_new(candidates, rollout):  # type: ignore[no-untyped-def]
            return next((c for c in candidates if not c.is_baseline), None)

        client = synth.wrap(
            openai.OpenAI(api_key="not-needed", base_url=model.url),
            session="support-classifier",
            backend=backend,
            selection=prefer_new,
            ttl=1.0,
        )

        ask = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "card lost"}]
        first = client.chat.completions.create(model="stand-in", messages=ask)
        print(f"cold start served the app's own prompt: rollout {first.synth.rollout_id}")
        synth.reward(first, 1.0)
        synth.flush(5)

        # A prompt someone wants to try; the backend (later: the optimizer) adds candidates.
        cid = backend.add_candidate(
            "support-classifier", "You are a banking intent classifier. Answer with one label."
        )
        # The cache refreshes in the background; calls never wait for it.
        deadline = time.monotonic() + 10
        while True:
            resp = client.chat.completions.create(model="stand-in", messages=ask)
            if resp.synth.candidate_id == cid or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        print(f"candidate {resp.synth.candidate_id} applied; the model received:")
        print(f"  system: {model.system_prompts()[-1]!r}")
        synth.reward(resp, 1.0, feedback="correct label")
        print(f"flushed: {synth.flush(5)}")

        state = backend.get_state("support-classifier")
        print("session state:")
        for c in state["candidates"]:
            print(
                f"  {c['candidate_id']}  baseline={c['is_baseline']!s:5}  "
                f"rollouts={c['rollout_count']}  rewards={c['reward_count']}  "
                f"mean={c['avg_reward']}"
            )
        backend.close()


if __name__ == "__main__":
    main()
