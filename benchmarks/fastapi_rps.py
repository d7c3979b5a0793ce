"""Requests per second of a minimal FastAPI endpoint that calls a local model
through a wrapped client, with and without ``SynthMiddleware``, in one run.

    .venv/bin/python benchmarks/fastapi_rps.py [--rounds 8] [--seconds 3] [--concurrency 16]

Three kinds of process: the stand-in model server (FakeOpenAIServer), two
app servers (uvicorn, one worker each: ``plain`` and ``synth``, identical but
for ``app.add_middleware(SynthMiddleware)``), and this load generator, a
minimal keep-alive HTTP/1.1 client on raw asyncio streams (light, so the app
is what saturates). On a machine with two or more cores the app servers are
pinned to one core and the model server and load generator to another, so
the app's CPU is the bottleneck. The two apps are loaded in alternating
rounds (order flipped every round) so that noise hits both alike; the result
is the median requests/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

SYSTEM = "You are a support assistant. Classify the customer's request."
CAND = "You are a banking intent classifier. Answer with one label."
HERE = Path(__file__).resolve()


# ------------------------------------------------------------------ child processes


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def serve_model(cpu: int | None) -> None:
    """Child: the stand-in model server; prints its URL, serves until stdin closes."""
    _pin(cpu)
    from synth_middleware.testing import FakeOpenAIServer

    with FakeOpenAIServer(record=False) as server:
        print(server.url, flush=True)
        sys.stdin.read()


def serve_app(variant: str, port: int, model_url: str, db: str, cpu: int | None) -> None:
    """Child: the app under test (``plain`` or ``synth``) on uvicorn."""
    _pin(cpu)
    import logging

    import openai
    import uvicorn
    from fastapi import FastAPI
    from synth_middleware_fastapi import SynthMiddleware

    import synth_middleware as synth
    from synth_middleware.backends.local import LocalBackend

    logging.basicConfig(level=logging.WARNING)
    backend = LocalBackend(db)
    client = synth.wrap(
        openai.AsyncOpenAI(api_key="k", base_url=model_url),  # default retries, as in production
        session="bench-rps",
        backend=backend,
        warm=True,
        ttl=3600,
    )
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "card lost"}]
    app = FastAPI()
    if variant == "synth":
        app.add_middleware(SynthMiddleware, secret="bench-secret")

    @app.get("/classify")
    async def classify() -> dict[str, str | None]:
        resp = await client.chat.completions.create(model="m", messages=messages)
        return {"label": resp.choices[0].message.content}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------ load generator


async def _worker(port: int, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = b"GET /classify HTTP/1.1\r\nhost: bench\r\n\r\n"
    try:
        while time.perf_counter() < stop_at:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                counts[0] += 1
            else:
                counts[1] += 1
    finally:
        writer.close()


async def _load(port: int, seconds: float, concurrency: int) -> tuple[float, int, int]:
    counts = [0, 0]  # ok, errors
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(_worker(port, stop_at, counts) for _ in range(concurrency)))
    return counts[0] / (time.perf_counter() - t0), counts[0], counts[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def micro_us(calls: int = 20_000, rounds: int = 7) -> tuple[float, float]:
    """The middleware alone: microseconds per request around a trivial ASGI app,
    (without, with), medians of interleaved rounds, in this process."""
    from synth_middleware_fastapi import SynthMiddleware

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    async def send(message: object) -> None:
        return None

    wrapped = SynthMiddleware(app, secret="bench-secret")
    scope = {"type": "http", "method": "GET", "path": "/classify", "headers": [(b"host", b"x")]}

    async def loop(target: object) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await target(scope, receive, send)  # type: ignore[operator]
        return (time.perf_counter() - t0) / calls * 1e6

    async def main() -> tuple[float, float]:
        plain: list[float] = []
        synth_: list[float] = []
        for _ in range(rounds):
            plain.append(await loop(app))
            synth_.append(await loop(wrapped))
        return statistics.median(plain), statistics.median(synth_)

    return asyncio.run(main())


def _wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"app on port {port} did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    rounds: int, seconds: float, concurrency: int, *, aa: bool = False
) -> dict[str, list[float]]:
    """Start the processes, load both apps in alternating rounds; per round and
    app: requests/s (``plain``, ``synth``) and app CPU ms per request (``*_cpu``).
    ``aa``: both apps without the middleware (a control for the setup's own bias)."""
    multi = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    app_cpu, side_cpu = (0, 1) if multi else (None, None)
    _pin(side_cpu)
    py = sys.executable
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model = subprocess.Popen(
                [py, str(HERE), "--serve-model", "--cpu", str(side_cpu)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(model)
            assert model.stdout is not None
            model_url = model.stdout.readline().strip()
            db = str(Path(tmp) / "bench.db")
            from synth_middleware.backends.local import LocalBackend

            with LocalBackend(db) as b:  # a candidate, so the wrapped call applies one
                b.ensure_session("bench-rps", baseline=SYSTEM)
                b.add_candidate("bench-rps", CAND)
            ports = {"plain": _free_port(), "synth": _free_port()}
            pids = {}
            for variant, port in ports.items():
                served = "plain" if aa else variant
                p = subprocess.Popen(
                    [
                        py,
                        str(HERE),
                        "--serve-app",
                        served,
                        "--port",
                        str(port),
                        "--model-url",
                        model_url,
                        "--db",
                        db,
                        "--cpu",
                        str(app_cpu),
                    ],
                )
                procs.append(p)
                pids[variant] = p.pid
            for port in ports.values():
                _wait_port(port)
            for port in ports.values():  # warm-up: connections, caches, JIT of candidate
                asyncio.run(_load(port, 1.0, concurrency))
            out: dict[str, list[float]] = {
                "plain": [],
                "synth": [],
                "plain_cpu": [],
                "synth_cpu": [],
                "errors": [],
            }
            order = ["plain", "synth"]
            for _ in range(rounds):
                for variant in order:
                    cpu0 = _cpu_seconds(pids[variant])
                    rps, n, errors = asyncio.run(_load(ports[variant], seconds, concurrency))
                    out[variant].append(rps)
                    out["errors"].append(errors)
                    out[f"{variant}_cpu"].append((_cpu_seconds(pids[variant]) - cpu0) / n * 1e3)
                order.reverse()
            return out
        finally:
            for p in procs:
                if p.stdin is not None:
                    p.stdin.close()
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--aa",
        action="store_true",
        help="control run: both apps WITHOUT the middleware (shows the setup's noise)",
    )
    ap.add_argument("--serve-model", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-app", choices=["plain", "synth"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model-url", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", default="None", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cpu = None if args.cpu == "None" else int(args.cpu)
    if args.serve_model:
        serve_model(cpu)
        return
    if args.serve_app:
        serve_app(args.serve_app, args.port, args.model_url, args.db, cpu)
        return
    bare, with_mw = micro_us()
    res = run(args.rounds, args.seconds, args.concurrency, aa=args.aa)
    if args.aa:
        print("A/A control: the 'synth' app below runs WITHOUT the middleware")
    plain, synth_ = statistics.median(res["plain"]), statistics.median(res["synth"])
    paired = statistics.median(s / p for s, p in zip(res["synth"], res["plain"], strict=True))
    print(f"machine: {machine()}")
    print(f"rounds {args.rounds} x {args.seconds:g} s per app, concurrency {args.concurrency}")
    print("plain rps per round: " + " ".join(f"{x:.0f}" for x in res["plain"]))
    print("synth rps per round: " + " ".join(f"{x:.0f}" for x in res["synth"]))
    print(f"median rps: without middleware {plain:.0f}, with SynthMiddleware {synth_:.0f}")
    print(
        f"ratio with/without: {synth_ / plain:.3f} (median of per-round ratios {paired:.3f}); "
        f"{(1 - synth_ / plain) * 100:+.1f}% fewer requests/s"
    )
    pc, sc = statistics.median(res["plain_cpu"]), statistics.median(res["synth_cpu"])
    print(
        f"app CPU per request: without {pc:.3f} ms, with {sc:.3f} ms "
        f"({(sc - pc) * 1e3:+.0f} us, {(sc / pc - 1) * 100:+.1f}%)"
    )
    print(f"non-200 answers: {int(sum(res['errors']))}")
    print(
        f"middleware alone around a trivial ASGI app: {bare:.1f} us -> {with_mw:.1f} us "
        f"per request ({with_mw - bare:+.1f} us)"
    )


if __name__ == "__main__":
    main()
