"""Latency the Pattern A proxy adds over calling the upstream model directly.

    .venv/bin/python benchmarks/proxy.py [--calls 200] [--rounds 10]

Three processes on loopback: a FakeOpenAIServer as the upstream model, a
``synth-middleware serve`` forwarding to it, and this client. The client calls
``POST /v1/chat/completions`` on the upstream directly and ``POST
.../proxy/chat/completions`` on the server (which picks a candidate among
three, injects it, forwards, and commits the rollout before answering), one
call at a time, alternating rounds so machine noise hits both alike. Streaming
calls are timed to the first byte and to the last. A "null forwarder"
(Starlette plus one pooled httpx client, no synth code) is measured alongside
as the floor of any Python forwarder on the same machine. Prints markdown.
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
from server import ROOT, RawClient, cpu_seconds, free_port, pct, start_server, wait_http

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

UPSTREAM = (
    "import sys, time\n"
    "from synth_middleware.testing import FakeOpenAIServer\n"
    "FakeOpenAIServer(port=int(sys.argv[1])).start()\n"
    "time.sleep(1e9)\n"
)
# The floor for any Python forwarder here: Starlette + one pooled httpx client, nothing else.
NULL_FORWARDER = (
    "import sys, httpx, uvicorn\n"
    "from starlette.applications import Starlette\n"
    "from starlette.responses import Response\n"
    "from starlette.routing import Route\n"
    "up = sys.argv[2]\n"
    "client = None\n"
    "async def forward(request):\n"
    "    global client\n"
    "    client = client or httpx.AsyncClient(base_url=up)\n"
    "    r = await client.post('/chat/completions', content=await request.body(),\n"
    "                          headers={'content-type': 'application/json'})\n"
    "    return Response(r.content, status_code=r.status_code, media_type='application/json')\n"
    "async def health(request):\n"
    "    return Response(b'{}')\n"
    "app = Starlette(routes=[Route('/chat/completions', forward, methods=['POST']),\n"
    "                        Route('/health', health)])\n"
    "uvicorn.run(app, port=int(sys.argv[1]), log_level='warning', access_log=False,\n"
    "            loop='uvloop', http='httptools')\n"
)
BODY = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "You are a support assistant. Classify the request."},
        {"role": "user", "content": "I lost my card yesterday, what should I do?"},
    ],
}


async def measure(
    up_port: int, px_port: int, nf_port: int, calls: int, rounds: int, pids: dict[str, int]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-call seconds for each path, in alternating rounds, and CPU seconds per call
    of the upstream and proxy processes for each path."""
    setup = await RawClient("127.0.0.1", px_port).connect()
    sid = "proxy-bench"
    await setup.request(
        "POST",
        "/api/v1/online/sessions",
        {"session_id": sid, "baseline": BODY["messages"][0]["content"]},
    )
    for text in ("Candidate A: classify precisely.", "Candidate B: one label only."):
        await setup.request(
            "POST", f"/api/v1/online/sessions/{sid}/candidates", {"candidate_content": text}
        )
    setup.close()
    direct = await RawClient("127.0.0.1", up_port).connect()
    proxy = await RawClient("127.0.0.1", px_port).connect()
    null = await RawClient("127.0.0.1", nf_port).connect()
    stream_body = {**BODY, "stream": True}
    paths = {
        "direct": (direct, direct.build("POST", "/v1/chat/completions", BODY)),
        "null forwarder (Starlette + httpx only)": (
            null,
            null.build("POST", "/chat/completions", BODY),
        ),
        "proxy": (
            proxy,
            proxy.build("POST", f"/api/v1/online/sessions/{sid}/proxy/chat/completions", BODY),
        ),
        "direct, stream": (direct, direct.build("POST", "/v1/chat/completions", stream_body)),
        "proxy, stream": (
            proxy,
            proxy.build(
                "POST", f"/api/v1/online/sessions/{sid}/proxy/chat/completions", stream_body
            ),
        ),
    }
    out: dict[str, list[float]] = {name: [] for name in paths}
    heads: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, float] = {f"{name}/{proc}": 0.0 for name in paths for proc in pids}
    for client, raw in paths.values():  # warm up connections and caches
        for _ in range(50):
            status, _ = await client.send(raw)
            assert status == 200, status
    for _ in range(rounds):
        for name, (client, raw) in paths.items():
            before = {proc: cpu_seconds(pid) for proc, pid in pids.items()}
            for _ in range(calls):
                t0 = time.perf_counter()
                status, body = await client.send(raw)
                out[name].append(time.perf_counter() - t0)
                heads[name].append(client.head_at - t0)
                assert status == 200, body[:200]
            for proc, pid in pids.items():
                cpu[f"{name}/{proc}"] += (cpu_seconds(pid) - before[proc]) / (calls * rounds)
    direct.close()
    proxy.close()
    null.close()
    for name in list(paths):
        if "stream" in name:
            out[f"{name}, to headers"] = heads[name]
    return out, cpu


def main() -> None:
    """Start the upstream and the server, measure, print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    if uvloop is not None:
        uvloop.install()
    up_port, px_port, nf_port = free_port(), free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)], cwd=ROOT)
    forwarder = subprocess.Popen(
        [sys.executable, "-c", NULL_FORWARDER, str(nf_port), f"http://127.0.0.1:{up_port}/v1"],
        cwd=ROOT,
    )
    try:
        wait_http(up_port, "/v1/models")
        wait_http(nf_port)
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(
                Path(tmp) / "proxy.db",
                px_port,
                ["--upstream-url", f"http://127.0.0.1:{up_port}/v1"],
                env={"SYNTH_UPSTREAM_API_KEY": "sk-bench"},
            )
            try:
                pids = {"upstream": upstream.pid, "server": server.pid, "null": forwarder.pid}
                res, cpu = asyncio.run(
                    measure(up_port, px_port, nf_port, args.calls, args.rounds, pids)
                )
            finally:
                server.terminate()
                server.wait(15)
    finally:
        for proc in (upstream, forwarder):
            proc.terminate()
            proc.wait(15)
    load = os.getloadavg()
    print(
        f"### Proxy added latency\n\n{machine()}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"{args.calls * args.rounds} sequential calls per path\n"
    )
    print("| path | p50 ms | p90 ms | p99 ms | upstream CPU/call | forwarder CPU/call |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, samples in res.items():
        key = name.removesuffix(", to headers")
        up_cpu = "" if key != name else f"{cpu[key + '/upstream'] * 1e3:.2f} ms"
        middle = "null" if name.startswith("null") else "server"
        px_cpu = "" if key != name else f"{cpu[key + '/' + middle] * 1e3:.2f} ms"
        print(
            f"| {name} | {pct(samples, 0.5):.2f} | {pct(samples, 0.9):.2f} | "
            f"{pct(samples, 0.99):.2f} | {up_cpu} | {px_cpu} |"
        )
    for kind, label in (
        ("", "non-streaming, whole answer"),
        (", stream, to headers", "streaming, to the first byte"),
        (", stream", "streaming, whole answer"),
    ):
        added = statistics.median(res[f"proxy{kind}"]) - statistics.median(res[f"direct{kind}"])
        print(f"\nAdded by the proxy ({label}), median: **{added * 1e3:.2f} ms**")
    floor = statistics.median(res["null forwarder (Starlette + httpx only)"]) - statistics.median(
        res["direct"]
    )
    print(f"\nAdded by the null forwarder (no synth code), median: {floor * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
