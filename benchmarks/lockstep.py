"""Per-call overhead against peers, one call at a time, contenders in lockstep.

    .venv/bin/python benchmarks/lockstep.py [--calls 5000] [--only raw,raw-control,ours] [--mem]

The contenders are those of ``peers.py`` (built the same way, ``_contenders.py``),
each in its own worker process, against one local model server in another.
The parent makes the workers take turns call by call: each makes one call,
then the next one does (order rotated every step). Every contender's calls
are spread evenly over the same seconds, so machine noise lasting longer than
a few milliseconds hits all alike, which rounds of blocks cannot achieve here
(``peers.py``'s per-round A/A spread is about 5%); ``raw-control`` is the A/A.

Between its calls a worker waits on a pipe while the other workers and the
model server run, so each call starts with caches that other processes used:
the case of an app whose model calls sit between other work, not that of a
tight loop of calls (``peers.py``). Code that is cheap warm can cost several
times more here; that is what this benchmark shows.

Per contender: the median per-call latency and its ratio to raw's, the median
of the per-step ratios, and an upper bound of what the contender costs per
call: its median plus the CPU time of its process's other threads (rollout
delivery, exporters; all of it taken after a final flush) and the garbage
collection on its calling thread, per call, as if all of it delayed the call.
``--mem`` uses each contender's in-memory client instead: the added CPU of
the request path with cold caches, no network.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _contenders import (  # noqa: E402
    CONTENDERS,
    DIAGNOSTIC,
    MESSAGES,
    Sink,
    build,
    drain,
    self_check,
    start_sink,
)

# --------------------------------------------------------------------------- worker


def worker(kind: str, url: str, mem: bool) -> None:
    """Byte protocol on stdin/stdout: ``g`` -> one timed call -> ``d``; ``e`` ->
    flush, then one JSON line with the per-call seconds and the side costs."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # keep library prints off the protocol pipe
    with tempfile.TemporaryDirectory() as tmp:
        try:
            loop, memc, keep = build(kind, url, tmp)
            client = memc if mem else loop
            create = client.chat.completions.create  # type: ignore[attr-defined]
            for _ in range(100):
                create(model="m", messages=MESSAGES)
            info = self_check(kind, loop, keep)
        except Exception as exc:
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
            out.flush()
            return
        out.write(json.dumps({"ready": True, "info": info}).encode() + b"\n")
        out.flush()

        main_ident = threading.get_ident()
        gc_time = [0.0, 0.0]  # total, start of the collection in progress

        def on_gc(phase: str, _info: object) -> None:
            if threading.get_ident() != main_ident:
                return  # another thread's collection is in its CPU time already
            if phase == "start":
                gc_time[1] = time.perf_counter()
            else:
                gc_time[0] += time.perf_counter() - gc_time[1]

        gc.callbacks.append(on_gc)
        # every thread but this one: process CPU minus this thread's CPU in the calls
        cpu0, main0 = time.process_time(), time.thread_time()
        samples: list[float] = []
        read, write, clock = sys.stdin.buffer.read, out.write, time.perf_counter
        while read(1) == b"g":
            t0 = clock()
            create(model="m", messages=MESSAGES)
            samples.append(clock() - t0)
            write(b"d")
            out.flush()
            if kind == "openllmetry" and len(samples) % 1000 == 0:
                keep.clear()  # type: ignore[union-attr]  # bounded memory, between calls
        main1 = time.thread_time()
        # the background work left at the end counts too, wherever it runs (Langfuse
        # exports on this thread in flush())
        drain(kind, keep)
        # clamp: the two clocks tick separately, so "none" can come out a hair below 0
        other = max(0.0, (time.process_time() - cpu0) - (main1 - main0))
        gc.callbacks.remove(on_gc)
        out.write(json.dumps({"s": samples, "other_cpu": other, "gc": gc_time[0]}).encode())
        out.write(b"\n")
        out.flush()


# --------------------------------------------------------------------------- parent


def run(calls: int, only: list[str], mem: bool) -> dict[str, dict]:
    """Per contender: per-call seconds, other threads' CPU, GC, check line."""
    from _common import ModelServerProcess

    sink, env = start_sink()
    res: dict[str, dict] = {}
    with ModelServerProcess() as server:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for kind in only:
            argv = [sys.executable, __file__, "--worker", kind, "--url", server.url]
            procs[kind] = subprocess.Popen(
                argv + (["--mem"] if mem else []),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                bufsize=0,
            )
        for kind, p in procs.items():
            msg = json.loads(p.stdout.readline() or b'{"error": "worker died"}')  # type: ignore[union-attr]
            res[kind] = msg
        live = [k for k in only if "error" not in res[k]]
        pipes = [(procs[k].stdin, procs[k].stdout) for k in live]
        for i in range(calls):
            j = i % len(pipes)
            for w, r in pipes[j:] + pipes[:j]:
                w.write(b"g")  # type: ignore[union-attr]
                if r.read(1) != b"d":  # type: ignore[union-attr]
                    raise SystemExit("a worker died mid-run")
        for kind in live:
            procs[kind].stdin.write(b"e")  # type: ignore[union-attr]
            res[kind].update(json.loads(procs[kind].stdout.readline()))  # type: ignore[union-attr]
        for p in procs.values():
            try:
                p.stdin.close()  # type: ignore[union-attr]
                p.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
    sink.shutdown()
    res["_sink"] = {"hits": Sink.hits}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5000, help="calls per contender")
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--mem", action="store_true", help="in-memory clients: no network")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.url, args.mem)
        return
    from _common import dist_version, machine

    only = [k for k in args.only.split(",") if k]
    unknown = [k for k in only if k not in CONTENDERS + DIAGNOSTIC]
    if unknown or "raw" not in only:
        ap.error(f"unknown contender(s) {', '.join(unknown)}" if unknown else "raw is needed")
    res = run(args.calls, only, args.mem)
    raw = res["raw"]["s"]
    raw_med = statistics.median(raw)
    raw_up = raw_med + (res["raw"]["other_cpu"] + res["raw"]["gc"]) / len(raw)
    where = "in-memory clients" if args.mem else "loopback"
    print(
        f"machine: {machine()}; openai {dist_version('openai')}; {args.calls} {where} calls "
        "per contender, one at a time in turn"
    )
    print()
    print(
        "| contender | median per call (us) | ratio to raw | per-step ratio (median) "
        "| other threads' CPU per call (us) | GC per call (us) | upper bound, ratio | check |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in only:
        r = res[kind]
        if "error" in r:
            print(f"| {kind} | - | - | - | - | - | - | not run: {r['error']} |")
            continue
        s = r["s"]
        med = statistics.median(s)
        step = statistics.median(a / b for a, b in zip(s, raw, strict=True))
        other, gcs = r["other_cpu"] / len(s), r["gc"] / len(s)
        print(
            f"| {kind} | {med * 1e6:.0f} | {med / raw_med:.3f} | {step:.3f} "
            f"| {other * 1e6:.1f} | {gcs * 1e6:.2f} | {(med + other + gcs) / raw_up:.3f} "
            f"| {r['info']} |"
        )
    print()
    print(f"langfuse sink received {res['_sink']['hits']} export requests")


if __name__ == "__main__":
    main()
