"""Version guards for the framework integrations (as sentry-python's ``_check_minimum_version``).

An integration imported next to a framework older than the oldest one we support
fails at import with one clear sentence, instead of with an ``AttributeError``
deep inside a request later. The minimums are those of ``pyproject.toml``'s
extras (the tests hold them equal).
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import PackageNotFoundError, version

_LEADING_NUMBERS = re.compile(r"\s*v?(\d+(?:\.\d+)*)")


class UnsupportedVersionError(ImportError):
    """A framework is older than the oldest version its integration supports."""


def parse_version(text: str) -> tuple[int, ...] | None:
    """The leading release numbers of a version string (``"0.110.2rc1"`` -> ``(0, 110, 2)``);
    None when it starts with none."""
    match = _LEADING_NUMBERS.match(text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def installed_version(distribution: str, module: str) -> str | None:
    """The installed version: the distribution's metadata, else ``module.__version__``
    (a vendored copy has no metadata), else None."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        pass
    try:
        found = getattr(importlib.import_module(module), "__version__", None)
    except ImportError:
        return None
    return found if isinstance(found, str) else None


def check_minimum_version(
    integration: str,
    framework: str,
    minimum: tuple[int, ...],
    *,
    distribution: str,
    module: str,
    extra: str,
    installed: str | None = None,
) -> None:
    """Raise :class:`UnsupportedVersionError` when ``framework`` is older than ``minimum``.

    ``installed`` defaults to what :func:`installed_version` finds. A version that
    cannot be read or parsed passes: the guard only stops what it knows is too old.
    """
    text = installed if installed is not None else installed_version(distribution, module)
    found = parse_version(text) if text is not None else None
    if found is None or found >= minimum:
        return
    wanted = ".".join(map(str, minimum))
    raise UnsupportedVersionError(
        f"{integration} needs {framework} >= {wanted}, but {framework} {text} is installed; "
        f"upgrade it (pip install 'synth-middleware[{extra}]' installs a supported one)"
    )
