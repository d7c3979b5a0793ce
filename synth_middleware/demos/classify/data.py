"""Labelled text data from any CSV or JSONL file: ``text,label`` rows, checked.

Formats (chosen by the file's extension: ``.jsonl``/``.ndjson``/``.json`` are
JSON, ``.tsv`` is tab-separated, anything else is CSV):

* **CSV** (or **TSV**) with a header row; the text and label columns are named by
  ``text_col``/``label_col`` (default ``text`` and ``label``; when the label
  column is not given and there is no ``label`` column, ``category``,
  ``intent`` or ``class`` is used if present). Standard quoting, embedded
  newlines, CRLF or LF; other columns are ignored.
* **JSONL**: one JSON object per line (blank lines skipped) with the same
  two keys; a ``.json`` file may also hold one JSON array of such objects.

Texts are stripped of surrounding whitespace; labels are kept verbatim (any
string: spaces, punctuation, ``yes``/``no``; numbers are turned into strings).
Every problem raises :class:`DataError` (a ``ValueError``) with a one-line
message naming the file and, for a bad row, its line number: a missing
file, an unknown column, an empty file, an empty text or label, a single
label, test labels that the training file never shows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataError",
    "Example",
    "LabelledData",
    "load_labelled",
    "read_examples",
]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
LABEL_FALLBACKS = ("category", "intent", "class")


class DataError(ValueError):
    """A data file is missing, unreadable or malformed (the message says where)."""


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text."""

    text: str
    label: str


@dataclass(frozen=True)
class LabelledData:
    """A classification dataset: ``train`` and ``test`` examples and the label set.

    ``labels`` are in first-appearance order of the training file (or the order
    given to :func:`load_labelled`); ``name`` names the dataset in outputs;
    ``sources`` maps ``train``/``test`` to the files read and ``digests`` to their
    SHA-256.
    """

    name: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...]
    sources: dict[str, str]
    digests: dict[str, str]

    def shuffled(self, split: str, seed: int) -> list[Example]:
        """The split in a fixed pseudo-random order (``random.Random(seed)``), so seed-indexed
        rollouts sample it uniformly whatever the file's order (often sorted by label)."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
        rows = list(self.train if split == "train" else self.test)
        random.Random(seed).shuffle(rows)
        return rows


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _cell(value: object, what: str, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise DataError(f"{where}: {what} must be a string, got {json.dumps(value)[:60]}")
    return str(value)


def _pick_label_col(columns: Sequence[str], label_col: str | None) -> str:
    if label_col is not None:
        return label_col
    if "label" in columns:
        return "label"
    for name in LABEL_FALLBACKS:
        if name in columns:
            return name
    return "label"


def _check_columns(
    columns: Sequence[str], text_col: str, label_col: str, path: Path, line: int
) -> None:
    for what, col in (("text", text_col), ("label", label_col)):
        if col not in columns:
            shown = ", ".join(repr(c) for c in list(columns)[:10]) or "none"
            raise DataError(
                f"{path}:{line}: no {what} column {col!r} (columns: {shown}); "
                f"pass --{what}-col NAME"
            )


def _read_csv(path: Path, text_col: str, label_col: str | None) -> list[Example]:
    out: list[Example] = []
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"{path}:1: not valid CSV ({exc})") from None
        if header is None or not any(h.strip() for h in header):
            raise DataError(f"{path}: the file is empty (expected a header row and data rows)")
        columns = [h.strip() for h in header]
        label_col = _pick_label_col(columns, label_col)
        _check_columns(columns, text_col, label_col, path, 1)
        ti, li = columns.index(text_col), columns.index(label_col)
        line = reader.line_num
        try:
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) != len(columns):
                    raise DataError(
                        f"{path}:{start}: {len(row)} fields, expected {len(columns)} "
                        f"({', '.join(columns)})"
                    )
                out.append(_example(row[ti], row[li], f"{path}:{start}"))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return out


def _example(text: str, label: str, where: str) -> Example:
    text, label = text.strip(), label.strip()
    if not text:
        raise DataError(f"{where}: the text is empty")
    if not label:
        raise DataError(f"{where}: the label is empty")
    return Example(text, label)


def _from_object(obj: object, text_col: str, label_col: str | None, path: Path, n: int) -> Example:
    where = f"{path}:{n}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    col = _pick_label_col(list(obj), label_col)
    _check_columns(list(obj), text_col, col, path, n)
    return _example(
        _cell(obj[text_col], "the text", where), _cell(obj[col], "the label", where), where
    )


def _read_jsonl(path: Path, text_col: str, label_col: str | None) -> list[Example]:
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):  # one JSON array of objects (items numbered from 1)
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.args[0]})") from None
        out = []
        for i, obj in enumerate(items, start=1):
            try:
                out.append(_from_object(obj, text_col, label_col, path, i))
            except DataError as exc:
                raise DataError(str(exc).replace(f"{path}:{i}:", f"{path}: item {i}:", 1)) from None
        return out
    out = []
    for lineno, raw in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 in text
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.args[0]})") from None
        out.append(_from_object(obj, text_col, label_col, path, lineno))
    return out


def read_examples(
    path: str | os.PathLike[str], *, text_col: str = "text", label_col: str | None = None
) -> list[Example]:
    """The examples of one CSV or JSONL file (see the module docstring); raises
    :class:`DataError` for a missing, empty or malformed file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a file")
    try:
        if p.suffix.lower() in JSONL_SUFFIXES:
            rows = _read_jsonl(p, text_col, label_col)
        else:
            rows = _read_csv(p, text_col, label_col)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise DataError(f"{p}: no data rows")
    return rows


def load_labelled(
    train: str | os.PathLike[str],
    test: str | os.PathLike[str],
    *,
    text_col: str = "text",
    label_col: str | None = None,
    name: str | None = None,
    labels: Sequence[str] | None = None,
) -> LabelledData:
    """Read and check a train file and a test file.

    ``labels``: the label set in a fixed order (default: first appearance in
    ``train``); every label of both files must be in it. Needs at least two
    labels in ``train``, and every test label must occur in ``train``.
    ``name`` defaults to the training file's folder name.
    """
    train_p, test_p = Path(train).expanduser(), Path(test).expanduser()
    tr = read_examples(train_p, text_col=text_col, label_col=label_col)
    te = read_examples(test_p, text_col=text_col, label_col=label_col)
    seen = list(dict.fromkeys(e.label for e in tr))
    if labels is not None:
        order = [str(x) for x in labels]
        if len(set(order)) != len(order):
            raise DataError("the label list has duplicates")
        unknown = [x for x in seen if x not in set(order)]
        if unknown:
            raise DataError(f"{train_p}: labels not in the label list: {_few(unknown)}")
    else:
        order = seen
    if len(set(seen)) < 2:
        raise DataError(
            f"{train_p}: only one label ({seen[0]!r}); classification needs at least two"
        )
    missing = list(dict.fromkeys(e.label for e in te if e.label not in set(seen)))
    if missing:
        raise DataError(
            f"{test_p}: {len(missing)} label(s) never seen in {train_p.name}: {_few(missing)}"
        )
    return LabelledData(
        name=name or train_p.resolve().parent.name or "data",
        train=tuple(tr),
        test=tuple(te),
        labels=tuple(order),
        sources={"train": str(train_p.resolve()), "test": str(test_p.resolve())},
        digests={"train": _sha256(train_p), "test": _sha256(test_p)},
    )


def _few(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")
