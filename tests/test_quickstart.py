"""The quick-start example runs end to end and shows a candidate reaching the model."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_quickstart_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "system: 'You are a banking intent classifier. Answer with one label.'" in out.stdout
    assert "flushed: True" in out.stdout
