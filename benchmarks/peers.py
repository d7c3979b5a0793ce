"""Per-call overhead against peers, in one run, against the same local model server.

    .venv/bin/python benchmarks/peers.py [--calls 100] [--rounds 15] [--mem-calls 1000]

Contenders (each in its own process, because OpenLLMetry's instrumentation and
Langfuse's wrapper patch the ``openai`` classes globally):

* ``raw``: the plain ``openai.OpenAI`` client;
* ``raw-control``: the same again in another process (the A/A control: how far
  two identical processes differ here);
* ``ours``: ``synth.wrap`` over a ``LocalBackend`` on a temp SQLite file, warm cache;
* ``openllmetry``: ``opentelemetry-instrumentation-openai`` (traceloop) with an
  SDK ``TracerProvider``, a ``SimpleSpanProcessor`` and an in-memory exporter;
* ``langfuse``: ``from langfuse.openai import OpenAI`` with its export pointed
  at a loopback sink (an HTTP server that accepts and discards everything).

Diagnostics, run only when named in ``--only``: ``ours-no-delivery`` (ours with
a backend whose ``record_rollouts`` does nothing: the request path alone) and
``ours-rollouts-50ms`` (ours with rollout records sent every 50 ms, as
rewards are, instead of gathering for ``ROLLOUT_GATHER``).

The model server is a ``FakeOpenAIServer`` in its own process (recording nothing). The parent
drives the workers over pipes in interleaved rounds (round-robin, order rotated
each round) so machine noise hits every contender alike, and reports medians
and ratios to raw. The in-memory variant gives each worker a second client on
an in-process transport: the difference to raw is the added CPU per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
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
    plain,
    self_check,
    start_sink,
)

# Contenders that also time a plain client in their own process, in back-to-back
# blocks (order alternating by round): no second process and no drift between
# the two, so this is the steadiest ratio; raw-control's pair is the A/A of the
# method. The peers cannot take part: they patch the openai classes process-wide.
_PAIRED = ("raw-control", "ours", "ours-no-delivery", "ours-rollouts-50ms")


# --------------------------------------------------------------------------- worker


def worker(kind: str, url: str) -> None:
    """Line protocol on stdin/stdout: ``loop N`` / ``mem N`` -> seconds per call."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    out = sys.stdout
    sys.stdout = sys.stderr  # keep library prints off the protocol pipe
    with tempfile.TemporaryDirectory() as tmp:
        try:
            loop, mem, keep = build(kind, url, tmp)
            # a plain client beside the contender in the same process: see _PAIRED
            twin = plain(url) if kind in _PAIRED else None
            for c in (loop, mem) if twin is None else (loop, mem, twin):
                for _ in range(50):
                    c.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[attr-defined]
            # check the contender really did its work
            info = self_check(kind, loop, keep)
        except Exception as exc:
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            out.flush()
            return
        out.write(json.dumps({"ready": True, "info": info}) + "\n")
        out.flush()
        for line in sys.stdin:
            cmd, n = line.split()
            if cmd == "quit":
                break
            if cmd in ("pair", "pair-twin-first"):
                out.write(json.dumps(_pair(kind, loop, twin, int(n), cmd != "pair")) + "\n")
                out.flush()
                continue
            client = loop if cmd == "loop" else mem
            create = client.chat.completions.create  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            c0 = time.thread_time()
            for _ in range(int(n)):
                create(model="m", messages=MESSAGES)
            dt = (time.perf_counter() - t0) / int(n)
            dc = (time.thread_time() - c0) / int(n)
            if kind == "openllmetry":
                keep.clear()  # type: ignore[union-attr]  # bounded memory
            out.write(json.dumps({"s": dt, "cpu": dc}) + "\n")
            out.flush()
        drain(kind, keep)


def _pair(kind: str, loop: object, twin: object, n: int, twin_first: bool) -> dict[str, float]:
    """Seconds per call of the contender and of the plain client beside it, one
    block each, back to back. Ours delivers its block's rollout records inside its
    own time (``flush``): none of that work may land in the twin's block, and
    the app's process pays for it. Serialised like this, it is an upper bound
    (in an app the delivery thread mostly runs while the caller waits on I/O)."""
    out: dict[str, float] = {}
    for name in ("twin", "s") if twin_first else ("s", "twin"):
        create = (twin if name == "twin" else loop).chat.completions.create  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        for _ in range(n):
            create(model="m", messages=MESSAGES)
        if name == "s" and kind.startswith("ours"):
            import synth_middleware as synth

            synth.flush(10)
        out[name] = (time.perf_counter() - t0) / n
    return out


# --------------------------------------------------------------------------- parent


def run(
    calls: int, rounds: int, mem_calls: int, only: list[str], procs: int = 1
) -> dict[str, dict]:
    from _common import ModelServerProcess

    sink, env = start_sink()
    results: dict[str, dict] = {}
    with ModelServerProcess() as server:
        # ``procs`` processes per contender: a process's memory layout moves its
        # timings by a few percent (the A/A control shows it), so each round's
        # figure for a contender is the mean over its processes.
        workers: dict[tuple[str, int], subprocess.Popen[str]] = {}
        for kind in only:
            for i in range(procs):
                workers[kind, i] = subprocess.Popen(
                    [sys.executable, __file__, "--worker", kind, "--url", server.url],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
        for (kind, _), p in workers.items():  # a contender with any failed process is out
            msg = json.loads(p.stdout.readline() or '{"error": "worker died"}')  # type: ignore[union-attr]
            if "error" in msg:
                results[kind] = {"error": msg["error"]}
            elif kind not in results:
                results[kind] = {
                    "info": msg["info"],
                    "loop": [],
                    "mem": [],
                    "mem_cpu": [],
                    "pair": [],  # per round: contender / plain client, same process
                }
        live = [w for w in workers if "error" not in results[w[0]]]

        def ask(w: tuple[str, int], cmd: str, n: int) -> dict[str, float]:
            p = workers[w]
            p.stdin.write(f"{cmd} {n}\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
            return json.loads(p.stdout.readline())  # type: ignore[union-attr, no-any-return]

        kinds = list(dict.fromkeys(k for k, _ in live))
        for r in range(rounds):
            order = live[r % len(live) :] + live[: r % len(live)]
            loop = {w: ask(w, "loop", calls)["s"] for w in order}
            mem = {w: ask(w, "mem", mem_calls) for w in order}
            cmd = "pair-twin-first" if r % 2 else "pair"
            pair = {w: ask(w, cmd, calls) for w in order if w[0] in _PAIRED}
            for kind in kinds:
                mine = [w for w in live if w[0] == kind]
                results[kind]["loop"].append(statistics.fmean(loop[w] for w in mine))
                results[kind]["mem"].append(statistics.fmean(mem[w]["s"] for w in mine))
                results[kind]["mem_cpu"].append(statistics.fmean(mem[w]["cpu"] for w in mine))
                if kind in _PAIRED:
                    results[kind]["pair"].append(
                        statistics.fmean(pair[w]["s"] / pair[w]["twin"] for w in mine)
                    )
        for p in workers.values():
            try:
                p.stdin.write("quit 0\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            except OSError:  # a failed worker has already exited
                pass
        for p in workers.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    sink.shutdown()
    results["_sink"] = {"hits": Sink.hits}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=100, help="loopback calls per round")
    ap.add_argument("--mem-calls", type=int, default=1000, help="in-memory calls per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument(
        "--procs", type=int, default=1, help="worker processes per contender, averaged per round"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.url)
        return
    from _common import dist_version, machine

    only = [k for k in args.only.split(",") if k]
    unknown = [k for k in only if k not in CONTENDERS + DIAGNOSTIC]
    if unknown:
        ap.error(f"unknown contender(s) {', '.join(unknown)}")
    res = run(args.calls, args.rounds, args.mem_calls, only, args.procs)
    raw = res.get("raw", {})
    raw_loop = statistics.median(raw["loop"]) if raw.get("loop") else float("nan")
    raw_mem = statistics.median(raw["mem"]) if raw.get("mem") else float("nan")
    print(
        f"machine: {machine()}; openai {dist_version('openai')}; {args.rounds} rounds x {args.calls} loopback calls, "
        f"x {args.mem_calls} in-memory calls, per contender, {args.procs} process(es) each"
    )
    print()
    print(
        "| contender | loopback median (us) | ratio to raw (paired) | in-memory median (us) "
        "| added wall per call, in-memory (us) | added calling-thread CPU per call (us) | check |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in only:
        r = res[kind]
        if "error" in r:
            print(f"| {kind} | - | - | - | - | - | not run: {r['error']} |")
            continue
        lp = statistics.median(r["loop"])
        mm = statistics.median(r["mem"])
        # per-round paired ratio/difference against raw is more robust to drift
        ratios = sorted(a / b for a, b in zip(r["loop"], raw["loop"], strict=True))
        added = sorted((a - b) * 1e6 for a, b in zip(r["mem"], raw["mem"], strict=True))
        cpu = sorted((a - b) * 1e6 for a, b in zip(r["mem_cpu"], raw["mem_cpu"], strict=True))
        print(
            f"| {kind} | {lp * 1e6:.0f} | {lp / raw_loop:.3f} ({ratios[len(ratios) // 2]:.3f})"
            f" | {mm * 1e6:.1f} | {added[len(added) // 2]:+.1f} | {cpu[len(cpu) // 2]:+.1f}"
            f" | {r['info']} |"
        )
    ctl = res.get("raw-control", {})
    if ctl.get("loop") and raw.get("loop"):
        # raw and raw-control are the same code: pooled, they are the steadier baseline
        pooled = [(a + b) / 2 for a, b in zip(raw["loop"], ctl["loop"], strict=True)]
        base = statistics.median(pooled)
        print()
        print("ratio of the loopback median to raw and raw-control pooled (paired):")
        for kind in only:
            r = res[kind]
            if "error" in r or kind in ("raw", "raw-control"):
                continue
            ratios = sorted(a / b for a, b in zip(r["loop"], pooled, strict=True))
            print(
                f"  {kind}: {statistics.median(r['loop']) / base:.3f} "
                f"({ratios[len(ratios) // 2]:.3f})"
            )
    paired = [k for k in only if k in _PAIRED and "error" not in res[k]]
    if paired:
        print()
        print(
            "same-process ratio to a plain client beside it (median over rounds of the "
            "mean over processes; ours with its rollouts delivered inside its time):"
        )
        for kind in paired:
            pr = sorted(res[kind]["pair"])
            print(
                f"  {kind}: {statistics.median(pr):.3f} "
                f"(rounds' quartiles {pr[len(pr) // 4]:.3f} to {pr[3 * len(pr) // 4]:.3f})"
            )
    print()
    print(
        f"langfuse sink received {res['_sink']['hits']} export requests; raw in-memory "
        f"{raw_mem * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
