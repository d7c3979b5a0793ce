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
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, rss_mb

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend
from synth_middleware.testing import in_memory_http_client

SYSTEM = "You are a support assistant. Classify the customer's request."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--every", type=int, default=100_000)
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
        samples = [(0, rss_mb(), 0.0)]
        t0 = time.perf_counter()
        for i in range(1, args.calls + 1):
            resp = create(model="m", messages=msgs)
            if i % 10 == 0:
                synth.reward(resp, 1.0 if i % 20 == 0 else 0.0)
            if i % args.every == 0:
                synth.flush(60)
                gc.collect()
                samples.append((i, rss_mb(), time.perf_counter() - t0))
        synth.flush(120)
        stats = synth.stats()
        state = backend.get_state("soak")
        backend.close()
    print(f"machine: {machine()}")
    print(f"soak: {args.calls:,} wrapped calls (in-memory transport), reward every 10th")
    print("| calls | RSS (MiB) | elapsed (s) |")
    print("| --- | --- | --- |")
    for n, rss, el in samples:
        print(f"| {n:,} | {rss:.1f} | {el:.0f} |")
    print(
        f"RSS start {samples[0][1]:.1f} MiB -> end {samples[-1][1]:.1f} MiB "
        f"(+{samples[-1][1] - samples[0][1]:.1f}); from the first 100k sample: "
        f"{samples[1][1] if len(samples) > 1 else float('nan'):.1f} -> {samples[-1][1]:.1f}"
    )
    rep = {k: v for k, v in stats.items() if k != "sessions"}
    print(f"reporter: {rep}")
    print(
        f"stored: rewards {state.get('reward_count')}, session calls "
        f"{stats['sessions']['soak']['calls']:,}"
    )


if __name__ == "__main__":
    main()
