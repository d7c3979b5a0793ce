"""Where the Banking77 files are found when nobody says: one lookup for the CLI,
``make demo`` and the examples.

In order: ``$BANKING77_DIR``; ``../shared/data/banking77`` beside the source
checkout this package runs from (an editable install, ``make``); the same path
relative to the working directory. ``None`` when none holds the files: the demo's
loader then uses its cache or a verified download.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DIR = "BANKING77_DIR"
_FILES = ("train.csv", "test.csv", "categories.json")


def _holds_files(path: Path) -> bool:
    return all((path / name).is_file() for name in _FILES)


def find_banking77_dir() -> Path | None:
    """The Banking77 folder to use by default (see the module docstring), or ``None``."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent  # the folder holding synth_middleware/
    for base in (checkout, Path.cwd()):
        candidate = (base / ".." / "shared" / "data" / "banking77").resolve()
        if _holds_files(candidate):
            return candidate
    return None


def default_banking77_env() -> None:
    """Set ``$BANKING77_DIR`` from :func:`find_banking77_dir` when it is unset, so that
    every loader in this process (and its children) finds the local copy first."""
    if not os.environ.get(ENV_DIR):
        found = find_banking77_dir()
        if found is not None:
            os.environ[ENV_DIR] = str(found)
