"""Real processes: a forked child delivers its own rewards (nothing twice), and a
short-lived script's rewards arrive at exit, or it exits within the flush timeout."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _wire_server import WireServer
from helpers import BASELINE

SID = "fork-sess"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def wire() -> Iterator[WireServer]:
    with WireServer() as server:
        server.engine.ensure_session(SID, baseline=BASELINE)
        yield server


def _run(
    tmp_path: Path, code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code).replace("{root}", repr(str(ROOT))))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTH_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=str(tmp_path),
    )


_FORK = """
import os, sys, time
sys.path.insert(0, {root})
import openai
import synth_middleware as synth
from synth_middleware.backends.http import HttpBackend
from synth_middleware.client.reporter import all_reporters

url, outbox = sys.argv[1], sys.argv[2]
SID = "fork-sess"
synth.wrap(openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1"), session=SID,
           backend=HttpBackend(url, timeout=5), outbox=outbox or False, batch_size=20,
           flush_interval=0.01)
(rep,) = all_reporters()

def send(prefix, n):
    return [synth.reward(synth.Rollout(SID, f"{prefix}-{i}"), 1.0) for i in range(n)]

parent = send("parent", 60)
time.sleep(0.05)  # the worker is in the middle of a (slow) request
print("PENDING_AT_FORK", rep.pending, flush=True)
children = []
for c in range(2):
    pid = os.fork()
    if pid == 0:
        keys = send(f"child{c}", 30)
        ok = synth.flush(30)
        # a file per child, not the shared stdout pipe: a child's line was seen
        # to go missing there once under CI load, while its exit code said 0
        with open(f"child{c}.out", "w") as f:
            f.write(" ".join(["CHILD", str(c), str(ok), str(rep.stats().sent), *keys]))
        os._exit(0 if ok else 3)
    children.append(pid)
parent += send("parent-after", 20)
ok = synth.flush(30)
print("PARENT", ok, rep.stats().sent, " ".join(parent), flush=True)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print("CODES", *codes, flush=True)
"""


@pytest.mark.parametrize("with_outbox", [False, True], ids=["memory", "outbox"])
def test_forked_children_deliver_their_own_and_nothing_twice(wire, tmp_path, with_outbox):
    wire.delay = 0.1  # slow answers: the parent has rewards queued when it forks
    outbox = str(tmp_path / "outbox.db") if with_outbox else ""
    proc = _run(tmp_path, _FORK, wire.url, outbox)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert int(lines["PENDING_AT_FORK"][0]) > 0
    assert lines["CODES"] == ["0", "0"]
    keys: list[str] = []
    child_lines = [(tmp_path / f"child{c}.out").read_text() for c in range(2)]
    for line in [*out.splitlines(), *child_lines]:
        parts = line.split()
        if parts[0] == "CHILD":
            assert parts[2] == "True" and parts[3] == "30"  # the child sent only its own
            keys += parts[4:]
        elif parts[0] == "PARENT":
            assert parts[1] == "True" and parts[2] == "80"
            keys += parts[3:]
    assert len(keys) == 140
    stored = wire.reward_keys(SID)
    assert sorted(stored) == sorted(keys)
    counts = wire.received_counts()
    assert max(counts.values()) == 1, "a reward was sent twice (by parent and child?)"
    if with_outbox:
        assert (
            sqlite3.connect(outbox).execute("SELECT COUNT(*) FROM synth_outbox").fetchone()[0] == 0
        )


_SHORT_LIVED = """
import sys, time
sys.path.insert(0, {root})
import openai
import synth_middleware as synth
from synth_middleware.backends.http import HttpBackend

url, model_url = sys.argv[1], sys.argv[2]
client = synth.wrap(openai.OpenAI(api_key="k", base_url=model_url, max_retries=0),
                    session="fork-sess", backend=HttpBackend(url, timeout=10))
for i in range(5):
    resp = client.chat.completions.create(
        model="m", messages=[{"role": "system", "content": sys.argv[3]},
                             {"role": "user", "content": f"question {i}"}])
    print("KEY", synth.reward(resp, 1.0, feedback=f"answer {i}"), flush=True)
print("EXITING", time.time(), flush=True)
"""


def test_short_lived_script_rewards_arrive_at_exit(wire, server, tmp_path):
    proc = _run(
        tmp_path,
        _SHORT_LIVED,
        wire.url,
        server.url,
        BASELINE,
        env={"SYNTH_EXIT_FLUSH_TIMEOUT": "10"},
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    keys = [line.split()[1] for line in out.splitlines() if line.startswith("KEY")]
    assert len(keys) == 5
    assert sorted(wire.reward_keys(SID)) == sorted(keys)
    records = wire.engine.rollout_records(SID)
    assert len(records) == 5 and all(r["output"] for r in records)  # rollouts too
    assert "undelivered" not in err


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("down", ["refused", "hanging"])
def test_exit_within_the_flush_timeout_when_the_server_is_down(wire, server, tmp_path, down):
    if down == "hanging":
        url = wire.url
        wire.delay = 30.0  # answers hang (far past the exit flush timeout)
    else:
        url = _refused_url()
    proc = _run(
        tmp_path,
        _SHORT_LIVED,
        url,
        server.url,
        BASELINE,
        env={"SYNTH_EXIT_FLUSH_TIMEOUT": "1", "SYNTH_OUTBOX": str(tmp_path / "o.db")},
    )
    exiting_at = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("EXITING"):
            exiting_at = time.time()
            break
    assert exiting_at is not None
    proc.wait(30)
    took = time.time() - exiting_at
    _, err = proc.communicate()  # drains and closes the pipes
    assert took < 1.0 + 1.5, f"exit took {took:.2f}s with a 1s flush timeout"
    assert "undelivered" in err and "kept in the outbox" in err
    # nothing was lost: the rewards wait in the outbox for the next run
    n = sqlite3.connect(tmp_path / "o.db").execute("SELECT COUNT(*) FROM synth_outbox").fetchone()
    assert n[0] == 5
