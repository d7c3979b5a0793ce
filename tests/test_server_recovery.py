"""Crash recovery: a `synth-middleware serve` process killed with SIGKILL and
restarted on the same database has every acknowledged write (the state is
rebuilt from the snapshot and the event log)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

KEY = "recovery-key"
HEADERS = {"X-API-Key": KEY}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(db: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "SYNTH_API_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synth_middleware.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            str(db),
            "--log-level",
            "warning",
            "--no-optimizer",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def _state(url: str, sid: str) -> dict:
    return httpx.get(f"{url}/api/v1/online/sessions/{sid}", headers=HEADERS).json()


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "synth.db"
    proc, url = _start(db)
    try:
        http = httpx.Client(base_url=url, headers=HEADERS, timeout=10)
        sid = "crash"
        assert (
            http.post(
                "/api/v1/online/sessions", json={"session_id": sid, "baseline": "B"}
            ).status_code
            == 200
        )
        cid = http.post(
            f"/api/v1/online/sessions/{sid}/candidates", json={"candidate_content": "C"}
        ).json()["candidate_id"]
        # over the engine's snapshot interval (1000 events), so restart = snapshot + log tail
        rewards = [
            {
                "idempotency_key": f"b{i}",
                "rollout_id": f"r{i}",
                "value": (i % 3) / 2,
                "session_id": sid,
                "candidate_id": cid if i % 2 else None,
            }
            for i in range(1200)
        ]
        results = http.post("/api/v1/rewards/batch", json={"rewards": rewards}).json()["results"]
        assert {r["status"] for r in results} == {"accepted"}

        acked: list[str] = []
        stop = threading.Event()

        def sender() -> None:  # acknowledged one by one while the process gets killed
            with httpx.Client(base_url=url, headers=HEADERS, timeout=5) as c:
                i = 0
                while not stop.is_set():
                    key = f"live{i}"
                    try:
                        r = c.post(
                            f"/api/v1/online/sessions/{sid}/reward",
                            json={
                                "reward_info": {"score": 1.0},
                                "rollout_id": f"l{i}",
                                "candidate_id": cid,
                                "idempotency_key": key,
                            },
                        )
                    except httpx.HTTPError:
                        return  # the server died mid-request: not acknowledged
                    if r.status_code == 200 and r.json()["status"] == "accepted":
                        acked.append(key)
                    i += 1

        t = threading.Thread(target=sender)
        t.start()
        deadline = time.monotonic() + 10
        while len(acked) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = _state(url, sid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        t.join(10)
        http.close()
        assert len(acked) >= 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc, url = _start(db)
    try:
        after = _state(url, sid)
        assert after["reward_count"] >= 1200 + len(acked)
        assert after["version"] >= before["version"]
        assert after["reward_count"] >= before["reward_count"]
        stats = {c["candidate_id"]: c for c in after["candidates"]}
        assert stats[cid]["reward_count"] >= 600 + len(acked)
        # every acknowledged key is stored: sending one again for another reward is an
        # idempotency conflict (a key names one reward), never a new reward
        again = [
            {"idempotency_key": k, "rollout_id": "x", "value": 0.0, "session_id": sid}
            for k in ["b0", "b1199", *acked]
        ]
        results = httpx.post(
            f"{url}/api/v1/rewards/batch", headers=HEADERS, json={"rewards": again}
        ).json()["results"]
        assert {r["status"] for r in results} == {"rejected"}
        assert all("idempotency_key conflict" in r["error"] for r in results)
        # and the server keeps writing on top of the recovered log
        r = httpx.post(
            f"{url}/api/v1/online/sessions/{sid}/reward",
            headers=HEADERS,
            json={"reward_info": {"score": 0.5}},
        )
        assert r.status_code == 200
        assert _state(url, sid)["version"] > after["version"]
        proc.send_signal(signal.SIGTERM)  # graceful: uvicorn re-raises the signal when done
        assert proc.wait(15) in (0, -signal.SIGTERM)
        assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
