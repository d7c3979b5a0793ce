"""The integrations refuse, at import, a framework older than the oldest one we support."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from synth_middleware._versions import (
    UnsupportedVersionError,
    check_minimum_version,
    parse_version,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.110.2", (0, 110, 2)),
        ("5.2", (5, 2)),
        ("4.2a1", (4, 2)),
        ("0.36.0rc1", (0, 36, 0)),
        ("1.0.0.post3", (1, 0, 0)),
        ("v2.1", (2, 1)),
        ("unknown", None),
        ("", None),
    ],
)
def test_parse_version(text: str, parsed: tuple[int, ...] | None) -> None:
    assert parse_version(text) == parsed


def _check(installed: str) -> None:
    check_minimum_version(
        "synth_middleware_fastapi",
        "FastAPI",
        (0, 110),
        distribution="fastapi",
        module="fastapi",
        extra="fastapi",
        installed=installed,
    )


def test_too_old_is_refused_with_a_clear_error() -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        _check("0.109.9")
    assert isinstance(info.value, ImportError)
    assert str(info.value) == (
        "synth_middleware_fastapi needs FastAPI >= 0.110, but FastAPI 0.109.9 is installed; "
        "upgrade it (pip install 'synth-middleware[fastapi]' installs a supported one)"
    )


@pytest.mark.parametrize("installed", ["0.110", "0.110.0", "0.110.0rc1", "1.0", "not-a-version"])
def test_supported_or_unknown_passes(installed: str) -> None:
    _check(installed)  # an unreadable version passes: the guard stops only what it knows


def _extra_minimums(extra: str) -> dict[str, tuple[int, ...]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for req in project["optional-dependencies"][extra]:
        name, _, low = req.partition(">=")
        parsed = parse_version(low.split(",")[0])
        assert parsed is not None, req
        out[name.strip().lower()] = parsed
    return out


def test_minimums_are_the_pyproject_extras() -> None:
    from synth_middleware_fastapi import _compat as fastapi_compat

    assert _extra_minimums("fastapi") == {
        "fastapi": fastapi_compat.MINIMUM_FASTAPI,
        "starlette": fastapi_compat.MINIMUM_STARLETTE,
    }
    pytest.importorskip("django")
    from synth_middleware_django import _compat as django_compat

    assert _extra_minimums("django") == {"django": django_compat.MINIMUM_DJANGO}


def _import_with_installed(tmp_path: Path, dist: str, ver: str, module: str) -> str:
    """Import ``module`` in a fresh interpreter that finds the metadata of ``dist`` at
    version ``ver`` first on its path (the real package still imports)."""
    info = tmp_path / f"{dist}-{ver}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {ver}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, f"{module} imported next to {dist} {ver}"
    return proc.stderr


@pytest.mark.parametrize(
    ("dist", "ver", "framework", "wanted"),
    [("fastapi", "0.100.0", "FastAPI", "0.110"), ("starlette", "0.35.1", "Starlette", "0.36")],
)
def test_fastapi_integration_refuses_an_old_framework(
    tmp_path: Path, dist: str, ver: str, framework: str, wanted: str
) -> None:
    err = _import_with_installed(tmp_path, dist, ver, "synth_middleware_fastapi")
    assert "UnsupportedVersionError" in err
    assert f"synth_middleware_fastapi needs {framework} >= {wanted}" in err
    assert f"{framework} {ver} is installed" in err


def test_django_integration_refuses_an_old_django(tmp_path: Path) -> None:
    pytest.importorskip("django")
    err = _import_with_installed(tmp_path, "django", "4.1.13", "synth_middleware_django")
    assert "synth_middleware_django needs Django >= 4.2, but Django 4.1.13 is installed" in err


def test_the_installed_frameworks_pass() -> None:
    import synth_middleware_fastapi

    assert synth_middleware_fastapi.SynthMiddleware
    pytest.importorskip("django")
    import synth_middleware_django

    assert synth_middleware_django.SynthMiddleware
