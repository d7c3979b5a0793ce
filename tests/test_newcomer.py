"""Issue #24, a newcomer's first hour: seeding candidates before traffic (in-process,
over HTTP and in the SDK), no "unknown session" in a working run, invalid session
names refused at ``wrap()``, a reward target that names no rollout refused at once.

Real SQLite files, a real ``serve`` app on loopback, a real OpenAI client against the
local recording server.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from helpers import BASELINE, CANDIDATE, messages

import synth_middleware as synth
from synth_middleware.backends.http import HttpBackend
from synth_middleware.backends.local import LocalBackend
from synth_middleware.server.background import BackgroundServer

SID = "support-classifier"


def _wrap(server: Any, backend: Any, session: str = SID, **kw: Any) -> Any:
    return synth.wrap(
        openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
        session=session,
        backend=backend,
        **kw,
    )


def _skips(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if any(
            bad in r.getMessage()
            for bad in ("unknown session", "skipped", "skipping candidate", "no prompt text")
        )
    ]


def _by_id(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["candidate_id"]: c for c in state["candidates"]}


# -- item 1: seeding before traffic ----------------------------------------------------


def test_add_candidate_on_a_fresh_database_then_traffic_fills_the_baseline(
    tmp_path: Path, server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    backend = LocalBackend(tmp_path / "synth.db")
    try:
        cid = backend.add_candidate(SID, "You are a precise intent classifier.")
        state = backend.get_state(SID)
        assert cid in _by_id(state) and state["generation"] == 0
        client = _wrap(server, backend, warm=True)
        for _ in range(6):
            resp = client.chat.completions.create(model="m", messages=messages())
            synth.reward(resp, 1.0)
        assert synth.flush(5.0)
        state = backend.get_state(SID)
        cands = _by_id(state)
        base = cands[state["baseline_candidate_id"]]
        # the app's own prompt became the baseline of the same generation: the seeded
        # candidate stays live (no new generation retiring it)
        assert backend.get_candidate(base["candidate_id"])["candidate_content"] == BASELINE
        assert state["generation"] == 0 and cands[cid]["status"] == "active"
        active = [c for c in cands.values() if c["status"] == "active"]
        assert sum(c["rollout_count"] for c in cands.values()) == 6
        assert sum(c["reward_count"] for c in active) == 6
        assert _skips(caplog) == []
    finally:
        synth.flush(2.0)
        backend.close()


class _SlowRegistration(LocalBackend):
    """A backend whose session registration takes a while (a busy database): the
    background refresh is still registering when the first rewards go out."""

    def ensure_session(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)
        return super().ensure_session(*args, **kwargs)


def test_first_call_reward_and_flush_never_meet_an_unknown_session(
    tmp_path: Path, server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    backend = _SlowRegistration(tmp_path / "synth.db")
    try:
        client = _wrap(server, backend, session="race-1")
        resp = client.chat.completions.create(model="m", messages=messages())
        synth.reward(resp, 1.0)  # takes the rollout record along at once
        assert synth.flush(5.0)
        assert _skips(caplog) == []
        state = backend.get_state("race-1")
        assert state["rollout_count"] == 1 and state["reward_count"] == 1
        # and right after the first call, seeding works without a flush()
        assert backend.add_candidate("race-1", CANDIDATE).startswith("cand_")
    finally:
        synth.flush(2.0)
        backend.close()


def test_calls_without_a_system_prompt_still_create_their_session(
    tmp_path: Path, server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    backend = LocalBackend(tmp_path / "synth.db")
    try:
        client = _wrap(server, backend, session="no-system")
        for _ in range(3):
            resp = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            synth.reward(resp, 1.0)
        assert synth.flush(5.0)
        assert backend.get_state("no-system")["reward_count"] == 3
        assert _skips(caplog) == []
    finally:
        synth.flush(2.0)
        backend.close()


def test_seeding_over_http_and_in_the_sdk(
    tmp_path: Path, server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with BackgroundServer(db_path=tmp_path / "served.db") as srv:
        r = httpx.post(
            f"{srv.url}/api/v1/online/sessions/seeded-http/candidates",
            json={"candidate_content": CANDIDATE},
        )
        assert r.status_code == 201, r.text
        from synth_middleware import SynthClient

        with SynthClient(base_url=srv.url) as sdk:
            session = sdk.optimization.online.create(kind="mipro_online", session_id="seeded-sdk")
            added = session.add_candidate(CANDIDATE)
        backend = HttpBackend(srv.url)
        try:
            client = _wrap(server, backend, session="seeded-sdk", warm=True)
            for _ in range(4):
                synth.reward(client.chat.completions.create(model="m", messages=messages()), 1.0)
            assert synth.flush(5.0)
            state = backend.get_state("seeded-sdk")
            cands = _by_id(state)
            assert cands[added["candidate_id"]]["status"] == "active"
            base_id = state["baseline_candidate_id"]
            assert backend.get_candidate(base_id)["candidate_content"] == BASELINE
            assert sum(c["rollout_count"] for c in cands.values()) == 4
            assert _skips(caplog) == []
        finally:
            synth.flush(2.0)
            backend.close()


# -- item 4: session names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("support/classifier", "'/'"),
        ("support classifier", "' '"),
        ("support\nclassifier", "'\\n'"),
        ("s" * 5000, "5000 characters"),
        ("", "non-empty"),
    ],
)
def test_wrap_refuses_invalid_session_names(
    tmp_path: Path, server: Any, name: str, says: str
) -> None:
    with LocalBackend(tmp_path / "synth.db") as backend:
        with pytest.raises(ValueError) as info:
            _wrap(server, backend, session=name)
    message = str(info.value)
    assert says in message and "A-Z a-z 0-9" in message
    assert len(message) < 300  # a 5,000-character name is not echoed in full


# -- item 5: reward targets ----------------------------------------------------------------


def test_reward_refuses_a_target_that_names_no_rollout(tmp_path: Path, server: Any) -> None:
    with LocalBackend(tmp_path / "synth.db") as backend:
        client = _wrap(server, backend, session="targets", warm=True)
        resp = client.chat.completions.create(model="m", messages=messages())
        with pytest.raises(ValueError, match="names no rollout"):
            synth.reward("not-a-token", 1.0)
        with synth.rollout(rollout_id="order-1234") as r:  # an id the app chose
            client.chat.completions.create(model="m", messages=messages())
        synth.reward("order-1234", 1.0)
        synth.reward(resp.synth.rollout_id, 1.0)  # ours, also from another process
        synth.reward(resp.synth.token, 0.5)
        assert synth.flush(5.0)
        assert backend.get_state("targets")["reward_count"] == 3
        assert r.rollout_id == "order-1234"


# -- item 3: commands from a plain shell, one data lookup ---------------------------------


def test_examples_outside_the_venv_say_how_to_run_them() -> None:
    import subprocess
    import sys

    from conftest import ROOT

    for name in ("quickstart.py", "banking77_online.py"):
        out = subprocess.run(  # -S: no site-packages, as a python outside the venv
            [sys.executable, "-S", str(ROOT / "examples" / name)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert ".venv/bin/python" in out.stderr, out.stderr


def test_the_cli_finds_shared_data_without_being_told(tmp_path: Path) -> None:
    """``container serve`` of the Banking77 task from a plain shell: no $BANKING77_DIR,
    an empty download cache and no network; it must find ../shared/data/banking77."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from conftest import BANKING77_DIR, ROOT

    from synth_middleware._shared_data import find_banking77_dir

    if not (BANKING77_DIR / "train.csv").is_file():
        pytest.skip(f"no Banking77 copy at {BANKING77_DIR}")
    env = {k: v for k, v in os.environ.items() if k != "BANKING77_DIR"}
    env.update(
        SYNTH_CACHE_DIR=str(tmp_path / "cache"),
        BANKING77_URL="http://127.0.0.1:9/banking77",  # a download would fail at once
        ENVIRONMENT_API_KEY="k",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synth_middleware.cli",
            "container",
            "serve",
            "synth_middleware.demos.banking77.task:create_app",
            "--factory",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    old = os.environ.pop("BANKING77_DIR", None)
    try:
        assert find_banking77_dir() == BANKING77_DIR.resolve()
    finally:
        if old is not None:
            os.environ["BANKING77_DIR"] = old
    assert ROOT.exists()


def test_a_long_invalid_session_id_is_not_logged_in_full(tmp_path: Path) -> None:
    from synth_middleware.errors import InvalidRequestError

    with LocalBackend(tmp_path / "synth.db") as backend:
        with pytest.raises(InvalidRequestError) as info:
            backend.ensure_session("s" * 5000, baseline="b")
    assert len(str(info.value)) < 200 and "5000 characters" in str(info.value)
