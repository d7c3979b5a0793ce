"""Soak: many wrapped calls on an in-memory transport; memory must stay flat.

    .venv/bin/python benchmarks/soak.py              # 200,000 calls
    .venv/bin/python benchmarks/soak.py --calls 1000000

One wrapped ``openai.OpenAI`` client (``LocalBackend`` on a temp SQLite file,
warm cache, Thompson selection over two candidates) calls an in-process
transport in a loop and rewards every tenth response. RSS is sampled at the
start (after a warm-up of 5,000 calls) and every 100,000 calls; the reporter's
counters are printed at the end (nothing dropped, everything delivered).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, rss_mb

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend
from synth_middleware.testing import in_memory_http_client

SYSTEM = "You are a support assistant. Classify the customer's request."


def _traced() -> float:
    """Python-level allocations now traced, in MiB (0 when not tracing)."""
    return tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--every", type=int, default=100_000)
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also trace Python allocations (slower): tells a leak of Python objects "
        "from native growth (SQLite's cache, the allocator)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(str(Path(tmp) / "soak.db"))
        backend.ensure_session("soak", baseline=SYSTEM)
        backend.add_candidate("soak", "You are a banking intent classifier.")
        client = synth.wrap(
            openai.OpenAI(
                api_key="k",
                base_url="http://fake/v1",
                http_client=in_memory_http_client(),
                max_retries=0,
            ),
            session="soak",
            backend=backend,
            warm=True,
        )
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "lost card"}]
        create = client.chat.completions.create
        for _ in range(5000):
            create(model="m", messages=msgs)
        synth.flush(60)
        gc.collect()
        if args.tracemalloc:
            tracemalloc.start()
        first = tracemalloc.take_snapshot() if args.tracemalloc else None
        samples = [(0, rss_mb(), 0.0, _traced())]
        t0 = time.perf_counter()
        for i in range(1, args.calls + 1):
            resp = create(model="m", messages=msgs)
            if i % 10 == 0:
                synth.reward(resp, 1.0 if i % 20 == 0 else 0.0)
            if i % args.every == 0:
                synth.flush(60)
                gc.collect()
                samples.append((i, rss_mb(), time.perf_counter() - t0, _traced()))
        synth.flush(120)
        growth = []
        if first is not None:
            gc.collect()
            growth = tracemalloc.take_snapshot().compare_to(first, "lineno")[:8]
        stats = synth.stats()
        state = backend.get_state("soak")
        backend.close()
    print(f"machine: {machine()}")
    print(f"soak: {args.calls:,} wrapped calls (in-memory transport), reward every 10th")
    traced = args.tracemalloc
    print("| calls | RSS (MiB) | elapsed (s) |" + (" Python-traced (MiB) |" if traced else ""))
    print("| --- | --- | --- |" + (" --- |" if traced else ""))
    for n, rss, el, py in samples:
        print(f"| {n:,} | {rss:.1f} | {el:.0f} |" + (f" {py:.2f} |" if traced else ""))
    print(
        f"RSS start {samples[0][1]:.1f} MiB -> end {samples[-1][1]:.1f} MiB "
        f"(+{samples[-1][1] - samples[0][1]:.1f}); from the first 100k sample: "
        f"{samples[1][1] if len(samples) > 1 else float('nan'):.1f} -> {samples[-1][1]:.1f}"
    )
    if growth:
        print("largest Python-level growth since the first sample:")
        for stat in growth:
            print(f"  {stat}")
    rep = {k: v for k, v in stats.items() if k != "sessions"}
    print(f"reporter: {rep}")
    print(
        f"stored: rewards {state.get('reward_count')}, session calls "
        f"{stats['sessions']['soak']['calls']:,}"
    )


if __name__ == "__main__":
    main()
