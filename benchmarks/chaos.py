"""Chaos: four app processes against ``synth-middleware serve`` while the server is
SIGKILLed and restarted and the upstream model fails intermittently (loopback only).

    .venv/bin/python benchmarks/chaos.py [--seconds 60] [--apps 4] [--kills 5]

Each app process wraps an ``openai.OpenAI`` client (``HttpBackend`` -> the server,
outbox on, ``max_retries=0``) and loops: one chat call, one reward. The model
(a ``FakeOpenAIServer`` in this process) fails about 30% of half-second windows
with a 500/503 (``fail_next``); those errors are the model's own and are counted
apart. The server is killed with SIGKILL every ``seconds / (kills + 1)`` and
restarted on the same port and SQLite file after a short outage.

Afterwards (server up, apps flushed) it prints: exceptions raised into the apps
other than the model's failures (target 0), rewards acknowledged to the apps vs
rewards stored (target equal, no duplicates), the share of calls that were served
a non-baseline candidate while the server was down, and optimizer proposals
before and after the last restart.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KEY = "chaos-key"
SESSION = "chaos"
BASELINE = "You are a support assistant. Classify the customer's request."
SEED_CANDIDATE = "You are a banking intent classifier. Answer with one label."


# --------------------------------------------------------------------------- app


def app_main(idx: int, server_url: str, model_url: str, tmp: str, until: float) -> None:
    import logging

    import openai

    import synth_middleware as synth
    from synth_middleware.backends.http import HttpBackend

    logging.basicConfig(level=logging.ERROR)
    backend = HttpBackend(server_url, KEY, timeout=2.0)
    client = synth.wrap(
        openai.OpenAI(api_key="k", base_url=model_url, max_retries=0, timeout=5),
        session=SESSION,
        backend=backend,
        outbox=str(Path(tmp) / f"outbox-{idx}.db"),
        ttl=1.0,
        warm=True,
    )
    msgs = [{"role": "system", "content": BASELINE}, {"role": "user", "content": "lost card"}]
    calls = model_failures = acked = 0
    raised: list[str] = []
    served: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    while time.time() < until:
        calls += 1
        try:
            resp = client.chat.completions.create(model="m", messages=msgs)
        except openai.APIStatusError as exc:  # the model's deliberate failures
            if exc.status_code in (500, 503):
                model_failures += 1
            else:
                raised.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        except Exception as exc:
            raised.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        served[int(time.time())][str(resp.synth.candidate_id)] += 1  # type: ignore[attr-defined]
        try:
            synth.reward(resp, random.random())
            acked += 1
        except Exception as exc:
            raised.append(f"reward: {type(exc).__name__}: {exc}"[:200])
        time.sleep(0.005)
    out = {
        "idx": idx,
        "calls": calls,
        "model_failures": model_failures,
        "raised": raised,
        "acked": acked,
        "served": {str(k): dict(v) for k, v in served.items()},
    }
    # tell the parent we are done calling; it brings the server up for the final flush
    print(json.dumps({"done_calling": True}), flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    out["flushed"] = synth.flush(90)
    out["flush_seconds"] = time.monotonic() - t0
    out["stats"] = {k: v for k, v in synth.stats().items() if k != "sessions"}
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(port: int, db: str, model_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SYNTH_API_KEY=KEY)
    exe = Path(sys.executable).with_name("synth-middleware")
    return subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--db", db, "--upstream-url", model_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_up(url: str, timeout: float = 30) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not come up")


def run(seconds: float, apps: int, kills: int) -> dict[str, object]:
    import httpx

    from synth_middleware.testing import FakeOpenAIServer

    proposals = [0]

    def reply(body: dict) -> str:  # type: ignore[type-arg]
        msgs = body.get("messages") or []
        if len(msgs) == 2 and msgs[-1].get("content") == "lost card":
            return "card_lost"  # an app's call
        proposals[0] += 1  # a proposer request
        return f"Improved:\n```\nPROPOSED-{proposals[0]}: classify the intent.\n```"

    res: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(reply=reply, record=False) as model:
        db = str(Path(tmp) / "synth.db")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        h = {"authorization": f"Bearer {KEY}"}
        srv = _start_server(port, db, model.url)
        _wait_up(url)
        r = httpx.post(
            f"{url}/api/v1/online/sessions",
            headers=h,
            json={
                "session_id": SESSION,
                "baseline": BASELINE,
                "config_body": {
                    "proposer_url": model.url,
                    "proposer_model": "proposer",
                    "online_proposer_min_rollouts": 10,
                },
            },
        )
        r.raise_for_status()
        httpx.post(
            f"{url}/api/v1/online/sessions/{SESSION}/candidates",
            headers=h,
            json={"candidate_content": SEED_CANDIDATE},
        ).raise_for_status()
        state = httpx.get(f"{url}/api/v1/online/sessions/{SESSION}/state", headers=h).json()
        baseline_id = state.get("baseline_candidate_id")

        start = time.time()
        until = start + seconds
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--app",
                    str(i),
                    "--server",
                    url,
                    "--model",
                    model.url,
                    "--tmp",
                    tmp,
                    "--until",
                    str(until),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(apps)
        ]

        stop = threading.Event()
        injected = collections.Counter()

        def model_chaos() -> None:
            rng = random.Random(7)
            while not stop.wait(0.5):
                if rng.random() < 0.3:
                    model.fail_next(rng.choice((500, 503)), count=rng.randint(1, 3))
                    injected["model_failure_windows"] += 1

        threading.Thread(target=model_chaos, daemon=True).start()
        down: list[tuple[float, float]] = []
        restarts: list[float] = []
        interval = seconds / (kills + 1)
        for k in range(kills):
            time.sleep(max(0.0, start + interval * (k + 1) - time.time()))
            t_kill = time.time()
            srv.send_signal(signal.SIGKILL)
            srv.wait()
            injected["sigkill"] += 1
            time.sleep(random.uniform(1.0, 3.0))
            srv = _start_server(port, db, model.url)
            _wait_up(url)
            down.append((t_kill, time.time()))
            restarts.append(time.time())
        # wait for the apps to stop calling, then stop model chaos and let them flush
        for p in procs:
            while True:
                line = p.stdout.readline()  # type: ignore[union-attr]
                if not line or "done_calling" in line:
                    break
        stop.set()
        time.sleep(0.6)
        model.reset()
        for p in procs:
            p.stdin.write("\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        results = []
        for p in procs:
            line = p.stdout.readline()  # type: ignore[union-attr]
            results.append(json.loads(line) if line else {"error": "app died"})
            p.wait(30)
        time.sleep(2.0)  # let the server's writer finish
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(15)
        except subprocess.TimeoutExpired:
            srv.kill()

        conn = sqlite3.connect(db)
        types = dict(conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())
        keys = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM reward_keys"
        ).fetchone()
        cands = conn.execute(
            "SELECT created_at FROM candidates WHERE session_id = ? AND created_as_baseline = 0",
            (SESSION,),
        ).fetchall()
        conn.close()

    served_down = served_down_cand = 0
    served_all = served_all_cand = 0
    for r in results:
        for sec, counter in r.get("served", {}).items():
            n = sum(counter.values())
            c = sum(v for cid, v in counter.items() if cid != baseline_id)
            served_all += n
            served_all_cand += c
            if any(a - 1 <= int(sec) <= b for a, b in down):
                served_down += n
                served_down_cand += c
    last = restarts[-1] if restarts else start
    res.update(
        apps=apps,
        seconds=seconds,
        injected=dict(injected),
        downtime_s=sum(b - a for a, b in down),
        calls=sum(r.get("calls", 0) for r in results),
        model_failures=sum(r.get("model_failures", 0) for r in results),
        raised=[e for r in results for e in r.get("raised", [])],
        acked=sum(r.get("acked", 0) for r in results),
        flushed=[r.get("flushed") for r in results],
        flush_seconds=[round(r.get("flush_seconds", 0), 2) for r in results],
        reporter=[r.get("stats") for r in results],
        reward_events={t: n for t, n in types.items() if "reward" in t},
        reward_keys=keys,
        served_all=(served_all, served_all_cand),
        served_down=(served_down, served_down_cand),
        candidates_before_last_restart=sum(1 for (t,) in cands if t < last),
        candidates_after_last_restart=sum(1 for (t,) in cands if t >= last),
        # optimizer candidates created by each server incarnation (the first one
        # also holds the seed candidate added before the apps start)
        candidates_per_incarnation=[
            sum(1 for (t,) in cands if a <= t < b)
            for a, b in zip([0.0, *restarts], [*restarts, float("inf")], strict=True)
        ],
        proposer_calls=proposals[0],
        app_errors=[r["error"] for r in results if "error" in r],
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--apps", type=int, default=4)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--app", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.app is not None:
        app_main(a.app, a.server, a.model, a.tmp, a.until)
        return
    r = run(a.seconds, a.apps, a.kills)
    stored = sum(r["reward_events"].values())  # type: ignore[union-attr]
    print(
        f"chaos: {r['apps']} apps x {r['seconds']:.0f} s; injected {r['injected']}; "
        f"server down {r['downtime_s']:.1f} s in all"
    )
    print(
        f"calls {r['calls']}, model's own failures {r['model_failures']}, "
        f"other exceptions raised into the apps: {len(r['raised'])}"
    )  # type: ignore[arg-type]
    for e in r["raised"][:10]:  # type: ignore[index]
        print(f"   {e}")
    print(
        f"rewards acknowledged to the apps {r['acked']}; stored: events {r['reward_events']}, "
        f"idempotency keys {r['reward_keys'][0]} ({r['reward_keys'][1]} distinct)"
    )  # type: ignore[index]
    print(f"  exactly once: {stored == r['acked'] and r['reward_keys'][0] == r['acked']}")  # type: ignore[index]
    print(f"apps flushed: {r['flushed']} in {r['flush_seconds']} s")
    sa, sc = r["served_all"]  # type: ignore[misc]
    da, dc = r["served_down"]  # type: ignore[misc]
    print(
        f"served a non-baseline candidate: {sc}/{sa} calls overall, "
        f"{dc}/{da} in the seconds the server was down"
    )
    print(
        f"optimizer candidates: {r['candidates_before_last_restart']} before the last restart, "
        f"{r['candidates_after_last_restart']} after; per server incarnation "
        f"{r['candidates_per_incarnation']} (incl. the seed in the first); "
        f"proposer calls {r['proposer_calls']}"
    )
    print(f"reporter stats per app: {r['reporter']}")
    if r["app_errors"]:
        print(f"app process errors: {r['app_errors']}")


if __name__ == "__main__":
    main()
