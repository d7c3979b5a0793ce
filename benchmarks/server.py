"""Throughput and latency of `synth-middleware serve` over loopback.

    .venv/bin/python benchmarks/server.py [--seconds 5] [--clients 32]

The server runs as its own process (``synth-middleware serve``, uvloop and
httptools when installed, optimizer off); the load comes from this process
through a minimal keep-alive HTTP/1.1 client (raw asyncio streams, so the
client's own cost stays small next to the server's on this 2-core machine).

* rollouts/s, one request per step: each client loops ``POST /api/v1/rollouts/batch``
  (one rollout), ``POST .../reward`` (rollout and candidate), and the older
  ``POST .../status`` ``done``: three requests per rollout.
* rollouts/s, one request per rollout: ``POST .../reward`` naming the rollout
  and candidate creates the rollout (what ``session.update_reward`` sends).
* rollouts/s, batched as the middleware's reporter sends them: each client
  loops ``POST /api/v1/rollouts/batch`` (100 rollouts) then
  ``POST /api/v1/rewards/batch`` (their 100 rewards; in the newest dialect the
  reward ends the rollout).
* candidate fetch latency (``GET /api/v1/candidates/{id}``; also the session
  state and a candidate page), one client, idle server, and while each of the
  two unbatched loads runs (one probe every 5 ms).

Prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import machine

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

ROOT = Path(__file__).resolve().parent.parent


# -- a minimal keep-alive HTTP/1.1 client --------------------------------------------


class RawClient:
    """One keep-alive connection; ``request`` returns ``(status, body)``."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {host}:{port}\r\n{extra}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.head_at = 0.0  # perf_counter when the last answer's headers arrived

    async def connect(self) -> RawClient:
        """Open the connection (TCP_NODELAY)."""
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def build(self, method: str, path: str, body: Any = None) -> bytes:
        """The request bytes (build once, send many times)."""
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        return (head + "\r\n").encode() + data

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send prebuilt request bytes and read the whole answer."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        self.head_at = time.perf_counter()
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self._reader.readexactly(length)
        body = bytearray()
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
            body += await self._reader.readexactly(size + 2)
            if size == 0:
                return status, bytes(body)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Build and send one request."""
        return await self.send(self.build(method, path, body))

    def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()


# -- the server process -------------------------------------------------------------


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str = "/health", timeout: float = 30.0) -> None:
    """Poll ``path`` until it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(12).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port}")


def start_server(
    db: Path,
    port: int,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    *,
    optimizer: bool = False,
) -> subprocess.Popen[bytes]:
    """``synth-middleware serve`` in a subprocess, ready to serve (optimizer off
    unless asked for)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synth_middleware.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            str(db),
            "--log-level",
            "warning",
            *(() if optimizer else ("--no-optimizer",)),
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
    )
    wait_http(port)
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


# -- scenarios ---------------------------------------------------------------------


async def setup(port: int) -> tuple[str, list[str]]:
    """A session with a baseline and two candidates."""
    c = await RawClient("127.0.0.1", port).connect()
    sid = "bench"
    _, body = await c.request(
        "POST",
        "/api/v1/online/sessions",
        {"session_id": sid, "kind": "gepa_online", "baseline": "You classify."},
    )
    cids = [json.loads(body)["baseline_candidate_id"]]
    for text in ("Candidate A.", "Candidate B."):
        _, body = await c.request(
            "POST", f"/api/v1/online/sessions/{sid}/candidates", {"candidate_content": text}
        )
        cids.append(json.loads(body)["candidate_id"])
    c.close()
    return sid, cids


async def prober(port: int, candidate_id: str, stop: float, samples: list[float]) -> None:
    """``GET /api/v1/candidates/{id}`` every 5 ms until ``stop``; latencies into ``samples``."""
    c = await RawClient("127.0.0.1", port).connect()
    raw = c.build("GET", f"/api/v1/candidates/{candidate_id}")
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        await c.send(raw)
        samples.append(time.perf_counter() - t0)
        await asyncio.sleep(0.005)
    c.close()


async def per_request(
    port: int,
    sid: str,
    cids: list[str],
    clients: int,
    seconds: float,
    probe: list[float] | None = None,
) -> dict[str, float]:
    """Three requests per rollout: rollout record, reward, done."""
    done = 0
    errors = 0
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done, errors
        c = await RawClient("127.0.0.1", port).connect()
        i = 0
        while time.monotonic() < stop:
            rid = f"pr-{w}-{i}"
            cid = cids[i % len(cids)]
            r1 = await c.request(
                "POST",
                "/api/v1/rollouts/batch",
                {"rollouts": [{"session_id": sid, "rollout_id": rid, "candidate_id": cid}]},
            )
            r2 = await c.request(
                "POST",
                f"/api/v1/online/sessions/{sid}/reward",
                {
                    "reward_info": {"score": (i % 5) / 4},
                    "rollout_id": rid,
                    "candidate_id": cid,
                    "idempotency_key": rid,
                },
            )
            r3 = await c.request(
                "POST",
                f"/api/prompt-learning/online/mipro/systems/{sid}/status",
                {"rollout_id": rid, "status": "done"},
            )
            if r1[0] == r2[0] == r3[0] == 200:
                done += 1
            else:
                errors += 1
            i += 1
        c.close()

    t0 = time.perf_counter()
    tasks = [worker(w) for w in range(clients)]
    if probe is not None:
        tasks.append(prober(port, cids[1], stop, probe))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    return {"rollouts": done / elapsed, "requests": 3 * done / elapsed, "errors": errors}


async def reward_only(
    port: int | list[int],
    sid: str,
    cids: list[str],
    clients: int,
    seconds: float,
    probe: list[float] | None = None,
) -> dict[str, float]:
    """One request per rollout: the reward names rollout and candidate and creates the rollout
    (the newest dialect's lifecycle; what ``session.update_reward`` sends). With several
    ports (replicas) client ``w`` talks to ``ports[w % len(ports)]``."""
    ports = port if isinstance(port, list) else [port]
    done = 0
    stop = time.monotonic() + seconds
    tag = uuid.uuid4().hex[:6]  # fresh rollout ids when runs share a database

    async def worker(w: int) -> None:
        nonlocal done
        c = await RawClient("127.0.0.1", ports[w % len(ports)]).connect()
        i = 0
        while time.monotonic() < stop:
            rid = f"ro-{tag}-{w}-{i}"
            status, _ = await c.request(
                "POST",
                f"/api/v1/online/sessions/{sid}/reward",
                {
                    "reward_info": {"score": (i % 5) / 4},
                    "rollout_id": rid,
                    "candidate_id": cids[i % len(cids)],
                    "idempotency_key": rid,
                },
            )
            done += status == 200
            i += 1
        c.close()

    t0 = time.perf_counter()
    tasks = [worker(w) for w in range(clients)]
    if probe is not None:
        tasks.append(prober(ports[0], cids[1], stop, probe))
    await asyncio.gather(*tasks)
    return {"rollouts": done / (time.perf_counter() - t0)}


async def batched(
    port: int | list[int],
    sid: str,
    cids: list[str],
    clients: int,
    seconds: float,
    size: int = 100,
) -> dict[str, float]:
    """Rollouts and rewards in batches of ``size``, as the reporter sends them.
    With several ports (replicas) client ``w`` talks to ``ports[w % len(ports)]``."""
    ports = port if isinstance(port, list) else [port]
    done = 0
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        c = await RawClient("127.0.0.1", ports[w % len(ports)]).connect()
        i = 0
        while time.monotonic() < stop:
            now = time.time()
            # unique across runs: several runs may share one database
            tag = f"b-{w}-{i}-{uuid.uuid4().hex[:6]}"
            rollouts = [
                {
                    "session_id": sid,
                    "rollout_id": f"{tag}-{j}",
                    "candidate_id": cids[j % len(cids)],
                    "created_at": now,
                }
                for j in range(size)
            ]
            rewards = [
                {
                    "idempotency_key": f"{tag}-{j}",
                    "rollout_id": f"{tag}-{j}",
                    "value": (j % 5) / 4,
                    "created_at": now,
                }
                for j in range(size)
            ]
            s1, _ = await c.request("POST", "/api/v1/rollouts/batch", {"rollouts": rollouts})
            s2, body = await c.request("POST", "/api/v1/rewards/batch", {"rewards": rewards})
            if s1 == s2 == 200:
                done += sum(1 for r in json.loads(body)["results"] if r["status"] == "accepted")
            i += 1
        c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker(w) for w in range(clients)])
    return {"rollouts": done / (time.perf_counter() - t0)}


async def fetch_latency(port: int, sid: str, cids: list[str], n: int) -> dict[str, list[float]]:
    """Sequential GETs on an idle server."""
    c = await RawClient("127.0.0.1", port).connect()
    out: dict[str, list[float]] = {}
    for name, path in (
        ("GET /api/v1/candidates/{id}", f"/api/v1/candidates/{cids[1]}"),
        ("GET /api/v1/online/sessions/{id}", f"/api/v1/online/sessions/{sid}"),
        ("GET /api/v1/systems/{id}/candidates", f"/api/v1/systems/{sid}/candidates?status=active"),
    ):
        raw = c.build("GET", path)
        for _ in range(200):  # warm up
            await c.send(raw)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = await c.send(raw)
            samples.append(time.perf_counter() - t0)
            assert status == 200
        out[name] = samples
    c.close()
    return out


def main() -> None:
    """Run every scenario and print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--fetches", type=int, default=3000)
    args = ap.parse_args()
    if uvloop is not None:
        uvloop.install()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(Path(tmp) / "bench.db", port)
        try:
            sid, cids = asyncio.run(setup(port))
            lat = asyncio.run(fetch_latency(port, sid, cids, args.fetches))
            probe: list[float] = []
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            pr = asyncio.run(per_request(port, sid, cids, args.clients, args.seconds, probe))
            pr_cpu = (cpu_seconds(proc.pid) - cpu0) / (pr["rollouts"] * (time.perf_counter() - t0))
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            ro_probe: list[float] = []
            ro = asyncio.run(reward_only(port, sid, cids, args.clients, args.seconds, ro_probe))
            ro_cpu = (cpu_seconds(proc.pid) - cpu0) / (ro["rollouts"] * (time.perf_counter() - t0))
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            bt = asyncio.run(batched(port, sid, cids, max(2, args.clients // 8), args.seconds))
            bt_cpu = (cpu_seconds(proc.pid) - cpu0) / (bt["rollouts"] * (time.perf_counter() - t0))
        finally:
            proc.terminate()
            proc.wait(15)
    load = os.getloadavg()
    print(
        f"### Server throughput and latency\n\n{machine()}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (other work shares this machine)\n"
    )
    bt_clients = max(2, args.clients // 8)
    print(
        "| scenario | rollouts/s | requests/s | server CPU per rollout | rollouts/s per server core |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| one request per step (rollout, reward, done), {args.clients} clients | "
        f"{pr['rollouts']:,.0f} | {pr['requests']:,.0f} | {pr_cpu * 1e6:,.0f} us | {1 / pr_cpu:,.0f} |"
    )
    print(
        f"| one request per rollout (the reward creates it), {args.clients} clients | "
        f"{ro['rollouts']:,.0f} | {ro['rollouts']:,.0f} | {ro_cpu * 1e6:,.0f} us | {1 / ro_cpu:,.0f} |"
    )
    print(
        f"| batched 100 (rollouts batch + rewards batch), {bt_clients} clients | "
        f"{bt['rollouts']:,.0f} | {bt['rollouts'] / 50:,.0f} | {bt_cpu * 1e6:,.1f} us | {1 / bt_cpu:,.0f} |"
    )
    if pr["errors"]:
        print(f"\n{pr['errors']:.0f} per-request rollouts had a non-200 answer.")
    print("\n| candidate fetch | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    for name, samples in lat.items():
        print(f"| {name}, idle | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} |")
    for label, samples in (
        ("one request per step", probe),
        ("one request per rollout", ro_probe),
    ):
        print(
            f"| GET /api/v1/candidates/{{id}}, during the {label} load | "
            f"{pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} |"
        )


if __name__ == "__main__":
    main()
