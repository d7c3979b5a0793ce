"""Reward delivery throughput and the cost of ``reward()``, in one run.

    .venv/bin/python benchmarks/rewards.py [--n 50000] [--http-n 30000] [--one-n 3000]

* in-process: rewards/s from ``add_reward`` until ``flush()`` confirms them all,
  delivered by the reporter to ``LocalBackend`` (SQLite file).
* loopback HTTP: the same through ``HttpBackend`` to the wire-API test server
  (``tests/_wire_server.py``: Starlette on uvicorn over an engine on a SQLite
  file) running in **another process**, with batches (``POST
  /api/v1/rewards/batch``) and one request per reward (the server without batch
  routes, 8 requests in flight).
* ``reward()``: microseconds per call through a wrapped client, with the server
  up and down (connections refused), without and with the durable outbox
  (group commit, and ``outbox_sync``).

Prints a markdown table. Throughput is given per wall second and per CPU
second (client plus server process), the latter being steadier on a shared
machine; ``reward()`` cost per call in wall and calling-thread CPU time.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai
from _common import machine

import synth_middleware as synth
from synth_middleware.backends.http import HttpBackend
from synth_middleware.backends.local import LocalBackend
from synth_middleware.client.reporter import RewardReporter, all_reporters

ROOT = Path(__file__).resolve().parent.parent
SID = "bench-rewards"
SID_LIVE = "bench-rewards-live"  # with challengers: evidence and routing epochs
BASELINE = "You are a support assistant. Classify the customer's request."

_SERVER = """
import sys, time
sys.path.insert(0, {tests!r})
from _wire_server import WireServer
server = WireServer(sys.argv[1])
server.batch = sys.argv[2] == "batch"
server.start()
server.engine.ensure_session({sid!r}, baseline={baseline!r})
print(server.url, flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
server.stop()
"""


def _records(
    n: int, tag: str, session: str = SID, candidates: Sequence[str | None] = (None,)
) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "idempotency_key": f"{tag}-{i}-{os.urandom(8).hex()}",
            "rollout_id": f"ro-{tag}-{i}",
            "session_id": session,
            "candidate_id": candidates[i % len(candidates)],
            "value": (i % 10) / 10,
            "created_at": now,
        }
        for i in range(n)
    ]


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _deliver(
    backend: Any,
    n: int,
    tag: str,
    server_pid: int | None = None,
    *,
    session: str = SID,
    candidates: Sequence[str | None] = (None,),
    **options: Any,
) -> tuple[float, float]:
    """(rewards per wall second, rewards per CPU second of client + server) from the
    first ``add_reward`` until ``flush`` confirmed them all. ``candidates``: the
    rewards go round-robin to these (``None``: the baseline)."""
    records = _records(n, tag, session, candidates)
    rep = RewardReporter(backend, max_queue=max(n, 100_000), **options)
    try:
        c0 = _proc_cpu(os.getpid()) + (_proc_cpu(server_pid) if server_pid else 0.0)
        t0 = time.perf_counter()
        for rec in records:
            rep.add_reward(rec)  # type: ignore[arg-type]
        if not rep.flush(600):
            raise RuntimeError(f"{tag}: not everything was delivered: {rep.stats()}")
        took = time.perf_counter() - t0
        cpu = _proc_cpu(os.getpid()) + (_proc_cpu(server_pid) if server_pid else 0.0) - c0
        if rep.stats().sent != n:
            raise RuntimeError(f"{tag}: sent {rep.stats().sent} of {n}")
        return n / took, n / max(cpu, 1e-9)
    finally:
        rep.close(0)


def _best(runs: list[tuple[float, float]]) -> str:
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return f"**{wall:,.0f} rewards/s** ({cpu:,.0f} per CPU-second)"


class _ServerProcess:
    """The wire test server in a child process (so it does not share our GIL)."""

    def __init__(self, db: Path, mode: str) -> None:
        code = _SERVER.format(tests=str(ROOT / "tests"), sid=SID, baseline=BASELINE)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(db), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the wire server did not start")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _reward_cost(
    backend: Any, session: str, n: int, rounds: int, **wrap_options: Any
) -> tuple[float, float]:
    """Median (wall, calling-thread CPU) microseconds per ``synth.reward()`` call."""
    synth.wrap(
        openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1"),
        session=session,
        backend=backend,
        max_queue=n * (rounds + 2),
        **wrap_options,
    )
    targets = [synth.Rollout(session, f"ro-{session}-{i}") for i in range(n * (rounds + 1))]
    for r in targets[:n]:  # warm up
        synth.reward(r, 1.0)
    wall, cpu = [], []
    for k in range(1, rounds + 1):
        chunk = targets[k * n : (k + 1) * n]
        t0, c0 = time.perf_counter(), time.thread_time()
        for r in chunk:
            synth.reward(r, 1.0)
        wall.append((time.perf_counter() - t0) / n)
        cpu.append((time.thread_time() - c0) / n)
    return statistics.median(wall) * 1e6, statistics.median(cpu) * 1e6


def _us(costs: tuple[float, float]) -> str:
    return f"{costs[0]:.2f} us wall, {costs[1]:.2f} us CPU"


def run(n: int, http_n: int, one_n: int) -> list[tuple[str, str]]:
    logging.basicConfig(level=logging.ERROR)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)

        # -- in-process
        local = LocalBackend(tmp / "local.db")
        local.ensure_session(SID, baseline=BASELINE)
        _deliver(local, 2000, "warm")
        runs = [_deliver(local, n, f"local{i}") for i in range(3)]
        rows.append(
            (
                f"delivered to LocalBackend in-process ({n:,} rewards, batches of 500)",
                _best(runs),
            )
        )
        # a session with live challengers: the engine also keeps the promotion
        # evidence per reward and recomputes routing (P(best) on a grid) per epoch
        local.ensure_session(SID_LIVE, baseline=BASELINE)
        live = [None, *(local.add_candidate(SID_LIVE, f"{BASELINE} ({i})") for i in range(6))]
        _deliver(local, 2000, "lwarm", session=SID_LIVE, candidates=live)
        runs = [
            _deliver(local, n, f"live{i}", session=SID_LIVE, candidates=live) for i in range(3)
        ]
        rows.append(
            (
                f"delivered to LocalBackend in-process, baseline + 6 live challengers "
                f"({n:,} rewards, batches of 500)",
                _best(runs),
            )
        )

        # -- loopback HTTP, batched
        srv = _ServerProcess(tmp / "batch.db", "batch")
        try:
            http = HttpBackend(srv.url, timeout=30)
            _deliver(http, 2000, "hwarm")
            pid = srv.proc.pid
            runs = [_deliver(http, http_n, f"http{i}", pid) for i in range(3)]
            rows.append(
                (
                    f"delivered over loopback HTTP, batches of 500 ({http_n:,} rewards)",
                    _best(runs),
                )
            )
            http.close()
        finally:
            srv.close()

        # -- loopback HTTP, one request per reward
        srv = _ServerProcess(tmp / "one.db", "one")
        try:
            http = HttpBackend(srv.url, timeout=30, pool_size=8)
            _deliver(http, 200, "owarm")
            assert http.uses_batch is False
            runs = [_deliver(http, one_n, "one", srv.proc.pid)]
            rows.append(
                (
                    f"delivered over loopback HTTP, one request per reward, 8 in flight "
                    f"({one_n:,} rewards)",
                    _best(runs).replace("**", ""),
                )
            )
            http.close()
        finally:
            srv.close()

        # -- reward() cost
        calls, rounds = 20_000, 5
        up = LocalBackend(tmp / "cost.db")
        up.ensure_session("cost-up", baseline=BASELINE)
        rows.append(
            (
                "`reward()` per call, backend up (LocalBackend)",
                _us(_reward_cost(up, "cost-up", calls, rounds)),
            )
        )
        down = HttpBackend(_refused_url(), timeout=1)
        rows.append(
            (
                "`reward()` per call, HTTP server down (connections refused)",
                _us(_reward_cost(down, "cost-down", calls, rounds)),
            )
        )
        down2 = HttpBackend(_refused_url(), timeout=1)
        rows.append(
            (
                "`reward()` per call, server down, outbox on (group commit)",
                _us(_reward_cost(down2, "cost-ob", calls, rounds, outbox=tmp / "o1.db")),
            )
        )
        for rep in all_reporters():  # let the group commit finish before the next row
            rep.wait_persisted(30)
        down3 = HttpBackend(_refused_url(), timeout=1)
        synth.configure(outbox_sync=True)
        try:
            cost = _reward_cost(down3, "cost-obs", 5000, 3, outbox=tmp / "o2.db")
        finally:
            synth.configure(outbox_sync=False)
        rows.append(
            (
                "`reward()` per call, server down, outbox on, `outbox_sync` "
                "(committed in the call)",
                _us(cost),
            )
        )
        for rep in all_reporters():
            rep.close(0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--http-n", type=int, default=30_000)
    parser.add_argument("--one-n", type=int, default=3_000)
    args = parser.parse_args()
    rows = run(args.n, args.http_n, args.one_n)
    print(f"Machine: {machine()}\n")
    print("| measurement | result |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
