"""The old import paths of the offline side still work and name the same objects.

``synth_middleware.container``, ``synth_middleware.sdk`` and ``synth_middleware.server.jobs``
moved under ``synth_middleware.offline`` (and ``server/routes/jobs.py``); the modules left
at the old paths only re-export, without a warning at import.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MOVED = {
    "synth_middleware.container": "synth_middleware.offline.container",
    "synth_middleware.container.app": "synth_middleware.offline.container.app",
    "synth_middleware.container.client": "synth_middleware.offline.container.client",
    "synth_middleware.container.models": "synth_middleware.offline.container.models",
    "synth_middleware.container.online": "synth_middleware.offline.container.online",
    "synth_middleware.container.runner": "synth_middleware.offline.container.runner",
    "synth_middleware.sdk": "synth_middleware.offline.sdk",
    "synth_middleware.sdk.client": "synth_middleware.offline.sdk.client",
    "synth_middleware.sdk.config": "synth_middleware.offline.sdk.config",
    "synth_middleware.sdk.jobs": "synth_middleware.offline.sdk.jobs",
    "synth_middleware.sdk.sessions": "synth_middleware.offline.sdk.sessions",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_re_exports_the_new_objects(old: str) -> None:
    shim, new = importlib.import_module(old), importlib.import_module(MOVED[old])
    assert shim.__all__, f"{old} exports nothing"
    assert "Deprecated" in (shim.__doc__ or ""), f"{old} does not say where the code went"
    for name in shim.__all__:
        assert getattr(shim, name) is getattr(new, name), f"{old}.{name}"


def test_old_paths_import_without_warnings() -> None:
    # a fresh interpreter: modules already imported here would not warn again
    code = "; ".join(f"import {name}" for name in sorted(MOVED))
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
