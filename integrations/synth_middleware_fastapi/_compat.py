"""The version guard: imported by the package before anything imports FastAPI or Starlette,
so an older one fails at import, in one sentence."""

from __future__ import annotations

from synth_middleware._versions import check_minimum_version

# The oldest releases we support: pyproject.toml's `fastapi` extra (a test holds them equal).
MINIMUM_FASTAPI = (0, 110)
MINIMUM_STARLETTE = (0, 36)


def check_versions() -> None:
    """Raise :class:`~synth_middleware._versions.UnsupportedVersionError` (an ImportError)
    if FastAPI or Starlette is older than we support."""
    for framework, minimum, name in (
        ("FastAPI", MINIMUM_FASTAPI, "fastapi"),
        ("Starlette", MINIMUM_STARLETTE, "starlette"),
    ):
        check_minimum_version(
            "synth_middleware_fastapi",
            framework,
            minimum,
            distribution=name,
            module=name,
            extra="fastapi",
        )


check_versions()
