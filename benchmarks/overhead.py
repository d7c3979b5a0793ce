"""Per-call overhead of the wrapped client against the raw client, in one run.

    .venv/bin/python benchmarks/overhead.py [--calls 300] [--rounds 15]

* loopback: both clients call the same local OpenAI-compatible server; ratio
  wrapped/raw of the median per-call wall time.
* in-memory: both clients use an in-process transport, so the difference is
  purely our added CPU time per call (microseconds).
* the request-path code alone, hot: our code around one call (candidate choice
  and application, rollout, OTel context, record enqueue) run back to back
  without the model call; against the in-memory "added CPU" it shows how much
  more the same code costs between real openai calls (cold caches).
* reward(): cost per call (it only enqueues).
* memory: RSS and tracemalloc before and after 100k wrapped in-memory calls.
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
import tracemalloc
from pathlib import Path

import openai
from _common import ModelServerProcess, interleaved, machine, median_us, paired_median, rss_mb

import synth_middleware as synth
from synth_middleware.backends.local import LocalBackend
from synth_middleware.testing import in_memory_http_client

SYSTEM = "You are a support assistant. Classify the customer's request."
CAND = "You are a banking intent classifier. Answer with one label."
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "my card is lost"}]


def _wrapped(raw: openai.OpenAI, backend: LocalBackend, session: str) -> openai.OpenAI:
    return synth.wrap(raw, session=session, backend=backend, warm=True, ttl=3600)


def _thread_cpu(reporter: object) -> float:
    """CPU seconds used so far by the reporter's worker thread (Linux)."""
    import os

    thread = reporter._thread  # type: ignore[attr-defined]
    tid = thread.native_id
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run(calls: int, rounds: int, mem_calls: int) -> dict[str, float]:
    logging.basicConfig(level=logging.WARNING)
    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, ModelServerProcess() as server:
        backend = LocalBackend(str(Path(tmp) / "bench.db"))
        for s in ("loop", "mem"):
            backend.ensure_session(s, baseline=SYSTEM)
            backend.add_candidate(s, CAND)

        # -- loopback
        raw = openai.OpenAI(api_key="k", base_url=server.url, max_retries=0)
        wrapped = _wrapped(
            openai.OpenAI(api_key="k", base_url=server.url, max_retries=0), backend, "loop"
        )
        for c in (raw, wrapped):
            for _ in range(50):
                c.chat.completions.create(model="m", messages=MESSAGES)
        t = interleaved(
            {
                "raw": lambda: raw.chat.completions.create(model="m", messages=MESSAGES),
                "wrapped": lambda: wrapped.chat.completions.create(model="m", messages=MESSAGES),
            },
            calls=max(50, calls // 3),
            rounds=rounds,
        )
        res["loopback_raw_us"] = median_us(t["raw"])
        res["loopback_wrapped_us"] = median_us(t["wrapped"])
        res["loopback_ratio"] = res["loopback_wrapped_us"] / res["loopback_raw_us"]

        # -- in-memory transport: pure client-side cost
        mraw = openai.OpenAI(
            api_key="k",
            base_url="http://fake/v1",
            http_client=in_memory_http_client(),
            max_retries=0,
        )
        mwrapped = _wrapped(
            openai.OpenAI(
                api_key="k",
                base_url="http://fake/v1",
                http_client=in_memory_http_client(),
                max_retries=0,
            ),
            backend,
            "mem",
        )
        for c in (mraw, mwrapped):
            for _ in range(200):
                c.chat.completions.create(model="m", messages=MESSAGES)
        synth.flush(10)
        mem_fns = {
            "raw": lambda: mraw.chat.completions.create(model="m", messages=MESSAGES),
            "wrapped": lambda: mwrapped.chat.completions.create(model="m", messages=MESSAGES),
        }
        t = interleaved(mem_fns, calls=calls, rounds=rounds)
        res["memory_raw_us"] = median_us(t["raw"])
        res["memory_wrapped_us"] = median_us(t["wrapped"])
        # wall time in a saturated loop: includes the background delivery of
        # every rollout to SQLite, which shares the GIL with the calling thread
        res["added_wall_us"] = paired_median(t["wrapped"], t["raw"]) * 1e6
        synth.flush(30)
        # the request path alone: CPU time of the calling thread, with the
        # background delivery drained between rounds (untimed) as it is when
        # calls wait on a real model; its cost is reported separately below
        t = interleaved(
            mem_fns, calls=calls, rounds=rounds, cpu=True, between=lambda: synth.flush(30)
        )
        res["added_cpu_us"] = paired_median(t["wrapped"], t["raw"]) * 1e6
        synth.flush(30)
        # the background worker's cost per rollout delivered to the local backend
        rep = mwrapped._self_cfg.runtime.reporter
        n_before = rep.stats().rollouts_sent
        cpu0 = _thread_cpu(rep)
        for _ in range(5000):
            mwrapped.chat.completions.create(model="m", messages=MESSAGES)
        synth.flush(30)
        res["delivery_cpu_us"] = (
            (_thread_cpu(rep) - cpu0) / max(1, rep.stats().rollouts_sent - n_before) * 1e6
        )

        # -- the request-path code alone, hot (no model call between two runs of it)
        from synth_middleware.client._call import Call

        resp = mwrapped.chat.completions.create(model="m", messages=MESSAGES)
        cfg = mwrapped._self_cfg
        kwargs = {"model": "m", "messages": MESSAGES}
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(2000):
                Call(cfg, kwargs, "chat").finish(resp)
            samples.append((time.perf_counter() - t0) / 2000)
            synth.flush(30)
        res["path_hot_us"] = median_us(samples)

        # -- reward() cost (enqueue only)
        n = 20_000
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                synth.reward(resp, 1.0)
            samples.append((time.perf_counter() - t0) / n)
            synth.flush(30)
        res["reward_us"] = median_us(samples)

        # -- memory after many calls
        gc.collect()
        synth.flush(30)
        for _ in range(2000):
            mwrapped.chat.completions.create(model="m", messages=MESSAGES)
        synth.flush(30)
        gc.collect()
        tracemalloc.start()
        rss0 = rss_mb()
        snap0 = tracemalloc.take_snapshot()
        for i in range(mem_calls):
            mwrapped.chat.completions.create(model="m", messages=MESSAGES)
            if i % 10_000 == 0:
                synth.flush(30)
        synth.flush(60)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        rss1 = rss_mb()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
        res["mem_calls"] = mem_calls
        res["rss_start_mb"] = rss0
        res["rss_end_mb"] = rss1
        res["traced_growth_kb"] = grown / 1024
        backend.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--mem-calls", type=int, default=100_000)
    args = ap.parse_args()
    r = run(args.calls, args.rounds, args.mem_calls)
    print(f"machine: {machine()}")
    print(
        f"loopback  raw {r['loopback_raw_us']:.0f} us  wrapped {r['loopback_wrapped_us']:.0f} us"
        f"  ratio {r['loopback_ratio']:.3f}"
    )
    print(f"in-memory raw {r['memory_raw_us']:.1f} us  wrapped {r['memory_wrapped_us']:.1f} us")
    print(f"  added on the request path (calling thread CPU): {r['added_cpu_us']:.1f} us")
    print(f"  added wall time, saturated loop incl. delivery:  {r['added_wall_us']:.1f} us")
    print(f"  background delivery CPU per rollout:            {r['delivery_cpu_us']:.1f} us")
    print(f"  request-path code alone, hot (no model call):   {r['path_hot_us']:.1f} us")
    print(f"reward()  {r['reward_us']:.2f} us per call")
    print(
        f"memory    {r['mem_calls']} calls: RSS {r['rss_start_mb']:.1f} -> {r['rss_end_mb']:.1f}"
        f" MiB, traced growth {r['traced_growth_kb']:.0f} KiB"
    )


if __name__ == "__main__":
    main()
