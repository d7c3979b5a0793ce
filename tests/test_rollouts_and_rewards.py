"""Rollouts group calls and never mix across threads or tasks; rewards reach
the stored statistics; bad rewards fail loudly at the call."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
from collections import Counter

import openai
import pytest
from helpers import CANDIDATE, CANDIDATE_B, candidate_stats, messages, pick, seed

import synth_middleware as synth


def _client(server, backend, session, **kw):  # type: ignore[no-untyped-def]
    return synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session=session,
        backend=backend,
        warm=True,
        **kw,
    )


def test_rewards_change_stored_statistics(server, backend):
    (cid,) = seed(backend, "rw", CANDIDATE)
    client = _client(server, backend, "rw", selection=pick(cid))
    values = [1.0, 0.0, 1.0, 1.0]
    for v in values:
        resp = client.chat.completions.create(model="m", messages=messages())
        synth.reward(resp, v)
    assert synth.flush(5.0)
    st = candidate_stats(backend, "rw", cid)
    assert st["reward_count"] == 4
    assert st["rollout_count"] == 4
    assert math.isclose(st["avg_reward"], sum(values) / 4)


def test_reward_by_rollout_object_id_and_token(server, backend):
    (cid,) = seed(backend, "rw2", CANDIDATE)
    client = _client(server, backend, "rw2", selection=pick(cid))
    r1 = synth.rollout_of(client.chat.completions.create(model="m", messages=messages()))
    r2 = synth.rollout_of(client.chat.completions.create(model="m", messages=messages()))
    r3 = synth.rollout_of(client.chat.completions.create(model="m", messages=messages()))
    synth.reward(r1, 1.0)
    synth.reward(r2.rollout_id, 0.5, feedback="close, but wrong label")
    synth.reward(r3.token, 0.0, metadata={"expected": "card_arrival"})
    assert synth.flush(5.0)
    st = candidate_stats(backend, "rw2", cid)
    assert st["reward_count"] == 3
    assert math.isclose(st["avg_reward"], 0.5)


def test_reward_from_another_process_with_token(server, backend, tmp_path):
    (cid,) = seed(backend, "xproc", CANDIDATE)
    client = _client(server, backend, "xproc", selection=pick(cid))
    token = synth.rollout_of(client.chat.completions.create(model="m", messages=messages())).token
    assert synth.flush(5.0)
    db = backend.path
    code = f"""
import openai, synth_middleware as synth
from synth_middleware.backends.local import LocalBackend
b = LocalBackend({str(db)!r})
synth.wrap(openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1"), session="xproc", backend=b)
synth.reward({token!r}, 0.25)
assert synth.flush(5.0), synth.stats()
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    st = candidate_stats(backend, "xproc", cid)
    assert st["reward_count"] == 1 and math.isclose(st["avg_reward"], 0.25)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "1.0", True, None])
def test_bad_reward_values_raise_at_once(server, backend, bad):
    (cid,) = seed(backend, "badr", CANDIDATE)
    client = _client(server, backend, "badr", selection=pick(cid))
    resp = client.chat.completions.create(model="m", messages=messages())
    with pytest.raises(ValueError):
        synth.reward(resp, bad)
    synth.reward(resp, 1.0)
    assert synth.flush(5.0)
    assert candidate_stats(backend, "badr", cid)["reward_count"] == 1


def test_bad_reward_targets_and_feedback(server, backend):
    with pytest.raises(ValueError):
        synth.reward(object(), 1.0)
    with pytest.raises(ValueError):
        synth.reward("", 1.0)
    with pytest.raises(synth.TokenError):
        synth.reward("x" * 40, 1.0)
    (cid,) = seed(backend, "fb", CANDIDATE)
    client = _client(server, backend, "fb", selection=pick(cid))
    resp = client.chat.completions.create(model="m", messages=messages())
    with pytest.raises(ValueError):
        synth.reward(resp, 1.0, feedback="x" * (64 * 1024 + 1))


def test_unknown_rollout_id_is_a_counted_rejection(server, backend):
    seed(backend, "unk", CANDIDATE)
    _client(server, backend, "unk")
    before = synth.stats()["rejected"]
    synth.reward("ro_" + "0" * 24, 1.0)  # well-formed: only the backend knows
    assert not synth.flush(5.0)
    assert synth.stats()["rejected"] == before + 1


def test_rollout_groups_calls_and_sticky_keys_hold(server, backend):
    seed(backend, "sticky", CANDIDATE, CANDIDATE_B)
    client = _client(server, backend, "sticky", selection="explore")
    with synth.rollout(key="user-1", metadata={"tier": "gold"}) as r:
        a = client.chat.completions.create(model="m", messages=messages())
        b = client.chat.completions.create(model="m", messages=messages())
        assert synth.current_rollout() is r
    assert synth.current_rollout() is None
    assert synth.rollout_of(a) is r and synth.rollout_of(b) is r
    assert server.system_prompts()[0] == server.system_prompts()[1]
    # the same key in separate rollouts gets the same candidate every time
    served = set()
    for _ in range(25):
        with synth.rollout(key="user-7"):
            resp = client.chat.completions.create(model="m", messages=messages())
        served.add(synth.rollout_of(resp).candidate_id)
    assert len(served) == 1
    # different keys spread over the candidates (explore mode)
    spread = Counter()
    for i in range(60):
        with synth.rollout(key=f"k{i}"):
            resp = client.chat.completions.create(model="m", messages=messages())
        spread[synth.rollout_of(resp).candidate_id] += 1
    assert len(spread) >= 2


def test_threads_never_mix_rollouts(server, backend):
    ids = seed(backend, "thr", CANDIDATE, CANDIDATE_B)
    texts = {ids[0]: CANDIDATE, ids[1]: CANDIDATE_B}
    client = _client(server, backend, "thr", selection="explore")
    errors: list[str] = []

    def work(n: int) -> None:
        for j in range(10):
            with synth.rollout(key=f"t{n}-{j}") as r:
                user = f"thread {n} call {j} {r.rollout_id}"
                resp = client.chat.completions.create(model="m", messages=messages(user))
                if synth.rollout_of(resp) is not r or synth.current_rollout() is not r:
                    errors.append(f"mixed rollout in thread {n}")
                body = next(b for b in list(server.requests) if r.rollout_id in str(b))
                if r.candidate_id and body["messages"][0]["content"] != texts.get(
                    r.candidate_id, body["messages"][0]["content"]
                ):
                    errors.append("candidate text does not match the rollout's candidate")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


async def test_asyncio_tasks_never_mix_rollouts(server, backend):
    seed(backend, "tasks", CANDIDATE, CANDIDATE_B)
    client = synth.wrap(
        openai.AsyncOpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="tasks",
        backend=backend,
        warm=True,
    )

    async def one(i: int) -> bool:
        async with synth.rollout(key=f"task-{i}") as r:
            await asyncio.sleep(0.001 * (i % 5))
            resp = await client.chat.completions.create(model="m", messages=messages(str(i)))
            await asyncio.sleep(0)
            return synth.rollout_of(resp) is r and synth.current_rollout() is r

    assert all(await asyncio.gather(*[one(i) for i in range(40)]))
    assert synth.current_rollout() is None


def test_feedback_limit_is_the_same_bytes_everywhere() -> None:
    """Feedback is measured in UTF-8 bytes by reward() as by the engine: text that passes
    reward() is never refused later in the background (it once counted characters)."""
    from synth_middleware.wire import MAX_FEEDBACK_BYTES, feedback_error
    from synth_middleware.wire.records import parse_reward

    wide = "é" * (MAX_FEEDBACK_BYTES // 2 + 1)  # under the limit in characters, over in bytes
    assert len(wide) < MAX_FEEDBACK_BYTES and feedback_error(wide) is not None
    with pytest.raises(ValueError, match="bytes"):
        synth.reward("ro_" + "0" * 24, 1.0, feedback=wide)
    rec = {"idempotency_key": "k", "rollout_id": "r", "value": 1.0, "feedback": wide}
    assert parse_reward(0, rec, 0.0)["status"] == "rejected"  # type: ignore[index]
    fits = "é" * (MAX_FEEDBACK_BYTES // 2)
    assert feedback_error(fits) is None
    assert not isinstance(parse_reward(0, {**rec, "feedback": fits}, 0.0), dict)
