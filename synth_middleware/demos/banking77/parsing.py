"""Reading Banking77 answers and labelled examples (shared by the task and the stand-in).

One format for labelled examples, the one the MIPRO optimizer's few-shot
rendering writes (``synth_middleware.engine.optimizers.mipro.render_candidate``,
``demo_format="text"``)::

    Example 1:
    Input:
    Customer query: My card still hasn't arrived

    Available intents: ...
    Output:
    {"intent": "card_arrival"}

An example's text is the query part of its input (:func:`extract_query`); its
label is read from the output (:func:`label_of`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

__all__ = [
    "LabelSet",
    "example_blocks",
    "extract_query",
    "label_of",
    "normalize_label",
    "parse_examples",
]

_QUERY_LINE = re.compile(r"(?im)^[ \t]*(?:customer[ \t]+)?query[ \t]*:[ \t]*")
_BLOCK = re.compile(r"(?ms)^[ \t]*Input:[ \t]*\n(.*?)\n[ \t]*Output:[ \t]*\n(.*?)(?=\n[ \t]*\n|\Z)")
_LABEL_KEYS = ("intent", "label", "category", "class", "answer")


def normalize_label(text: str) -> str:
    """Casefold and collapse every run of non-alphanumerics to ``_`` (stripped at the ends):
    ``"Reverted card payment?"`` -> ``"reverted_card_payment"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.casefold()).strip("_")


def extract_query(text: str) -> str:
    """The query part of a user message: after a ``Query:`` line (up to a blank line),
    else the whole text."""
    m = _QUERY_LINE.search(text)
    if m is None:
        return text.strip()
    rest = text[m.end() :]
    end = re.search(r"\n[ \t]*\n", rest)
    return (rest[: end.start()] if end else rest).strip()


class LabelSet:
    """Known labels and their normalised forms (longest first for text search)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.by_norm = {normalize_label(x): x for x in self.labels}
        self.search = sorted(self.by_norm, key=len, reverse=True)

    def match(self, text: str) -> str | None:
        """The known label ``text`` is, or names as a whole ``_``-separated phrase."""
        norm = normalize_label(text)
        if norm in self.by_norm:
            return self.by_norm[norm]
        padded = f"_{norm}_"
        for cand in self.search:
            if cand and f"_{cand}_" in padded:
                return self.by_norm[cand]
        return None


def label_of(output: str, labels: Sequence[str] | LabelSet) -> str | None:
    """The known label an answer names: a JSON object's ``intent``/``label``/... value
    (or any string value), else the text itself, else a label named inside the text."""
    known = labels if isinstance(labels, LabelSet) else LabelSet(labels)
    text = output.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            values = [data[k] for k in _LABEL_KEYS if isinstance(data.get(k), str)]
            values += [v for v in data.values() if isinstance(v, str)]
            for value in values:
                hit = known.match(value)
                if hit is not None:
                    return hit
            return None
    return known.match(text)


def example_blocks(text: str) -> list[tuple[str, str]]:
    """The raw ``(input, output)`` texts of the ``Input:``/``Output:`` blocks in ``text``."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def parse_examples(text: str, labels: Sequence[str] | LabelSet) -> list[tuple[str, str]]:
    """``(query, label)`` pairs from the ``Input:``/``Output:`` blocks in ``text`` (blocks
    whose output names no known label are skipped)."""
    known = labels if isinstance(labels, LabelSet) else LabelSet(labels)
    out: list[tuple[str, str]] = []
    for raw_input, raw_output in example_blocks(text):
        query = extract_query(raw_input)
        label = label_of(raw_output, known)
        if query and label is not None:
            out.append((query, label))
    return out
