"""A toy container of ours served in its own process: ``python _toy_container.py PORT KEY``.

(The vendor's Rust HTTP client holds the GIL while it waits, so a server it
calls cannot run in the calling process.)
"""

from __future__ import annotations

import sys

import uvicorn

from synth_middleware.offline.container import (
    Outcome,
    RolloutContext,
    TaskDefinition,
    create_container_app,
)


async def _rollout(ctx: RolloutContext) -> Outcome:
    question, answer = ctx.instance
    return Outcome(reward=1.0, info={"expected": answer, "question": question})


def main() -> None:
    port, key = int(sys.argv[1]), sys.argv[2]
    task = TaskDefinition(name="toy", splits={"train": [("2+2", "4"), ("1+1", "2")]}, rollout=_rollout)
    app = create_container_app(task, api_key=key)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
