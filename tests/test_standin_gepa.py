"""GEPA online on the engine, end to end offline: the stand-in model answers the rollouts,
the reflective stand-in proposer (over HTTP, through the engine's own proposer client)
writes the mutations from the training rollouts' failures and their expected labels."""

from __future__ import annotations

import json
import random

import openai
from conftest import BANKING77_DIR

from synth_middleware.client.candidates import parse_candidate
from synth_middleware.demos.banking77 import data
from synth_middleware.demos.banking77.task import Banking77Task
from synth_middleware.demos.standin import StandInModel, standin_completion
from synth_middleware.demos.standin.reflect import GUIDE_HEADER
from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore

SID = "gepa-standin"


def test_gepa_mutations_from_the_reflective_standin_fix_training_failures() -> None:
    ds = data.load(BANKING77_DIR)
    task = Banking77Task(ds.labels)
    rng = random.Random(5)
    train = rng.sample(ds.train, 400)
    with StandInModel(ds.labels) as model:
        client = openai.OpenAI(base_url=model.url, api_key="none", max_retries=0)
        eng = Engine(
            SqliteStore(":memory:"),
            optimizer=OptimizerOptions(
                proposer_client=client,
                proposer_model="standin",
                background=False,
                seed=0,
                backoff_initial=0.0,
                env={},
            ),
        )
        try:
            eng.ensure_session(
                SID,
                baseline=task.system_prompt,
                kind="gepa_online",
                config={
                    "online_proposer_min_rollouts": 20,
                    "online_rollouts_per_candidate": 10,
                    "reflection_minibatch_size": 6,
                },
            )
            for chunk in range(12):
                items = eng.list_candidates(SID, status="active", limit=1000)["items"]
                cands = [parse_candidate(it) for it in items]
                base = next(c for c in cands if c.is_baseline)
                rollouts, rewards = [], []
                for j in range(25):
                    i = chunk * 25 + j
                    ex = train[i % len(train)]
                    cand = cands[i % len(cands)]
                    msgs = task.messages(ex.text)
                    applied = msgs if cand.is_baseline else cand.apply(msgs, baseline=base)
                    assert applied is not None
                    body = {"messages": applied, **task.request_params()}
                    pred = task.parse(standin_completion(body))
                    ok = pred.label == ex.label
                    rollouts.append(
                        {
                            "session_id": SID,
                            "rollout_id": f"ro_{i}",
                            "candidate_id": cand.candidate_id,
                            "created_at": float(i),
                            "input": [{"role": "user", "content": task.user_message(ex.text)}],
                            "output": json.dumps({"intent": pred.label}),
                        }
                    )
                    rewards.append(
                        {
                            "idempotency_key": f"k_{i}",
                            "rollout_id": f"ro_{i}",
                            "value": 1.0 if ok else 0.0,
                            "created_at": float(i),
                            "metadata": {"expected": ex.label, "predicted": pred.label},
                        }
                    )
                eng.record_rollouts(rollouts)
                eng.record_rewards(rewards)
                eng.optimizer.step(SID)  # type: ignore[union-attr]
            metas = [c.metadata or {} for c in eng.session_state(SID).candidates.values()]
        finally:
            eng.close()
        assert model.counts["proposals"] >= 2  # the engine called the stand-in proposer
    mutations = [m for m in metas if m.get("operation") == "mutation"]
    assert mutations
    shown = {" ".join(ex.text.split()): ex.label for ex in train}  # what the loop served
    test_only = {" ".join(ex.text.split()) for ex in ds.test} - set(shown)
    fixed = 0
    for meta in mutations:
        instruction = meta["instruction"]
        assert instruction.startswith(task.system_prompt) and GUIDE_HEADER in instruction
        quoted = [q for line in instruction.splitlines() for q in line.split('"')[1::2]]
        assert quoted and all(q in shown for q in quoted)  # training rollouts only
        assert not test_only & set(quoted)
        # the training queries it was shown as failures are now answered right
        for q in quoted:
            body = {
                "messages": task.messages(q, system_prompt=instruction),
                **task.request_params(),
            }
            fixed += task.parse(standin_completion(body)).label == shown[q]
    assert fixed >= 2
