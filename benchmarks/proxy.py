"""Latency the Pattern A proxy adds over calling the upstream model directly.

    .venv/bin/python benchmarks/proxy.py [--calls 200] [--rounds 10]

Processes on loopback: a FakeOpenAIServer as the upstream model, a
``synth-middleware serve`` forwarding to it, two null forwarders (below) and
this client. The client calls
``POST /v1/chat/completions`` on the upstream directly and ``POST
.../proxy/chat/completions`` on the server (which picks a candidate among
three, injects it, forwards, and commits the rollout before answering), one
call at a time, alternating rounds so machine noise hits both alike. Streaming
calls are timed to the first byte and to the last. Two "null forwarders"
(Starlette plus one pooled HTTP client, no synth code) are measured alongside:
one with aiohttp, the client the proxy uses, as the floor of the proxy on the
same machine, and one with httpx, to show why the proxy does not use httpx
(the rest of the package does). Prints markdown.
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
    "FakeOpenAIServer(port=int(sys.argv[1]), record=False).start()\n"
    "time.sleep(1e9)\n"
)
# The floor for a Python forwarder here: Starlette + one pooled client, nothing else.
# argv: port, upstream base URL, client library ("aiohttp", as the proxy, or "httpx").
NULL_FORWARDER = (
    "import sys, uvicorn\n"
    "from starlette.applications import Starlette\n"
    "from starlette.responses import Response\n"
    "from starlette.routing import Route\n"
    "up, lib = sys.argv[2], sys.argv[3]\n"
    "client = None\n"
    "HEADERS = {'content-type': 'application/json'}\n"
    "async def forward_httpx(request):\n"
    "    global client\n"
    "    import httpx\n"
    "    client = client or httpx.AsyncClient(base_url=up)\n"
    "    r = await client.post('/chat/completions', content=await request.body(),\n"
    "                          headers=HEADERS)\n"
    "    return Response(r.content, status_code=r.status_code, media_type='application/json')\n"
    "async def forward_aiohttp(request):\n"
    "    global client\n"
    "    import aiohttp\n"
    "    client = client or aiohttp.ClientSession()\n"
    "    async with client.post(up + '/chat/completions', data=await request.body(),\n"
    "                           headers=HEADERS) as r:\n"
    "        content = await r.read()\n"
    "    return Response(content, status_code=r.status, media_type='application/json')\n"
    "async def health(request):\n"
    "    return Response(b'{}')\n"
    "forward = forward_aiohttp if lib == 'aiohttp' else forward_httpx\n"
    "app = Starlette(routes=[Route('/chat/completions', forward, methods=['POST']),\n"
    "                        Route('/health', health)])\n"
    "uvicorn.run(app, port=int(sys.argv[1]), log_level='warning', access_log=False,\n"
    "            loop='uvloop', http='httptools')\n"
)
NULL_LIBS = ("aiohttp", "httpx")
BODY = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "You are a support assistant. Classify the request."},
        {"role": "user", "content": "I lost my card yesterday, what should I do?"},
    ],
}


def null_name(lib: str) -> str:
    """The table row of the null forwarder using ``lib``."""
    return f"null forwarder (Starlette + {lib} only)"


async def _call(client: RawClient, raw: bytes) -> tuple[int, bytes]:
    """One untimed call; reconnect once if the server closed the idle connection.

    uvicorn closes a keep-alive connection after 5 idle seconds, which a busy
    machine can reach while the other paths run their round."""
    try:
        return await client.send(raw)
    except (asyncio.IncompleteReadError, ConnectionError):
        client.close()
        await client.connect()
        return await client.send(raw)


async def _settle(client: RawClient, raw: bytes) -> None:
    """Untimed calls until one succeeds: fresh connections all the way to the upstream
    (a forwarder's pooled connection may have idled out too, answering one 502)."""
    for _ in range(5):
        status, _ = await _call(client, raw)
        if status == 200:
            return
    raise RuntimeError(f"the path keeps failing ({status})")


async def measure(
    ports: dict[str, int], calls: int, rounds: int, pids: dict[str, int]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-call seconds for each path, in alternating rounds, and CPU seconds per call
    of each process for each path."""
    setup = await RawClient("127.0.0.1", ports["server"]).connect()
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
    clients = {
        name: await RawClient("127.0.0.1", port).connect()
        for name, port in ports.items()
        if name != "upstream"
    }
    direct = await RawClient("127.0.0.1", ports["upstream"]).connect()
    proxy = clients["server"]
    proxy_path = f"/api/v1/online/sessions/{sid}/proxy/chat/completions"
    stream_body = {**BODY, "stream": True}
    paths: dict[str, tuple[RawClient, bytes]] = {
        "direct": (direct, direct.build("POST", "/v1/chat/completions", BODY)),
        **{
            null_name(lib): (clients[lib], clients[lib].build("POST", "/chat/completions", BODY))
            for lib in NULL_LIBS
        },
        "proxy": (proxy, proxy.build("POST", proxy_path, BODY)),
        "direct, stream": (direct, direct.build("POST", "/v1/chat/completions", stream_body)),
        "proxy, stream": (proxy, proxy.build("POST", proxy_path, stream_body)),
    }
    out: dict[str, list[float]] = {name: [] for name in paths}
    heads: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, float] = {f"{name}/{proc}": 0.0 for name in paths for proc in pids}
    for client, raw in paths.values():  # warm up connections and caches
        for _ in range(50):
            await _settle(client, raw)
    for _ in range(rounds):
        for name, (client, raw) in paths.items():
            await _settle(client, raw)
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
    for client in clients.values():
        client.close()
    for name in list(paths):
        if "stream" in name:
            out[f"{name}, to headers"] = heads[name]
    return out, cpu


def main() -> None:
    """Start the upstream, the null forwarders and the server, measure, print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    if uvloop is not None:
        uvloop.install()
    ports = {name: free_port() for name in ("upstream", "server", *NULL_LIBS)}
    up_url = f"http://127.0.0.1:{ports['upstream']}/v1"
    procs = {
        "upstream": subprocess.Popen(
            [sys.executable, "-c", UPSTREAM, str(ports["upstream"])], cwd=ROOT
        )
    }
    for lib in NULL_LIBS:
        procs[lib] = subprocess.Popen(
            [sys.executable, "-c", NULL_FORWARDER, str(ports[lib]), up_url, lib], cwd=ROOT
        )
    try:
        wait_http(ports["upstream"], "/v1/models")
        for lib in NULL_LIBS:
            wait_http(ports[lib])
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(
                Path(tmp) / "proxy.db",
                ports["server"],
                ["--upstream-url", up_url],
                env={"SYNTH_UPSTREAM_API_KEY": "sk-bench"},
            )
            try:
                pids = {name: proc.pid for name, proc in procs.items()} | {"server": server.pid}
                res, cpu = asyncio.run(measure(ports, args.calls, args.rounds, pids))
            finally:
                server.terminate()
                server.wait(15)
    finally:
        for proc in procs.values():
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
    middles = {null_name(lib): lib for lib in NULL_LIBS}
    for name, samples in res.items():
        key = name.removesuffix(", to headers")
        up_cpu = "" if key != name else f"{cpu[key + '/upstream'] * 1e3:.2f} ms"
        middle = middles.get(name, "server")
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
    for lib in NULL_LIBS:
        floor = statistics.median(res[null_name(lib)]) - statistics.median(res["direct"])
        note = " (the proxy's client: its floor)" if lib == NULL_LIBS[0] else ""
        print(
            f"\nAdded by the null forwarder with {lib}{note}, no synth code, median: "
            f"{floor * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
