"""A backend that raises, hangs or answers garbage never fails or slows the app."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import pytest
from helpers import BASELINE, CANDIDATE, messages, seed

import synth_middleware as synth
from synth_middleware.errors import BackendError


class BrokenBackend:
    """A Backend whose behaviour can be switched: ok (delegate), raise, hang, garbage."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.mode = "ok"
        self.release = threading.Event()

    def _maybe_break(self) -> Any:
        if self.mode == "raise":
            raise BackendError("backend is down", status=503)
        if self.mode == "hang":
            self.release.wait(30)
            raise BackendError("timed out")
        if self.mode == "garbage":
            return ["not", "a", "state"]
        return None

    def ensure_session(self, session_id: str, **kw: Any) -> Any:
        return self._maybe_break() or self.inner.ensure_session(session_id, **kw)

    def get_state(self, session_id: str) -> Any:
        return self._maybe_break() or self.inner.get_state(session_id)

    def list_candidates(self, session_id: str, **kw: Any) -> Any:
        if self.mode == "garbage":
            return {"items": [{"candidate_id": 7}, "junk", {"no": "id"}]}
        return self._maybe_break() or self.inner.list_candidates(session_id, **kw)

    def get_candidate(self, candidate_id: str) -> Any:
        return self._maybe_break() or self.inner.get_candidate(candidate_id)

    def record_rollouts(self, rollouts: Any) -> None:
        self._maybe_break()
        self.inner.record_rollouts(rollouts)

    def record_rewards(self, rewards: Any) -> Any:
        return self._maybe_break() or self.inner.record_rewards(rewards)

    def close(self) -> None:
        self.release.set()


@pytest.mark.parametrize("mode", ["raise", "hang", "garbage"])
def test_broken_backend_keeps_last_good_candidate(server, backend, mode):
    (cid,) = seed(backend, f"br-{mode}", CANDIDATE)
    broken = BrokenBackend(backend)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session=f"br-{mode}",
        backend=broken,
        selection=lambda cands, r: cid,
        ttl=0.05,
        warm=True,
    )
    client.chat.completions.create(model="m", messages=messages())
    broken.mode = mode
    worst = 0.0
    for _ in range(30):
        t0 = time.perf_counter()
        resp = client.chat.completions.create(model="m", messages=messages())
        worst = max(worst, time.perf_counter() - t0)
        synth.reward(resp, 1.0)
        time.sleep(0.01)
    broken.mode = "ok"
    broken.release.set()
    assert set(server.system_prompts()) == {CANDIDATE}
    assert worst < 1.0  # the request path never waited on the hanging backend
    assert synth.flush(30)  # and every reward arrives once the backend recovers


@pytest.mark.parametrize("mode", ["raise", "hang", "garbage"])
def test_broken_backend_from_cold_start_serves_baseline(server, backend, mode):
    broken = BrokenBackend(backend)
    broken.mode = mode
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session=f"cold-{mode}",
        backend=broken,
        warm=True,
        warm_timeout=0.2,
    )
    t0 = time.perf_counter()
    for _ in range(10):
        client.chat.completions.create(model="m", messages=messages())
    assert time.perf_counter() - t0 < 3.0
    broken.mode = "ok"
    broken.release.set()
    assert set(server.system_prompts()) == {BASELINE}


def test_flush_never_hangs_when_backend_hangs(server, backend):
    seed(backend, "hangflush", CANDIDATE)
    broken = BrokenBackend(backend)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="hangflush",
        backend=broken,
        warm=True,
    )
    resp = client.chat.completions.create(model="m", messages=messages())
    broken.mode = "hang"
    synth.reward(resp, 1.0)
    t0 = time.perf_counter()
    ok = synth.flush(0.3)
    assert not ok and time.perf_counter() - t0 < 1.5
    broken.mode = "ok"
    broken.release.set()


def test_model_errors_reach_the_app_unchanged(server, backend):
    seed(backend, "moderr", CANDIDATE)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session="moderr",
        backend=backend,
        warm=True,
    )
    server.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=messages())
    server.fail_next(429, retry_after=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=messages())
