"""Every fenced code block in README.md runs as written (issue #24).

Python blocks run in a subprocess with this venv's interpreter, in a fresh
folder, with ``OPENAI_API_KEY`` set and ``OPENAI_BASE_URL`` pointing at the local
recording model server (``openai.OpenAI()`` reads both), so nothing leaves the
machine. Shell blocks run with bash (``set -e``) from the checkout, with this
venv's ``bin`` first on ``PATH`` as the README says (an activated venv).

A block is not run only when the README source says why, in an HTML comment on
the line before it::

    <!-- readme-test: skip <reason> -->
    <!-- readme-test: background <what> -->   (shell: the first line is a server)
    <!-- readme-test: server <what> -->       (python: needs ``serve`` at :8000; one is
                                               started on a free port, the URL rewritten)

and the blocks of :data:`SECTIONS_NOT_RUN` (sections maintained elsewhere).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT

README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
_MARK = re.compile(r"<!--\s*readme-test:\s*(skip|background|server)\b\s*(.*?)\s*-->")
SECTIONS_NOT_RUN = {
    "Banking77 demo": "maintained with the demo; tests/test_demo.py runs the demo and its example",
}
_BAD_LOG = ("Traceback", "unknown session", "skipped ")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    section: str
    mark: str | None  # "skip" / "background"
    reason: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}-{re.sub(r'[^a-z0-9]+', '-', self.section.lower())[:30]}"


def readme_blocks(text: str | None = None) -> list[Block]:
    """The fenced code blocks of the README, with their section and marker."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"^```(\w*)\s*$", line)
        if m:
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            prev = next((p for p in reversed(lines[:start]) if p.strip()), "")
            mark = _MARK.search(prev)
            out.append(
                Block(
                    line=start + 1,
                    lang=m.group(1) or "text",
                    code="\n".join(body) + "\n",
                    section=section,
                    mark=mark.group(1) if mark else None,
                    reason=mark.group(2) if mark else "",
                )
            )
        i += 1
    return out


BLOCKS = readme_blocks()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(model_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYNTH_", "OPENAI_", "PYTEST_")) and k != "PYTHONPATH"
    }
    env.update(
        OPENAI_API_KEY="sk-readme-test",
        OPENAI_BASE_URL=model_url,
        SYNTH_EXIT_FLUSH_TIMEOUT="5",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(VENV_BIN.parent),
    )
    return env


def _check(out: subprocess.CompletedProcess[str], block: Block) -> None:
    where = f"README.md line {block.line} ({block.section})"
    assert out.returncode == 0, f"{where} failed:\n{out.stdout}\n{out.stderr}"
    for bad in _BAD_LOG:
        assert bad not in out.stderr, f"{where} logged {bad!r}:\n{out.stderr}"


def test_every_block_is_run_or_says_why() -> None:
    """A new block must run, or carry a skip marker with a reason."""
    assert len(BLOCKS) >= 10
    for b in BLOCKS:
        if b.mark == "skip" or b.section in SECTIONS_NOT_RUN:
            assert b.reason or b.section in SECTIONS_NOT_RUN, b
            continue
        assert b.lang in ("python", "sh"), f"README.md line {b.line}: cannot run {b.lang!r}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, server: Any, tmp_path: Path) -> None:
    if block.section in SECTIONS_NOT_RUN:
        pytest.skip(SECTIONS_NOT_RUN[block.section])
    if block.mark == "skip":
        pytest.skip(block.reason)
    env = _env(server.url)
    if block.lang == "python":
        code = block.code
        if block.mark == "server":
            from synth_middleware.server.background import BackgroundServer

            srv = BackgroundServer(db_path=tmp_path / "served.db")
            srv.start()
            code = code.replace("http://127.0.0.1:8000", srv.url)
        try:
            out = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            if block.mark == "server":
                srv.stop()
        _check(out, block)
        if "completions.create" in block.code:  # the wrapped call reached the model
            assert server.system_prompts(), "no call reached the model server"
        return
    if block.mark == "background":
        _run_with_server(block, env, tmp_path)
        return
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(out, block)


def _run_with_server(block: Block, env: dict[str, str], cwd: Path) -> None:
    """The first line is a server: start it (on a free port), wait for ``/health``, run
    the rest, stop it; it must have served and stopped cleanly."""
    port = _free_port()
    code = block.code.replace(":8000", f":{port}").replace("--port 8000", f"--port {port}")
    first, _, rest = code.partition("\n")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {first}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited: {proc.communicate()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not answer /health"
            time.sleep(0.2)
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", rest],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        _check(out, block)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


def test_the_harness_reads_markers() -> None:
    text = (
        "## A\n\n<!-- readme-test: skip needs a key -->\n```python\nx = 1\n```\n"
        "## B\n```sh\necho hi\n```\n"
    )
    a, b = readme_blocks(text)
    assert (a.section, a.mark, a.reason, a.code) == ("A", "skip", "needs a key", "x = 1\n")
    assert (b.section, b.mark, b.lang) == ("B", None, "sh")
