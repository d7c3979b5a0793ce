"""Replicas on PostgreSQL: rollouts/s with one, two and three `serve` processes, and
takeover time when a replica dies.

    eval "$(scripts/ci_postgres.sh)"            # or any PostgreSQL: --pg-url
    .venv/bin/python benchmarks/replicas.py [--seconds 5] [--rounds 3]

Each configuration runs on a fresh schema. The replicas are
``synth-middleware serve --db postgresql://...`` subprocesses (optimizer off
for the throughput runs, as in ``benchmarks/server.py``); the load comes from
this process (raw keep-alive HTTP/1.1 on asyncio), its clients spread
round-robin over the replicas, so every replica writes to the same session.
For comparison the same load runs against one server on SQLite.

* batched: each client loops ``POST /api/v1/rollouts/batch`` (100 rollouts)
  then ``POST /api/v1/rewards/batch`` (their rewards): what ``HttpBackend``
  and the reward reporter send;
* one request per rollout: ``POST .../reward`` naming the rollout and the
  candidate (what ``session.update_reward`` sends), 32 clients.

Reported per run: rollouts/s, CPU seconds per 1,000 rollouts spent in the
replicas, in PostgreSQL and in the load generator, and write transactions per
second (counted in the log: the events of one transaction share a timestamp),
i.e. how many rollouts each transaction carried (group commit).

Takeover: three replicas with the optimizer on own twelve sessions between
them (leases of 3 s); the one owning the most is killed with SIGKILL and the
time until each of its sessions has a new owner is measured (then a new
replica is started to replace it); the same with SIGTERM (a clean stop hands
the sessions over at once).

Prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
from _common import machine
from server import RawClient, cpu_seconds, free_port, pct, wait_http
from server import batched as server_batched
from server import reward_only as server_reward_only

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

ROOT = Path(__file__).resolve().parent.parent


# -- PostgreSQL ------------------------------------------------------------------------


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new schema; yields a URL whose ``search_path`` is it; dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options={quote(f'-csearch_path={name}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def postgres_cpu() -> float:
    """CPU seconds used so far by every ``postgres`` process on this machine."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            total += cpu_seconds(int(pid))
        except OSError:
            continue
    return total


def last_seq(url: str) -> int:
    """The highest seq in the log."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
    return int(row[0]) if row else 0


def write_txns(url: str, after_seq: int) -> int:
    """Write transactions since ``after_seq`` (all events of one share its timestamp)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT created_at) FROM events WHERE seq > %s", (after_seq,)
        ).fetchone()
    return int(row[0]) if row else 0


# -- replicas ---------------------------------------------------------------------------


def start(db: str, n: int, *extra: str) -> list[tuple[subprocess.Popen[bytes], int]]:
    """``n`` ``serve`` processes on ``db``, ready to serve."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTH_PROPOSER_", "OPENAI_"))}
    out = []
    for _ in range(n):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synth_middleware.cli",
                "serve",
                "--port",
                str(port),
                "--db",
                db,
                "--log-level",
                "warning",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        out.append((proc, port))
    for _, port in out:
        wait_http(port, timeout=60)
    return out


def stop(group: Sequence[tuple[subprocess.Popen[bytes], int]]) -> None:
    """SIGTERM every process and wait."""
    for proc, _ in group:
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in group:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def setup(port: int, sid: str = "bench") -> tuple[str, list[str]]:
    """A session with a baseline and two candidates."""
    c = await RawClient("127.0.0.1", port).connect()
    _, body = await c.request(
        "POST",
        "/api/v1/online/sessions",
        {"session_id": sid, "kind": "gepa_online", "baseline": "You classify."},
    )
    cids = [json.loads(body)["baseline_candidate_id"]]
    for text in ("Candidate A.", "Candidate B."):
        _, body = await c.request(
            "POST", f"/api/v1/online/sessions/{sid}/candidates", {"candidate_content": text}
        )
        cids.append(json.loads(body)["candidate_id"])
    c.close()
    return sid, cids


# -- load ---------------------------------------------------------------------------------


async def batched(
    ports: list[int], sid: str, cids: list[str], clients: int, seconds: float, size: int = 100
) -> float:
    """Rollouts/s in batches of ``size``; client ``w`` talks to replica ``w % len(ports)``."""
    return (await server_batched(ports, sid, cids, clients, seconds, size))["rollouts"]


async def reward_only(
    ports: list[int], sid: str, cids: list[str], clients: int, seconds: float
) -> float:
    """Rollouts/s, one ``POST .../reward`` per rollout (it creates the rollout)."""
    return (await server_reward_only(ports, sid, cids, clients, seconds))["rollouts"]


async def fetch_latency(port: int, sid: str, n: int) -> list[float]:
    """Sequential ``GET .../candidates`` on an idle replica (seconds each)."""
    c = await RawClient("127.0.0.1", port).connect()
    raw = c.build("GET", f"/api/v1/online/sessions/{sid}/candidates?status=active")
    for _ in range(200):
        await c.send(raw)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = await c.send(raw)
        samples.append(time.perf_counter() - t0)
        assert status == 200
    c.close()
    return samples


def measure(
    db: str | None,
    group: list[tuple[subprocess.Popen[bytes], int]],
    run: Callable[[], float],
) -> dict[str, float]:
    """Run ``run`` and account CPU (replicas, PostgreSQL, this process) and commits."""
    procs = [p for p, _ in group]
    rep0 = sum(cpu_seconds(p.pid) for p in procs)
    pg0 = postgres_cpu()
    me0 = time.process_time()
    seq0 = last_seq(db) if db else 0
    t0 = time.perf_counter()
    rate = run()
    elapsed = time.perf_counter() - t0
    n = rate * elapsed
    per_k = 1000 / n if n else float("nan")
    return {
        "rate": rate,
        "replica_cpu": (sum(cpu_seconds(p.pid) for p in procs) - rep0) * per_k,
        "pg_cpu": (postgres_cpu() - pg0) * per_k,
        "client_cpu": (time.process_time() - me0) * per_k,
        "commits": (write_txns(db, seq0) / elapsed) if db else float("nan"),
    }


def throughput(pg_url: str | None, n: int, seconds: float) -> dict[str, dict[str, float]]:
    """Both scenarios with ``n`` replicas on PostgreSQL (``pg_url``), or one on SQLite."""
    with tempfile.TemporaryDirectory() as tmp, _target(pg_url, tmp) as db:
        group = start(db, n, "--no-optimizer")
        try:
            ports = [port for _, port in group]
            sid, cids = asyncio.run(setup(ports[0]))
            pg = db if pg_url else None
            out = {
                "batched": measure(
                    pg, group, lambda: asyncio.run(batched(ports, sid, cids, 6, seconds))
                ),
                "single": measure(
                    pg, group, lambda: asyncio.run(reward_only(ports, sid, cids, 32, seconds))
                ),
            }
        finally:
            stop(group)
    return out


def _median_run(results: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per scenario, the run with the median rate (its other columns kept with it)."""
    out: dict[str, dict[str, float]] = {}
    for key in results[0]:
        ordered = sorted(results, key=lambda r: r[key]["rate"])
        out[key] = {**ordered[len(ordered) // 2][key], "all": [r[key]["rate"] for r in results]}  # type: ignore[dict-item]
    return out


@contextmanager
def _target(pg_url: str | None, tmp: str) -> Iterator[str]:
    if pg_url is None:
        yield str(Path(tmp) / "bench.db")
    else:
        with fresh_schema(pg_url) as db:
            yield db


def staleness_latency(pg_url: str, n: int) -> dict[float, list[float]]:
    """Candidate fetch latency on one idle replica, reads re-checked always vs every 100 ms."""
    out: dict[float, list[float]] = {}
    with fresh_schema(pg_url) as db:
        for ms in (0.0, 100.0):
            group = start(db, 1, "--no-optimizer", "--read-staleness-ms", str(ms))
            try:
                port = group[0][1]
                sid, _ = asyncio.run(setup(port))
                out[ms] = asyncio.run(fetch_latency(port, sid, n))
            finally:
                stop(group)
    return out


# -- takeover -------------------------------------------------------------------------------


def _owners(db: str) -> dict[str, str]:
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT session_id, owner FROM session_leases"
            " WHERE expires_at > EXTRACT(EPOCH FROM clock_timestamp())"
        ).fetchall()
    return {str(s): str(o) for s, o in rows}


def takeover(pg_url: str, rounds: int, sessions: int = 12) -> dict[str, list[float]]:
    """Per-session takeover seconds after SIGKILL and after SIGTERM of the busiest owner."""
    times: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM": []}
    with fresh_schema(pg_url) as db:
        group = start(db, 3)
        try:
            for k in range(sessions):
                asyncio.run(setup(group[k % 3][1], sid=f"s{k}"))
            for r in range(2 * rounds):
                how = signal.SIGKILL if r % 2 == 0 else signal.SIGTERM
                deadline = time.monotonic() + 20
                while len(owners := _owners(db)) < sessions and time.monotonic() < deadline:
                    time.sleep(0.05)
                by_pid: dict[int, list[str]] = {}
                for sid, owner in owners.items():
                    by_pid.setdefault(int(owner.split(":")[1]), []).append(sid)
                victim = max(group, key=lambda g: len(by_pid.get(g[0].pid, [])))
                mine = set(by_pid.get(victim[0].pid, []))
                victim_id = next(o for s, o in owners.items() if s in mine)
                victim[0].send_signal(how)
                killed = time.monotonic()
                pending = set(mine)
                while pending and time.monotonic() - killed < 30:
                    now = _owners(db)
                    for sid in list(pending):
                        if now.get(sid, victim_id) != victim_id:
                            times[how.name].append(time.monotonic() - killed)
                            pending.discard(sid)
                    time.sleep(0.02)
                victim[0].wait(15)
                group.remove(victim)
                group.extend(start(db, 1))  # a replacement (sessions rebalance onto it)
        finally:
            stop(group)
    return times


# -- report -----------------------------------------------------------------------------------


def main() -> None:
    """Run every measurement and print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pg-url", default=os.environ.get("SYNTH_TEST_PG_URL"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--rounds", type=int, default=3, help="runs per configuration; kills and clean stops"
    )
    ap.add_argument("--fetches", type=int, default=2000)
    ap.add_argument("--replicas", default="1,2,3", help="replica counts to measure")
    ap.add_argument("--no-takeover", action="store_true", help="throughput and latency only")
    args = ap.parse_args()
    if not args.pg_url:
        sys.exit('need --pg-url or SYNTH_TEST_PG_URL (eval "$(scripts/ci_postgres.sh)")')
    if uvloop is not None:
        uvloop.install()

    configs: list[tuple[str, str | None, int]] = [("SQLite, 1 server", None, 1)]
    for n in (int(x) for x in args.replicas.split(",")):
        configs.append((f"PostgreSQL, {n} replica{'s' if n > 1 else ''}", args.pg_url, n))
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name, _, _ in configs}
    for _ in range(args.rounds):  # interleaved, so that load from elsewhere hits all alike
        for name, url, n in configs:
            runs[name].append(throughput(url, n, args.seconds))
    rows = [(name, _median_run(results)) for name, results in runs.items()]
    lat = staleness_latency(args.pg_url, args.fetches)
    kills = {} if args.no_takeover else takeover(args.pg_url, args.rounds)
    load = os.getloadavg()

    print(
        f"### Replicas\n\n{machine()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}; {args.seconds:.0f} s per run; median of {args.rounds} interleaved runs "
        "(all runs in brackets; the other columns belong to the median run)\n"
    )
    for key, title in (
        ("batched", "batched 100 (rollouts batch + rewards batch), 6 clients"),
        ("single", "one request per rollout (`POST .../reward`), 32 clients"),
    ):
        print(f"\n{title}:\n")
        print(
            "| store, replicas | rollouts/s | CPU s per 1k rollouts: replicas | PostgreSQL "
            "| load generator | write transactions/s | rollouts per transaction |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, res in rows:
            r = res[key]
            per_commit = r["rate"] / r["commits"] if r["commits"] == r["commits"] else None
            spread = "/".join(f"{x:,.0f}" for x in sorted(r["all"]))  # type: ignore[arg-type]
            print(
                f"| {name} | {r['rate']:,.0f} ({spread}) | {r['replica_cpu']:.3f} | "
                f"{r['pg_cpu']:.3f} | {r['client_cpu']:.3f} | "
                + (f"{r['commits']:,.0f} | {per_commit:,.1f} |" if per_commit else "- | - |")
            )
    print("\n| candidate page fetch, one idle replica | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    for ms, samples in lat.items():
        print(
            f"| `--read-staleness-ms {ms:g}` | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} |"
        )
    print(
        "\n| takeover (3 replicas, 12 sessions, lease 3 s) | sessions moved | min s | median s | max s |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for how, ts in kills.items():
        if ts:
            print(
                f"| {how} of the busiest owner, {args.rounds} times | {len(ts)} | {min(ts):.2f} | "
                f"{statistics.median(ts):.2f} | {max(ts):.2f} |"
            )


if __name__ == "__main__":
    main()
