"""The Banking77 dataset: locate, download (verified), and parse it.

Banking77 (Casanueva et al., 2020, arXiv:2003.04807; CC BY 4.0 by PolyAI):
13,083 customer-service queries in 77 intents. Three files, byte-for-byte the
originals from the PolyAI ``task-specific-datasets`` repository, folder
``banking_data/``; each is checked against its SHA-256 before use.

Where the files come from, in order:

1. ``data_dir`` (the demo's ``--data-dir``);
2. ``$BANKING77_DIR``;
3. the user cache (``$SYNTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/synth-middleware``,
   else ``~/.cache/synth-middleware``) under ``banking77/``, downloaded there
   on first use from ``$BANKING77_URL`` (default: the dataset's GitHub raw
   location) with a progress bar. A download is written to a temporary file,
   verified, then moved into place; a file that fails verification is never
   used (:class:`ChecksumError`).

The CSVs have a ``text,category`` header, CRLF line endings, standard quoting
and a few texts with embedded newlines, so they are read with :mod:`csv`.
Labels are kept verbatim (``Refund_not_showing_up``, ``reverted_card_payment?``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from synth_middleware.demos.classify.data import Example, LabelledData

__all__ = [
    "DEFAULT_URL",
    "FILES",
    "Banking77",
    "ChecksumError",
    "DatasetNotFound",
    "Example",
    "cache_dir",
    "download",
    "load",
    "read_csv",
    "resolve_data_dir",
    "verify",
]

DEFAULT_URL = (
    "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data/"
)
ENV_DIR = "BANKING77_DIR"
ENV_URL = "BANKING77_URL"
ENV_CACHE = "SYNTH_CACHE_DIR"

# name -> (sha256, rows); from ../shared/data/banking77/SOURCE.md (commit 57ec275d).
FILES: dict[str, str] = {
    "train.csv": "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b",
    "test.csv": "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d",
    "categories.json": "53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63",
}
EXPECTED_ROWS = {"train.csv": 10_003, "test.csv": 3_080}
NUM_LABELS = 77


class DatasetNotFound(FileNotFoundError):
    """The files are not in the given directory and could not be downloaded."""


class ChecksumError(ValueError):
    """A file's SHA-256 is not the published one: it is refused."""


@dataclass(frozen=True)
class Banking77:
    """The three files, parsed: ``train``, ``test`` (lists of :class:`Example`), ``labels``."""

    train: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...]
    source: Path

    def shuffled(self, split: str, seed: int) -> list[Example]:
        """The split in a fixed pseudo-random order (``random.Random(seed)``): seed-indexed
        rollouts then sample the split without bias toward its file order (sorted by label)."""
        rows = list(self.train if split == "train" else self.test)
        random.Random(seed).shuffle(rows)
        return rows

    def as_labelled(self) -> LabelledData:
        """The same data as a generic :class:`~synth_middleware.demos.classify.data.LabelledData`
        (labels in ``categories.json`` order), for the generic classification task."""
        return LabelledData(
            name="banking77",
            train=self.train,
            test=self.test,
            labels=self.labels,
            sources={
                "train": str((self.source / "train.csv").resolve()),
                "test": str((self.source / "test.csv").resolve()),
            },
            digests={"train": FILES["train.csv"], "test": FILES["test.csv"]},
        )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def verify(directory: Path, names: Sequence[str] = tuple(FILES)) -> None:
    """Raise :class:`ChecksumError` unless every file matches its published SHA-256
    (:class:`DatasetNotFound` if one is missing)."""
    for name in names:
        path = directory / name
        if not path.is_file():
            raise DatasetNotFound(f"{path} does not exist")
        got = sha256_file(path)
        if got != FILES[name]:
            raise ChecksumError(
                f"{path}: SHA-256 {got} does not match the published {FILES[name]}; "
                "the file is damaged or not the original Banking77 release. Delete it (or "
                f"point --data-dir/${ENV_DIR} at the original files) and try again."
            )


def cache_dir() -> Path:
    """Where downloads go: ``$SYNTH_CACHE_DIR``, ``$XDG_CACHE_HOME/synth-middleware`` or
    ``~/.cache/synth-middleware``, plus ``banking77``."""
    root = os.environ.get(ENV_CACHE)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (
            str(Path(xdg) / "synth-middleware")
            if xdg
            else str(Path.home() / ".cache" / "synth-middleware")
        )
    return Path(root) / "banking77"


def _progress(total: int | None, desc: str, stream: IO[str]) -> object:
    if not getattr(stream, "isatty", lambda: False)():
        return _PlainProgress(total, desc, stream)  # no carriage returns in captured logs
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=stream, leave=False)
    except ImportError:
        return _PlainProgress(total, desc, stream)


class _PlainProgress:
    """One line when a download starts and one when it ends (logs, or no tqdm)."""

    def __init__(self, total: int | None, desc: str, stream: IO[str]) -> None:
        self.total, self.desc, self.stream, self.n = total, desc, stream, 0
        self.stream.write(f"{self.desc} ...\n")
        self.stream.flush()

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        size = f"{self.n // 1024} KiB"
        self.stream.write(f"{self.desc}: {size} done\n")
        self.stream.flush()


def download(
    directory: Path | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the files missing from ``directory`` (default :func:`cache_dir`),
    verifying each before it is moved into place; return the directory."""
    import httpx

    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    base = (base_url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/") + "/"
    stream = sys.stderr
    for name, digest in FILES.items():
        target = directory / name
        if target.is_file() and sha256_file(target) == digest:
            continue
        url = base + name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with (
                os.fdopen(fd, "wb") as out,
                httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as resp,
            ):
                if resp.status_code != 200:
                    raise DatasetNotFound(f"GET {url} answered {resp.status_code}")
                total = int(resp.headers.get("content-length") or 0) or None
                bar = _progress(total, f"downloading {name}", stream) if progress else None
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                    h.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))  # type: ignore[attr-defined]
                if bar is not None:
                    bar.close()  # type: ignore[attr-defined]
            if h.hexdigest() != digest:
                raise ChecksumError(
                    f"{url}: downloaded SHA-256 {h.hexdigest()} does not match the published "
                    f"{digest}; refusing to use it"
                )
            tmp.replace(target)
        except httpx.HTTPError as exc:
            raise DatasetNotFound(
                f"could not download {url} ({type(exc).__name__}); without network access, "
                f"pass --data-dir or set ${ENV_DIR} to a folder holding {', '.join(FILES)}"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
    return directory


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES)


def resolve_data_dir(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
    progress: bool = True,
) -> Path:
    """The verified directory holding the three files (see the module docstring)."""
    explicit = data_dir or os.environ.get(ENV_DIR)
    if explicit:
        path = Path(explicit).expanduser()
        if not _has_files(path):
            missing = [n for n in FILES if not (path / n).is_file()]
            raise DatasetNotFound(f"{path} is missing {', '.join(missing)}")
        verify(path)
        return path
    cached = cache_dir()
    if _has_files(cached):
        verify(cached)
        return cached
    if not allow_download:
        raise DatasetNotFound(
            f"Banking77 is not in {cached}; pass --data-dir or set ${ENV_DIR} (downloads are off)"
        )
    download(cached, progress=progress)
    verify(cached)
    return cached


def read_csv(path: Path) -> list[Example]:
    """Parse one ``text,category`` CSV (CRLF, quoted fields, embedded newlines).

    Texts are stripped of surrounding whitespace (a few begin with newlines);
    labels are kept verbatim.
    """
    out: list[Example] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["text", "category"]:
            raise ValueError(f"{path}: expected the header 'text,category', got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}: record {lineno} has {len(row)} fields, expected 2")
            text, label = row
            out.append(Example(text.strip(), label))
    return out


def load(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
    progress: bool = True,
) -> Banking77:
    """Locate (or download), verify and parse Banking77."""
    directory = resolve_data_dir(data_dir, allow_download=allow_download, progress=progress)
    labels = json.loads((directory / "categories.json").read_text(encoding="utf-8"))
    if not isinstance(labels, list) or len(labels) != NUM_LABELS:
        raise ValueError(f"{directory / 'categories.json'}: expected a list of {NUM_LABELS} labels")
    train = read_csv(directory / "train.csv")
    test = read_csv(directory / "test.csv")
    known = set(labels)
    for split, rows in (("train", train), ("test", test)):
        unknown = {r.label for r in rows} - known
        if unknown:
            raise ValueError(f"{split} has labels not in categories.json: {sorted(unknown)[:5]}")
    return Banking77(tuple(train), tuple(test), tuple(str(x) for x in labels), directory)
