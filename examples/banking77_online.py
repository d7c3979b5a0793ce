"""MIPRO online on Banking77, step by step (Pattern A: the container calls the proxy).

The same run as ``synth-middleware demo banking77`` (which also does Pattern B
and writes the JSON and the plot), written out so each step can be read:

    python examples/banking77_online.py --rollouts 100 --train-size 200 --val-size 10 \\
        --min-proposal-rollouts 20 [--model gpt-4.1-nano] [--seed 0]

Offline by default: the model is the package's stand-in (TF-IDF nearest
neighbours over the label names and the prompt's labelled examples; **not an
LLM**). With ``--model gpt-4.1-nano`` and ``OPENAI_API_KEY`` (optionally
``OPENAI_BASE_URL``) the policy and the proposer are that real model.
Banking77 comes from ``--data-dir``, ``$BANKING77_DIR``, ``../shared/data/banking77``
(beside the checkout or under the working directory), or a verified download.
Run it in the project's venv: ``.venv/bin/python examples/banking77_online.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
from pathlib import Path

try:
    import httpx
    from tqdm import tqdm

    from synth_middleware._shared_data import find_banking77_dir
except ImportError as exc:  # run outside the project's venv
    import sys

    sys.exit(
        f"{exc}: run it in the project's venv: .venv/bin/python {sys.argv[0]} "
        "(make .venv/.installed creates the venv)"
    )

from synth_middleware.client.candidates import parse_candidate
from synth_middleware.demos.banking77 import data
from synth_middleware.demos.banking77.report import paired_diff
from synth_middleware.demos.banking77.standin import STANDIN_NOTE, StandInModel
from synth_middleware.demos.banking77.task import SYSTEM_PROMPT, Banking77Task, task_definition
from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore
from synth_middleware.offline.container import (
    AsyncContainerClient,
    InProcessContainer,
    InProcessServer,
    OnlineRunner,
    create_container_app,
    wait_healthy,
)
from synth_middleware.offline.sdk import SynthClient
from synth_middleware.server import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=100)
    ap.add_argument("--train-size", type=int, default=200)
    ap.add_argument("--val-size", type=int, default=10)
    ap.add_argument("--min-proposal-rollouts", type=int, default=20)
    ap.add_argument("--model", default="standin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-size", type=int, default=400)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    # 1. The data, verified against its published SHA-256.
    ds = data.load(args.data_dir or find_banking77_dir())
    task = Banking77Task(ds.labels)
    test = ds.shuffled("test", args.seed)[: args.test_size]

    # 2. The model: the offline stand-in, or a real one.
    standin = args.model == "standin"
    model_cm = StandInModel(ds.labels, latency=0.2) if standin else None
    if model_cm is not None:
        model_cm.start()
        model_url, model_name, key = model_cm.url, "standin-tfidf", None
        print(f"model: standin-tfidf ({STANDIN_NOTE}) at {model_url}")
    else:
        key = os.environ["OPENAI_API_KEY"]
        model_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
        model_name = args.model
        print(f"model: {model_name} at {model_url}")

    with tempfile.TemporaryDirectory() as tmp:
        # 3. The container (task app) and the backend (the engine with its online optimizer,
        #    served with the wire API and the proxy), each in a thread on loopback.
        container = InProcessContainer(
            create_container_app(task_definition(ds, shuffle_seed=args.seed))
        )
        env = dict(os.environ) if standin else {**os.environ, "SYNTH_PROPOSER_URL": model_url}
        engine = Engine(
            SqliteStore(str(Path(tmp) / "synth.db")),
            optimizer=OptimizerOptions(interval=0.05, backoff_initial=0.2, seed=args.seed, env=env),
        )
        app = create_app(engine, upstream_url=model_url, upstream_api_key=key or "none")
        backend = InProcessServer(app, lifespan="on", name="backend")
        with container, backend:
            print("container:", wait_healthy(container.url))
            print("backend:  ", wait_healthy(backend.url))

            # 4. A MIPRO online session; its proxy URL is where the container's LLM calls go.
            config = {
                "online_proposer_min_rollouts": args.min_proposal_rollouts,
                "proposer_model": model_name,
            }
            if standin:
                config["proposer_url"] = model_url
            client = SynthClient(base_url=backend.url)
            session = client.optimization.online.create(
                kind="mipro_online",
                system_name="banking77",
                baseline=SYSTEM_PROMPT,
                overrides=config,
            )
            print("session:  ", session.session_id, "proxy:", session.proxy_url)

            # 5. Rollouts: each one is POST /rollout with inference_url = {proxy_url}/{rollout_id};
            #    the reward goes back to the session; proposals appear as rewards arrive.
            order = list(range(args.train_size))
            random.Random(args.seed).shuffle(order)
            seeds = [order[i % len(order)] for i in range(args.rollouts)]
            seen: set[str] = set()
            bar = tqdm(total=len(seeds), desc="rollouts")
            rewards: list[float] = []

            def on_result(res) -> None:  # type: ignore[no-untyped-def]
                rewards.append(res.reward or 0.0)
                bar.set_postfix(mean_reward=f"{sum(rewards) / len(rewards):.3f}")
                bar.update(1)
                if res.candidate_id and res.candidate_id not in seen:
                    seen.add(res.candidate_id)
                    bar.write(f"  first rollout served by candidate {res.candidate_id}")

            async def loop() -> None:
                runner = OnlineRunner(
                    AsyncContainerClient(container.url, container.api_key),
                    session,
                    model=model_name,
                    env_config={"split": "train"},
                )
                await runner.run(seeds, concurrency=4, on_result=on_result)

            asyncio.run(loop())
            bar.close()

            # 6. Where the session stands, and baseline vs best on held-out test queries.
            state = session.get_status()
            for c in state["candidates"]:
                tag = " (baseline)" if c["is_baseline"] else ""
                best = " <- best" if c["candidate_id"] == state["best_candidate_id"] else ""
                mean = "-" if c["avg_reward"] is None else f"{c['avg_reward']:.3f}"
                print(f"  {c['candidate_id']}{tag}: {c['reward_count']} rewards, mean {mean}{best}")
            base = parse_candidate(session.get_candidate(state["baseline_candidate_id"]))
            best = parse_candidate(session.get_candidate(state["best_candidate_id"]))

            def accuracy(cand) -> list[float]:  # type: ignore[no-untyped-def]
                out = []
                headers = {"x-standin-latency": "0"}
                if key:
                    headers["authorization"] = f"Bearer {key}"
                with httpx.Client(timeout=60) as http:
                    for ex in test:
                        messages = cand.apply(
                            task.messages(ex.text), baseline=base
                        ) or task.messages(ex.text)
                        body = {"model": model_name, "messages": messages, **task.request_params()}
                        resp = http.post(
                            f"{model_url}/chat/completions", json=body, headers=headers
                        )
                        out.append(task.reward(task.parse(resp.json()), ex.label))
                return out

            a, b = accuracy(base), accuracy(best)
            d = paired_diff(a, b)
            print(
                f"held-out test ({d.n} queries): baseline {d.a:.3f}, best {d.b:.3f}, "
                f"difference {d.diff:+.3f} (95% CI {d.low:+.3f} to {d.high:+.3f})"
            )
            client.close()
        engine.close()
    if model_cm is not None:
        model_cm.stop()


if __name__ == "__main__":
    main()
