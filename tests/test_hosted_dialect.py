"""The HTTP backend against a stub of the hosted API's documented routes only.

Two defects, measured first with exactly this stub (issue #22):

* a refresh whose optional create-session POST failed threw away the state and
  candidate reads that succeeded, and the client served the baseline for the
  next 10 s; now the reads are used and the registration is tried again
  within about a second (with backoff);
* a batch-reward POST answered with the hosted service's own 404 (a body that
  is not one of our generic "not found" texts) made the backend drop the
  rewards instead of sending one request per reward.
"""

from __future__ import annotations

import time

import openai
import pytest
from _hosted_stub import BEST_ID, HostedStub
from helpers import BASELINE, CANDIDATE, messages, reward_record, wait_until

import synth_middleware as synth
from synth_middleware.backends.http import HttpBackend

SID = "hosted-sess"


@pytest.fixture
def stub():  # type: ignore[no-untyped-def]
    with HostedStub(SID, BASELINE, CANDIDATE) as s:
        yield s


@pytest.mark.parametrize("mode", ["500", "429", "drop"])
def test_failed_registration_keeps_the_good_reads_and_is_retried_soon(server, stub, mode):
    stub.fail_posts(mode, 1)  # the first create-session POST fails
    backend = HttpBackend(stub.url, "key", timeout=2.0, batch=False)
    try:
        client = synth.wrap(
            openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
            session=SID,
            backend=backend,
            selection="best",
        )
        t0 = time.monotonic()
        first_candidate_at = None
        for _ in range(300):
            client.chat.completions.create(model="m", messages=messages())
            if first_candidate_at is None and server.system_prompts()[-1] == CANDIDATE:
                first_candidate_at = time.monotonic() - t0
            time.sleep(0.005)
        prompts = server.system_prompts()
        served = sum(1 for p in prompts if p == CANDIDATE)
        # the reads of the failed refresh were good: the best candidate is served at once
        assert first_candidate_at is not None and first_candidate_at < 0.5, first_candidate_at
        assert served >= 250, served
        # and the registration was tried again (not 10 s later) and went through
        sessions = "/api/v1/online/sessions"
        assert wait_until(lambda: stub.count("POST", sessions, 200) >= 1, timeout=5)
        assert stub.count("POST", sessions) >= 2
    finally:
        synth.flush(2.0)
        backend.close()


def test_batch_route_missing_with_a_specific_404_body_falls_back_per_reward(stub):
    backend = HttpBackend(stub.url, "key", timeout=2.0)  # batch support discovered
    try:
        recs = [reward_record(i, SID, candidate_id=BEST_ID) for i in range(10)]
        results = backend.record_rewards(recs)
        assert [r["status"] for r in results] == ["accepted"] * 10
        assert len(stub.rewards) == 10
        assert backend.uses_batch is False
        assert stub.count("POST", "/api/v1/rewards/batch", 404) == 1
    finally:
        backend.close()


def test_reporter_delivers_every_reward_to_a_server_without_batch_route(stub, make_reporter):
    backend = HttpBackend(stub.url, "key", timeout=2.0)
    try:
        rep = make_reporter(backend)
        for i in range(10):
            rep.add_reward(reward_record(i, SID, candidate_id=BEST_ID))  # type: ignore[arg-type]
        assert rep.flush(10)
        s = rep.stats()
        assert s.failed == 0 and s.rejected == 0 and s.sent == 10
        assert len(stub.rewards) == 10
    finally:
        backend.close()


@pytest.mark.parametrize("status", [400, 405, 422])
def test_no_batch_4xx_drops_a_reward_the_per_reward_route_delivers(stub, status):
    """A 405, or a 400/422 refusing a lone reward on the batch route, is not the reward's
    fault when the per-reward route takes it."""
    backend = HttpBackend(stub.url, "key", timeout=2.0)
    stub.batch_status = status
    try:
        results = backend.record_rewards([reward_record(0, SID, candidate_id=BEST_ID)])
        assert [r["status"] for r in results] == ["accepted"]
        assert len(stub.rewards) == 1
    finally:
        backend.close()
