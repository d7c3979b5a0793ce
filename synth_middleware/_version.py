"""The package version, in a module of its own so that the bottom layers (the wire
dialect's ``User-Agent``) can read it without importing the public API above them."""

from __future__ import annotations


def _version() -> str:
    # One source of truth, pyproject.toml's [project] version, read from the installed
    # metadata (about 1 ms here). A source tree that was never installed has none:
    # then pyproject.toml itself, then a version that says so.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synth-middleware")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        try:
            pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
            with pyproject.open("rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()
"""The installed distribution's version (``pyproject.toml``'s ``[project] version``)."""
