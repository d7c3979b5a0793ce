"""The version guard: imported by the package before anything imports Django, so an
older one fails at import (when Django loads the middleware), in one sentence."""

from __future__ import annotations

from synth_middleware._versions import check_minimum_version

# The oldest release we support: pyproject.toml's `django` extra (a test holds them equal).
MINIMUM_DJANGO = (4, 2)


def check_versions() -> None:
    """Raise :class:`~synth_middleware._versions.UnsupportedVersionError` (an ImportError)
    if Django is older than we support."""
    check_minimum_version(
        "synth_middleware_django",
        "Django",
        MINIMUM_DJANGO,
        distribution="django",
        module="django",
        extra="django",
    )


check_versions()
