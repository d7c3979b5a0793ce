"""Issue #24, items 6 and 8: every CLI mistake gets one line saying what is wrong and
what to do (exit code 2, no traceback); ``--version``; a plain ``--help``; the
package metadata builds without setuptools' license deprecation warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

import synth_middleware


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SYNTH_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "synth_middleware.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=full_env,
    )


def _one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    err = out.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    ("db", "needles"),
    [
        ("missing-folder/synth.db", ("does not exist", "mkdir -p missing-folder")),
        ("a-directory", ("is a directory", "a-directory/synth.db")),
        ("mysql://user:pw@host/db", ("mysql://", "only SQLite files and postgresql://")),
        ("not-a-database.db", ("cannot open", "not a database")),
    ],
)
def test_serve_db_mistakes(tmp_path: Path, db: str, needles: tuple[str, ...]) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "not-a-database.db").write_bytes(b"\x00garbage" * 600)
    before = sorted(p.name for p in tmp_path.iterdir())
    err = _one_line_error(_cli("serve", "--db", db, "--port", "1", cwd=tmp_path), *needles)
    assert err.startswith("synth-middleware serve: ")
    assert "pw" not in err  # a URL's password is never echoed
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mysql: folder, nothing


@pytest.mark.parametrize(
    ("target", "extra", "needles"),
    [
        ("no_such_module_xyz:app", (), ("cannot import", "PYTHONPATH")),
        ("json:no_such_attr", (), ("no_such_attr", "after the colon")),
        ("json:loads", (), ("not an ASGI app", "--factory")),
        ("no-colon", (), ("module:attribute",)),
        (
            "synth_middleware.demos.banking77.task:create_app",
            ("--factory",),
            ("cannot load", "missing train.csv"),
        ),
    ],
)
def test_container_serve_bad_targets(
    tmp_path: Path, target: str, extra: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    env = {"ENVIRONMENT_API_KEY": "k", "BANKING77_DIR": str(tmp_path / "nothing-here")}
    out = _cli("container", "serve", target, *extra, "--port", "1", cwd=tmp_path, env=env)
    err = _one_line_error(out, *needles)
    assert err.startswith("synth-middleware container serve: ")


def test_container_serve_without_a_key_says_how(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ENVIRONMENT_API_KEY"}
    out = subprocess.run(
        [sys.executable, "-m", "synth_middleware.cli", "container", "serve", "json:loads"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    _one_line_error(out, "ENVIRONMENT_API_KEY", "--api-key")
    help_text = _cli("container", "serve", "--help", cwd=tmp_path).stdout
    # the help says what happens without a key (generated only on a terminal)
    assert "interactive terminal" in " ".join(help_text.split())


def test_version_and_plain_help(tmp_path: Path) -> None:
    out = _cli("--version", cwd=tmp_path)
    assert (
        out.returncode == 0
        and out.stdout.strip() == f"synth-middleware {synth_middleware.__version__}"
    )
    for args in (("--help",), ("serve", "--help"), ("container", "serve", "--help")):
        text = _cli(*args, cwd=tmp_path).stdout
        assert "``" not in text and ":func:" not in text and ":class:" not in text, args


def test_license_is_an_spdx_string() -> None:
    """setuptools >= 77 warns four times per install about a ``{text = ...}`` table."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    requires = " ".join(meta["build-system"]["requires"])
    assert "setuptools>=77" in requires


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("serve", "--port", "abc"), "invalid int value"),
        (("no-such-command",), "invalid choice"),
        (("container", "serve"), "required: TARGET"),
    ],
)
def test_usage_mistakes_are_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    err = _one_line_error(_cli(*args, cwd=tmp_path), needle, "--help")
    assert err.startswith("synth-middleware")


def test_quickstart_says_how_to_run_it() -> None:
    text = (ROOT / "examples" / "quickstart.py").read_text()
    assert "make demo" not in text and "make quickstart" in text
