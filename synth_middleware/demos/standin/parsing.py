"""Reading labels, queries and labelled examples out of chat text (no model, no I/O).

Shared by the stand-in model, its reflective proposer and the demo tasks.

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

import re
from collections.abc import Sequence

from synth_middleware.demos._answers import json_string_values

__all__ = [
    "LabelSet",
    "example_blocks",
    "extract_query",
    "json_label_values",
    "label_of",
    "label_words",
    "normalize_label",
    "parse_examples",
]

# A line that introduces the query: up to four words, then one of these nouns, then ":".
# "Query:", "Customer query:", "User message:", "Input text:", "Utterance:", "Question:" ...
_QUERY_NOUNS = (
    "query|question|message|utterance|input|text|request|sentence|prompt|utterance|inquiry|"
    "enquiry|ticket|email|review|comment|post|tweet|statement|document|passage"
)
_QUERY_LINE = re.compile(
    rf"(?im)^[ \t]*(?:[*_#>-]+[ \t]*)?(?:[A-Za-z]+[ \t]+){{0,4}}(?:{_QUERY_NOUNS})[ \t]*[*_]*:[*_]*[ \t]*"
)
_BLOCK = re.compile(r"(?ms)^[ \t]*Input:[ \t]*\n(.*?)\n[ \t]*Output:[ \t]*\n(.*?)(?=\n[ \t]*\n|\Z)")
_LABEL_KEYS = ("intent", "label", "category", "class", "answer")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def normalize_label(text: str) -> str:
    """Casefold and collapse every run of non-alphanumerics to ``_`` (stripped at the ends):
    ``"Reverted card payment?"`` -> ``"reverted_card_payment"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.casefold()).strip("_")


def label_words(label: str) -> str:
    """A label as words: ``"card_arrival"`` -> ``"card arrival"`` (``_``, ``-``, ``.``, ``/``
    and ``:`` become spaces)."""
    return " ".join(re.sub(r"[_\-./:]+", " ", label).split()) or label


class LabelSet:
    """Known labels and their normalised forms (longest first for text search)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(dict.fromkeys(labels))
        self.by_norm = {normalize_label(x): x for x in self.labels}
        self.search = sorted(self.by_norm, key=len, reverse=True)
        self._pattern: re.Pattern[str] | None = None

    def exact(self, text: str) -> str | None:
        """The known label ``text`` spells (after normalisation), or ``None``."""
        return self.by_norm.get(normalize_label(text))

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

    def strip_labels(self, text: str) -> str:
        """``text`` without the known labels' exact spellings (and the commas between them)."""
        if not self.labels:
            return text
        if self._pattern is None:
            alts = "|".join(re.escape(x) for x in sorted(self.labels, key=len, reverse=True))
            self._pattern = re.compile(
                rf"(?<![A-Za-z0-9_])(?:{alts})(?![A-Za-z0-9_])[ \t]*,?", re.I
            )
        return " ".join(self._pattern.sub(" ", text).split())

    def count_in(self, text: str) -> int:
        """How many distinct known labels ``text`` names as whole ``_``-separated phrases
        (used to recognise a list of the labels)."""
        padded = f"_{normalize_label(text)}_"
        return sum(1 for cand in self.search if cand and f"_{cand}_" in padded)


def extract_query(text: str, labels: LabelSet | None = None) -> str:
    """The query part of a user message, whatever its template.

    1. When a line introduces the query (``Query:``, ``Customer query:``, ``User
       message:``, ``Text:``, ``Input:`` ...: up to four words and a query noun,
       then a colon), the text after the **last** such line that has any: the rest
       of that line and the following lines up to a blank line or to the next
       ``Word:`` line.
    2. Else the whole message without the lines that list the choices: a line that
       names three or more of ``labels``, or that is nothing but one label (the
       template's list of choices is not part of the query).
    3. If what is left still names three or more of ``labels`` (a list of choices
       on the query's own line), the label names are cut out of it.
    """
    found = _find_query(text, labels)
    if labels is not None and labels.count_in(found) >= 3:
        found = labels.strip_labels(found) or found
    return found


def _find_query(text: str, labels: LabelSet | None) -> str:
    matches = list(_QUERY_LINE.finditer(text))
    for m in reversed(matches):
        rest = text[m.end() :]
        end = _PARAGRAPH.search(rest)
        body = rest[: end.start()] if end else rest
        lines = body.split("\n")
        kept = [lines[0]]
        for line in lines[1:]:
            if re.match(r"[ \t]*[A-Za-z][A-Za-z ]{0,30}:", line):
                break
            kept.append(line)
        found = "\n".join(kept).strip()
        if found:
            return found
    if labels is None:
        return text.strip()
    kept_lines = [
        line
        for line in text.split("\n")
        if labels.count_in(line) < 3 and labels.exact(line.strip(" \t-*+•")) is None
    ]
    return "\n".join(kept_lines).strip() or text.strip()


def label_of(output: str, labels: Sequence[str] | LabelSet) -> str | None:
    """The known label an answer names: a JSON object's ``intent``/``label``/... value
    (or any string value), else the text itself, else a label named inside the text."""
    known = labels if isinstance(labels, LabelSet) else LabelSet(labels)
    values = json_string_values(output, _LABEL_KEYS)
    if values is not None:
        for value in values:
            hit = known.match(value)
            if hit is not None:
                return hit
        return None
    return known.match(output.strip())


def json_label_values(output: str) -> list[str]:
    """The string values of a JSON object answer (``{"intent": "x"}`` -> ``["x"]``)."""
    return json_string_values(output, _LABEL_KEYS) or []


def example_blocks(text: str) -> list[tuple[str, str]]:
    """The raw ``(input, output)`` texts of the ``Input:``/``Output:`` blocks in ``text``."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def parse_examples(text: str, labels: Sequence[str] | LabelSet) -> list[tuple[str, str]]:
    """``(query, label)`` pairs from the ``Input:``/``Output:`` blocks in ``text`` (blocks
    whose output names no known label are skipped)."""
    known = labels if isinstance(labels, LabelSet) else LabelSet(labels)
    out: list[tuple[str, str]] = []
    for raw_input, raw_output in example_blocks(text):
        query = extract_query(raw_input, known)
        label = label_of(raw_output, known)
        if query and label is not None:
            out.append((query, label))
    return out
