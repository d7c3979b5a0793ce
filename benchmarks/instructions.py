"""Instructions per call, counted by valgrind's callgrind: repeatable under load.

    .venv/bin/python benchmarks/instructions.py [--calls 100]

Wall-clock overhead figures on this shared 2-core machine move by a few percent
from run to run; instruction counts do not. Each contender runs in its own
process under ``valgrind --tool=callgrind`` twice, with ``--warm`` and with
``--warm + --calls`` in-memory chat calls (``in_memory_http_client()``: the
fake model server runs in-process, so its work is counted too, as in the raw
client's figure); the difference divided by ``--calls`` is the cost of one call,
start-up and imports cancelling out:

* ``raw``: the plain ``openai.OpenAI`` client;
* ``ours, request path``: ``synth.wrap`` over a ``LocalBackend`` whose
  ``record_rollouts`` does nothing (candidate choice and application, rollout,
  OTel context, record enqueue);
* ``ours``: the same with the real SQLite delivery of each rollout record
  (done on the reporter's thread; here all at the exit flush).

Instructions are not time: a call's wall time also depends on cache misses and,
for the delivery thread, on waiting for the GIL (see ``## Peers``).
``--cache-sim`` also has callgrind simulate the caches and the branch
predictor, and adds per call: first-level cache misses, mispredicted branches
and an estimated cycle count (instructions + 10 per first-level miss + 100 per
last-level miss + 10 per mispredicted branch: KCachegrind's cycle-estimate
weights). Still deterministic, it shows whether interleaving our code with the
SDK's costs misses or mispredictions out of proportion to our instructions.
It takes about twice as long. ``--ll SIZE,ASSOC,LINE`` sets the simulated last
level (``1048576,8,64``: this machine's per-core L2; by default callgrind takes
what the host reports, here 256 MiB, which almost never misses).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = "You are a support assistant. Classify the customer's request."
CAND = "You are a banking intent classifier. Answer with one label."
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "my card is lost"}]
CONTENDERS = {"raw": "raw", "request": "ours, request path", "ours": "ours"}


def worker(kind: str, calls: int) -> None:
    """Make ``calls`` in-memory chat calls with contender ``kind``."""
    import openai

    from synth_middleware.testing import in_memory_http_client

    kw = {"api_key": "k", "max_retries": 0, "base_url": "http://fake/v1"}
    client = openai.OpenAI(http_client=in_memory_http_client(), **kw)
    with tempfile.TemporaryDirectory() as tmp:
        if kind != "raw":
            import synth_middleware as synth
            from synth_middleware.backends.local import LocalBackend

            class NoDelivery(LocalBackend):
                def record_rollouts(self, rollouts: object) -> None:
                    return None

            cls = NoDelivery if kind == "request" else LocalBackend
            backend = cls(str(Path(tmp) / "instructions.db"))
            backend.ensure_session("s", baseline=SYSTEM)
            backend.add_candidate("s", CAND)
            # deliver at the exit flush only, so both counts include the same flushes
            client = synth.wrap(
                client, session="s", backend=backend, warm=True, ttl=3600, flush_interval=3600
            )
        for _ in range(calls):
            client.chat.completions.create(model="m", messages=MESSAGES)
        if kind != "raw":
            synth.flush(60)
            backend.close()


# callgrind's event order with --cache-sim=yes --branch-sim=yes
EVENTS = (
    "Ir",
    "Dr",
    "Dw",
    "I1mr",
    "D1mr",
    "D1mw",
    "ILmr",
    "DLmr",
    "DLmw",
    "Bc",
    "Bcm",
    "Bi",
    "Bim",
)


def count(
    kind: str, calls: int, tmp: str, *, cache_sim: bool = False, ll: str | None = None
) -> dict[str, int]:
    """Event totals callgrind counted for one worker run (``Ir`` alone without
    ``cache_sim``)."""
    out = Path(tmp) / f"cg.{kind}.{calls}"
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--cache-sim={'yes' if cache_sim else 'no'}",
            f"--branch-sim={'yes' if cache_sim else 'no'}",
            *([f"--LL={ll}"] if cache_sim and ll else []),
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--calls",
            str(calls),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"Collected : ([\d ]+)", proc.stderr)
    if m is None:
        raise SystemExit(f"no callgrind total for {kind}:\n{proc.stderr[-2000:]}")
    return dict(zip(EVENTS, map(int, m.group(1).split()), strict=False))


def l1_misses(ev: dict[str, float]) -> float:
    """First-level misses: instruction reads, data reads and data writes."""
    return ev["I1mr"] + ev["D1mr"] + ev["D1mw"]


def ll_misses(ev: dict[str, float]) -> float:
    """Last-level misses: instruction reads, data reads and data writes."""
    return ev["ILmr"] + ev["DLmr"] + ev["DLmw"]


def mispredicts(ev: dict[str, float]) -> float:
    """Mispredicted conditional and indirect branches."""
    return ev["Bcm"] + ev["Bim"]


def cycles(ev: dict[str, float]) -> float:
    """Estimated cycles (KCachegrind's weights: 10 per L1 miss and per mispredicted
    branch, 100 per last-level miss)."""
    return ev["Ir"] + 10 * l1_misses(ev) + 100 * ll_misses(ev) + 10 * mispredicts(ev)


def main() -> None:
    """Count, then print a table of instructions per call and ratios to raw."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100, help="measured calls per contender")
    ap.add_argument("--warm", type=int, default=20, help="calls in the baseline run")
    ap.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate caches and branch prediction: misses, estimated cycles",
    )
    ap.add_argument(
        "--ll",
        metavar="SIZE,ASSOC,LINE",
        help="simulated last-level cache for --cache-sim (valgrind --LL), e.g. 1048576,8,64 "
        "for this machine's per-core L2; default: what the host reports",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.calls)
        return
    if args.ll and not args.cache_sim:
        ap.error("--ll needs --cache-sim")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    sys.path.insert(0, str(HERE))
    from _common import machine

    per_call: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in CONTENDERS:
            low = count(kind, args.warm, tmp, cache_sim=args.cache_sim, ll=args.ll)
            high = count(kind, args.warm + args.calls, tmp, cache_sim=args.cache_sim, ll=args.ll)
            per_call[kind] = {e: (high[e] - low[e]) / args.calls for e in high}
    raw = per_call["raw"]
    print(f"machine: {machine()}; {args.calls} calls per contender under callgrind\n")
    print("| contender | instructions per call | ratio to raw | added per call |")
    print("| --- | ---: | ---: | ---: |")
    for kind, label in CONTENDERS.items():
        n = per_call[kind]["Ir"]
        print(f"| {label} | {n:,.0f} | {n / raw['Ir']:.3f} | {n - raw['Ir']:+,.0f} |")
    if args.cache_sim:
        print("\nsimulated caches and branch predictor (per call):\n")
        print(
            "| contender | L1 misses | ratio to raw | last-level misses "
            "| mispredicted branches | ratio to raw | estimated cycles | ratio to raw |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for kind, label in CONTENDERS.items():
            ev = per_call[kind]
            l1, bm = l1_misses(ev), mispredicts(ev)
            print(
                f"| {label} | {l1:,.0f} | {l1 / l1_misses(raw):.3f} | {ll_misses(ev):,.1f} "
                f"| {bm:,.0f} | {bm / mispredicts(raw):.3f} "
                f"| {cycles(ev):,.0f} | {cycles(ev) / cycles(raw):.3f} |"
            )


if __name__ == "__main__":
    main()
