"""Server soak: ``synth-middleware serve`` under mixed load for minutes; memory must stay flat.

    .venv/bin/python benchmarks/server_soak.py                 # 10 minutes
    .venv/bin/python benchmarks/server_soak.py --minutes 2 --workers 2

Loopback only, bounded in time. The server runs as its own process on a temp
SQLite file with the optimizer on, its Pattern A proxy forwarding to a
``FakeOpenAIServer`` in this process (which also answers the optimizer's
proposer). ``--workers`` load processes each run three threads until the time
is up:

* Pattern B: a wrapped ``openai.OpenAI`` client (``HttpBackend`` -> the server,
  candidate refresh every ``--ttl`` seconds) calls the model and rewards every
  response through the reporter (batched rollouts and rewards); every fourth
  call inside ``synth.rollout(key=...)``.
* Pattern A: a call through the server's proxy (one in five streamed), then a
  direct ``POST .../reward`` for the rollout id the proxy returned.
* Reads: the session state, a page of candidates and one candidate by id.

Every HTTP request the load makes to the server goes through a counting
``httpx`` transport ("requests so far" count from the start of the load, warm-up
included). The server's RSS (``/proc``) is sampled after a warm-up of
``--warmup`` seconds and then every minute. At the end the load flushes, and
the script prints a markdown table (minute, RSS, requests so far, errors), the
totals, and the rewards stored in the database against those acknowledged to
the load (the reporter's ``sent`` plus the direct posts answered ``accepted``).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine
from server import cpu_seconds, free_port, start_server

KEY = "soak-key"
SESSION = "soak"
BASELINE = "You are a support assistant. Classify the customer's request."
SEED = "You are a banking intent classifier. Answer with one label."
QUESTIONS = (
    "I lost my card",
    "my transfer has not arrived yet",
    "how do I change my PIN?",
    "the ATM kept my card",
    "why was I charged twice?",
)

# Shared counters (one mp.Array per worker): requests, errors, and what made them.
REQUESTS, ERRORS, CALLS_B, CALLS_A, DIRECT_ACKED, READS, APP_RAISED = range(7)
N_COUNTERS = 7


# --------------------------------------------------------------------------- load


def _bump(counters: Any, index: int) -> None:
    with counters.get_lock():
        counters[index] += 1


def _counting_transport(counters: Any) -> Any:
    """An ``httpx`` transport that counts every request to the server and its failures
    (a transport error or an answer >= 400)."""
    import httpx

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            _bump(counters, REQUESTS)
            try:
                response = super().handle_request(request)
            except Exception:
                _bump(counters, ERRORS)
                raise
            if response.status_code >= 400:
                _bump(counters, ERRORS)
            return response

    return Counting()


def _pattern_b(client: Any, until: float, pause: float, counters: Any, rng: random.Random) -> int:
    """Wrapped calls, each rewarded through the reporter; returns rewards enqueued."""
    import synth_middleware as synth

    enqueued = 0
    i = 0
    while time.time() < until:
        i += 1
        msgs = [
            {"role": "system", "content": BASELINE},
            {"role": "user", "content": f"{rng.choice(QUESTIONS)} (#{i})"},
        ]
        try:
            if i % 4 == 0:
                with synth.rollout(key=f"user-{i % 50}") as r:
                    client.chat.completions.create(model="m", messages=msgs)
                synth.reward(r, rng.random())
            else:
                resp = client.chat.completions.create(model="m", messages=msgs)
                synth.reward(resp, rng.random())
            enqueued += 1
            _bump(counters, CALLS_B)
        except Exception:  # nothing may reach the app: count it
            _bump(counters, APP_RAISED)
        time.sleep(pause)
    return enqueued


def _pattern_a(http: Any, until: float, pause: float, counters: Any, rng: random.Random) -> None:
    """Proxy calls (one in five streamed), each followed by a direct reward post."""
    path = f"/api/v1/online/sessions/{SESSION}/proxy/chat/completions"
    i = 0
    while time.time() < until:
        i += 1
        body: dict[str, Any] = {
            "model": "m",
            "messages": [
                {"role": "system", "content": BASELINE},
                {"role": "user", "content": f"{rng.choice(QUESTIONS)} (proxy #{i})"},
            ],
        }
        try:
            if i % 5 == 0:
                body["stream"] = True
                with http.stream("POST", path, json=body) as resp:
                    resp.read()
            else:
                resp = http.post(path, json=body)
            rid = resp.headers.get("x-gepa-rollout-id")
            if resp.status_code == 200 and rid:
                _bump(counters, CALLS_A)
                ack = http.post(
                    f"/api/v1/online/sessions/{SESSION}/reward",
                    json={
                        "reward_info": {"score": rng.random()},
                        "rollout_id": rid,
                        "idempotency_key": f"direct-{rid}",
                    },
                )
                if ack.status_code == 200 and ack.json().get("status") == "accepted":
                    _bump(counters, DIRECT_ACKED)
        except Exception:
            _bump(counters, APP_RAISED)
        time.sleep(pause)


def _reads(http: Any, until: float, pause: float, counters: Any, rng: random.Random) -> None:
    """State, a candidate page and one candidate, as a dashboard or an app would."""
    while time.time() < until:
        try:
            http.get(f"/api/v1/online/sessions/{SESSION}")
            page = http.get(f"/api/v1/systems/{SESSION}/candidates", params={"limit": "20"})
            items = (page.json().get("items") or []) if page.status_code == 200 else []
            if items:
                http.get(f"/api/v1/candidates/{rng.choice(items)['candidate_id']}")
            _bump(counters, READS)
        except Exception:
            _bump(counters, APP_RAISED)
        time.sleep(pause * 4)


def worker_main(
    idx: int,
    server_url: str,
    model_url: str,
    until: float,
    pause: float,
    ttl: float,
    counters: Any,
    results: Any,
) -> None:
    """One load process: Pattern B, Pattern A and reads, each in a thread, until ``until``."""
    import logging

    import httpx
    import openai

    import synth_middleware as synth
    from synth_middleware.backends.http import HttpBackend

    logging.basicConfig(level=logging.ERROR)
    backend = HttpBackend(server_url, KEY, timeout=10.0, transport=_counting_transport(counters))
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=model_url, max_retries=0, timeout=10),
        session=SESSION,
        backend=backend,
        ttl=ttl,
        warm=True,
    )
    http = httpx.Client(
        base_url=server_url,
        headers={"authorization": f"Bearer {KEY}"},
        transport=_counting_transport(counters),
        timeout=10.0,
    )
    enqueued = [0]

    def run_b() -> None:
        enqueued[0] = _pattern_b(client, until, pause, counters, random.Random(idx))

    threads = [
        threading.Thread(target=run_b),
        threading.Thread(
            target=_pattern_a, args=(http, until, pause, counters, random.Random(100 + idx))
        ),
        threading.Thread(
            target=_reads, args=(http, until, pause, counters, random.Random(200 + idx))
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flushed = synth.flush(60)
    stats = synth.stats()
    http.close()
    results.put(
        {
            "idx": idx,
            "enqueued": enqueued[0],
            "flushed": flushed,
            "reporter": {k: v for k, v in stats.items() if k != "sessions"},
        }
    )


# --------------------------------------------------------------------------- server side


def rss_mib(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of a process in MiB (Linux ``/proc``)."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def start_soak_server(db: Path, port: int, model_url: str) -> subprocess.Popen[bytes]:
    """``synth-middleware serve`` with the optimizer on and the proxy pointed at the model."""
    return start_server(
        db,
        port,
        ["--upstream-url", model_url],
        env={"SYNTH_API_KEY": KEY, "SYNTH_UPSTREAM_API_KEY": "k"},
        optimizer=True,
    )


def setup_session(url: str, model_url: str) -> None:
    """The session (optimizer proposing through the fake model) and one seed candidate."""
    import httpx

    h = {"authorization": f"Bearer {KEY}"}
    httpx.post(
        f"{url}/api/v1/online/sessions",
        headers=h,
        json={
            "session_id": SESSION,
            "baseline": BASELINE,
            "config_body": {"proposer_url": model_url, "proposer_model": "proposer"},
        },
    ).raise_for_status()
    httpx.post(
        f"{url}/api/v1/online/sessions/{SESSION}/candidates",
        headers=h,
        json={"candidate_content": SEED},
    ).raise_for_status()


def db_counts(db: Path) -> dict[str, Any]:
    """What the log holds at the end."""
    conn = sqlite3.connect(db)
    try:
        types = dict(conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())
        keys, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM reward_keys"
        ).fetchone()
        direct = conn.execute(
            "SELECT COUNT(*) FROM reward_keys WHERE idempotency_key LIKE 'direct-%'"
        ).fetchone()[0]
        rollouts = conn.execute("SELECT COUNT(*) FROM rollouts").fetchone()[0]
        cands = dict(conn.execute("SELECT status, COUNT(*) FROM candidates GROUP BY status"))
    finally:
        conn.close()
    return {
        "events": types,
        "reward_keys": keys,
        "reward_keys_distinct": distinct,
        "direct_reward_keys": direct,
        "rollouts": rollouts,
        "candidates": cands,
        "db_mib": db.stat().st_size / 2**20,
    }


def run(
    minutes: float, workers: int, warmup: float, pause: float, ttl: float, every: float
) -> None:
    from synth_middleware.testing import FakeOpenAIServer

    proposals = [0]

    def reply(body: dict[str, Any]) -> str:
        if body.get("model") == "proposer":
            proposals[0] += 1
            return f"Improved:\n```\nPROPOSED-{proposals[0]}: classify the banking intent.\n```"
        return "card_lost"

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(reply=reply, record=False) as model:
        db = Path(tmp) / "soak.db"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_soak_server(db, port, model.url)
        try:
            setup_session(url, model.url)
            t_start = time.time()
            until = t_start + warmup + minutes * 60
            counters = [ctx.Array("q", N_COUNTERS) for _ in range(workers)]
            results = ctx.Queue()
            procs = [
                ctx.Process(
                    target=worker_main,
                    args=(i, url, model.url, until, pause, ttl, counters[i], results),
                    daemon=True,
                )
                for i in range(workers)
            ]
            for p in procs:
                p.start()

            def totals() -> list[int]:
                return [sum(c[i] for c in counters) for i in range(N_COUNTERS)]

            samples: list[tuple[float, float, list[int], float]] = []
            t_sample = t_start + warmup
            for k in range(math.ceil(minutes * 60 / every) + 1):
                due = min(t_sample + every * k, until)
                while time.time() < due:
                    model.clear()  # the fake model records requests; keep this process small
                    time.sleep(min(1.0, max(0.0, due - time.time())))
                now = (time.time() - t_sample) / 60
                samples.append((now, rss_mib(server.pid)[0], totals(), cpu_seconds(server.pid)))
            try:
                out = [results.get(timeout=max(0.0, until - time.time()) + 120) for _ in procs]
            except queue.Empty:
                raise RuntimeError("a load process died or did not flush in time") from None
            for p in procs:
                p.join(30)
            final = totals()  # the threads finish the call in hand after the last sample
            time.sleep(2.0)  # slack: acknowledged means committed, but let stragglers end
            rss_end, hwm = rss_mib(server.pid)
            counts = db_counts(db)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
    report(
        minutes,
        workers,
        warmup,
        pause,
        ttl,
        samples,
        final,
        out,
        counts,
        rss_end,
        hwm,
        proposals[0],
    )


def report(
    minutes: float,
    workers: int,
    warmup: float,
    pause: float,
    ttl: float,
    samples: list[tuple[float, float, list[int], float]],
    final: list[int],
    out: list[dict[str, Any]],
    counts: dict[str, Any],
    rss_end: float,
    hwm: float,
    proposer_calls: int,
) -> None:
    """Print the markdown report."""
    load = os.getloadavg()
    print(f"### Server soak: {minutes:g} minutes\n")
    print(
        f"{machine()}; {workers} load processes (Pattern B, Pattern A + direct reward, reads; "
        f"pause {pause * 1e3:g} ms, candidate ttl {ttl:g} s); optimizer on; "
        f"warm-up {warmup:g} s before the first sample; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (other work shares this machine)\n"
    )
    print("| minute | server RSS (MiB) | requests so far | errors | server CPU (s) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for minute, rss, tot, cpu in samples:
        print(f"| {minute:.1f} | {rss:.1f} | {tot[REQUESTS]:,} | {tot[ERRORS]:,} | {cpu:.0f} |")
    first, last = samples[0], samples[-1]
    span = max(1e-9, (last[0] - first[0]) * 60)
    tot = final
    print(
        f"\nRSS after warm-up {first[1]:.1f} MiB -> end of load {last[1]:.1f} MiB "
        f"({last[1] - first[1]:+.1f}); after the final flush {rss_end:.1f} MiB; peak {hwm:.1f} MiB."
    )
    print(
        f"Requests to the server: {tot[REQUESTS]:,} "
        f"({(last[2][REQUESTS] - first[2][REQUESTS]) / span:,.0f}/s "
        f"between the first and last sample), errors {tot[ERRORS]:,}; server CPU "
        f"{(last[3] - first[3]) / span * 100:.0f}% of a core."
    )
    print(
        f"Load: {tot[CALLS_B]:,} wrapped calls (Pattern B), {tot[CALLS_A]:,} proxy calls "
        f"(Pattern A), {tot[READS]:,} read rounds; exceptions raised into the load: "
        f"{tot[APP_RAISED]:,}."
    )
    rep = [o["reporter"] for o in out]
    sent = sum(r["sent"] for r in rep)
    dups = sum(r["duplicates"] for r in rep)
    lost = {k: sum(r[k] for r in rep) for k in ("dropped", "failed", "rejected", "queued")}
    enq = sum(o["enqueued"] for o in out)
    acked = sent + tot[DIRECT_ACKED]
    stored = counts["reward_keys"]
    print(
        f"Rewards: Pattern B enqueued {enq:,}, sent (acknowledged) {sent:,}, duplicates {dups}, "
        f"{lost}, flushed {[o['flushed'] for o in out]}; direct posts acknowledged "
        f"{tot[DIRECT_ACKED]:,}."
    )
    print(
        f"Stored: reward keys {stored:,} ({counts['reward_keys_distinct']:,} distinct; direct "
        f"{counts['direct_reward_keys']:,}), reward events {counts['events'].get('reward', 0):,}, "
        f"rollouts {counts['rollouts']:,}; acknowledged {acked:,}: "
        f"{'equal' if stored == acked else 'DIFFERENT'}."
    )
    print(
        f"Optimizer: candidates {counts['candidates']}, proposer calls {proposer_calls}; "
        f"database {counts['db_mib']:.0f} MiB."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--workers", type=int, default=2, help="load processes")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the first sample")
    ap.add_argument("--pause", type=float, default=0.002, help="seconds between a thread's calls")
    ap.add_argument("--ttl", type=float, default=2.0, help="candidate refresh (Pattern B)")
    ap.add_argument("--every", type=float, default=60.0, help="seconds between RSS samples")
    a = ap.parse_args()
    run(a.minutes, a.workers, a.warmup, a.pause, a.ttl, a.every)


if __name__ == "__main__":
    main()
