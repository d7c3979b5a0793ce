"""The stand-in's reading rule: which text of a prompt it attributes to which label.

Fixed and generic over label sets (nothing here knows a dataset). The known
labels are the request's tool enum (or the server's default labels). The rule
reads the system/developer messages of a request and the labelled examples
in it, and builds one **document per label**:

    the label as words (``card_arrival`` -> "card arrival")
    + every piece of instruction text attributed to the label, in prompt order
    + the query text of every labelled example of the label

Attribution, in order:

1. **Labelled examples.** ``Input:``/``Output:`` blocks (what MIPRO's few-shot
   rendering writes) and earlier user/assistant turns: the example's query
   (:func:`~synth_middleware.demos.standin.parsing.extract_query`) goes to the
   label its output names. The blocks are then removed from the text.
2. **Label lines.** A line that starts (after an optional bullet ``-``, ``*``,
   ``+``, ``•``, a number ``1.``/``1)`` or a markdown ``#``, and optional ``**``,
   quotes or backticks) with a known label, written as is or in words and in
   any case, followed by a separator (``:``, a dash between spaces (hyphen, en or em dash), ``=``,
   ``(``): the text after the separator goes to that label, and so do the next
   lines that are indented deeper (nested bullets, continuation lines).
3. **Label headings.** A line that is nothing but a known label (with the same
   optional bullet/markup and a trailing ``:``): the lines after it go to that
   label, up to a blank line, the next label line or heading, or a markdown
   heading (blank lines right after the heading are skipped).
4. **Mentions in prose.** Every other sentence is read for mentions of known
   labels: a label spelled exactly (case-insensitive, as a whole word) when it
   has two or more words (``card_arrival``, ``play music``), and any label in
   quotes, backticks or ``**bold**`` (``"yes"``; a one-word label written bare
   is an ordinary word, not a mention), and any label written right after a
   contrast phrase (rule 5: "not to be confused with yes"). A sentence that mentions no label is
   attributed to nobody. Otherwise the text before the first mention goes to
   the first label mentioned and the text after each mention, up to the next
   mention, to that label.
5. **Other labels inside attributed text** (rules 2-3) split it the same way:
   in ``card_arrival: the card has not come. Not to be confused with
   card_delivery_estimate: asking how long delivery takes`` the first part goes
   to ``card_arrival`` and "asking how long delivery takes" to
   ``card_delivery_estimate``. A contrast phrase right before a mention ("not to
   be confused with", "do not confuse it with", "unlike", "as opposed to",
   "rather than", "different from", "distinct from", "not the same as", "see
   also", "vs") is dropped, so it is attributed to nobody.

What it does not do, honestly: text that mentions no label (a persona, tips,
the output format, "think step by step") changes nothing; negation is not
understood except in the contrast form of rule 5 (``card_arrival is not about
delivery times`` adds "delivery times" to ``card_arrival``'s document).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from synth_middleware.demos.standin.parsing import (
    LabelSet,
    label_words,
    normalize_label,
    parse_examples,
)

__all__ = ["PromptReading", "label_mentions", "read_instruction", "read_prompt"]

_BLOCK_SPAN = re.compile(
    r"(?ms)^[ \t]*Input:[ \t]*\n.*?\n[ \t]*Output:[ \t]*\n.*?(?=\n[ \t]*\n|\Z)"
)
_BULLET = re.compile(r"^([ \t]*)((?:[-*+\u2022]|\d{1,3}[.)]|#{1,6})[ \t]+)?(.*)$")
_MARKUP = "*_`\"' \t"
_SEPARATORS = re.compile(r"[ \t]*(?::|=|\(|[ \t]+[-\u2013\u2014][ \t]+)[ \t]*")
_MD_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]")
_SENTENCE = re.compile(r"(?<=[.!?])[ \t]+(?=\S)|\n")
_CONTRAST_WORDS = (
    r"(?:\b(?:not\s+to\s+be\s+confused\s+with|do\s+not\s+confuse(?:\s+\w+)?\s+with|"
    r"don'?t\s+confuse(?:\s+\w+)?\s+with|not\s+the\s+same\s+as|unlike|as\s+opposed\s+to|"
    r"rather\s+than|different\s+from|distinct\s+from|see\s+also|vs\.?|versus))"
)
_CONTRAST = re.compile(rf"(?i){_CONTRAST_WORDS}[\s:,;\-\u2013\u2014(\"'`*]*$")
_EDGE = " \t\n:;,.-\u2013\u2014()[]\"'`*"


@dataclass(slots=True)
class PromptReading:
    """What the stand-in read from a prompt: text per label and labelled examples."""

    labels: tuple[str, ...]
    texts: dict[str, list[str]] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def document(self, label: str) -> str:
        """The text the stand-in compares a query with for ``label`` (see the module doc)."""
        parts = [label_words(label)]
        parts += self.texts.get(label, [])
        parts += [q for q, lab in self.examples if lab == label]
        return ". ".join(p.strip() for p in parts if p.strip())

    def documents(self) -> tuple[str, ...]:
        """One document per label, in label order."""
        return tuple(self.document(x) for x in self.labels)

    def add(self, label: str, text: str) -> None:
        """Attribute ``text`` to ``label``."""
        text = text.strip(_EDGE)
        if text and re.search(r"[^\W_]", text):
            self.texts.setdefault(label, []).append(" ".join(text.split()))


class _Mentions:
    """A regex that finds the mentions of known labels in prose (rule 4)."""

    def __init__(self, known: LabelSet) -> None:
        self.known = known
        bare: set[str] = set()
        quoted: set[str] = set()
        for label in known.labels:
            words = label_words(label)
            if len(words.split()) >= 2:
                bare.add(label)
            quoted.update({label, words})
        alts = []
        if bare:
            b = "|".join(re.escape(x) for x in sorted(bare, key=len, reverse=True))
            alts.append(rf"(?<![A-Za-z0-9_])(?:{b})(?![A-Za-z0-9_])")
        if quoted:
            q = "|".join(re.escape(x) for x in sorted(quoted, key=len, reverse=True))
            alts.append(rf"(?:\*\*|[\"'`])(?:{q})(?:\*\*|[\"'`])")
        self.regex = re.compile("|".join(alts), re.I) if alts else None
        self.after_contrast = None
        if quoted:
            q = "|".join(re.escape(x) for x in sorted(quoted, key=len, reverse=True))
            self.after_contrast = re.compile(
                rf"{_CONTRAST_WORDS}[\s:,;(\"'`*]*({q})(?![A-Za-z0-9_])", re.I
            )

    def find(self, text: str) -> list[tuple[int, int, str]]:
        found: dict[int, tuple[int, int, str]] = {}
        if self.after_contrast is not None:
            for m in self.after_contrast.finditer(text):
                label = self.known.exact(m.group(1))
                if label is not None:
                    found[m.start(1)] = (m.start(1), m.end(1), label)
        if self.regex is not None:
            for m in self.regex.finditer(text):
                label = self.known.exact(m.group(0).strip(_MARKUP))
                if label is not None:
                    found.setdefault(m.start(), (m.start(), m.end(), label))
        out: list[tuple[int, int, str]] = []
        for start, end, label in sorted(found.values()):
            if not out or start >= out[-1][1]:
                out.append((start, end, label))
        return out


_MENTIONS: dict[tuple[str, ...], _Mentions] = {}
_MENTIONS_LOCK = threading.Lock()


def _mentions_for(known: LabelSet) -> _Mentions:
    with _MENTIONS_LOCK:
        found = _MENTIONS.get(known.labels)
        if found is None:
            if len(_MENTIONS) > 64:
                _MENTIONS.clear()
            found = _Mentions(known)
            _MENTIONS[known.labels] = found
        return found


def label_mentions(text: str, known: LabelSet) -> list[str]:
    """The known labels ``text`` mentions in prose (rule 4), in order of appearance."""
    return [label for _, _, label in _mentions_for(known).find(text)]


def _attribute(text: str, owner: str | None, mentions: _Mentions, out: PromptReading) -> None:
    """Rules 4-5: split ``text`` at label mentions and attribute the pieces."""
    found = mentions.find(text)
    if not found:
        if owner is not None:
            out.add(owner, text)
        return
    pieces: list[tuple[str, str]] = []
    first_owner = owner if owner is not None else found[0][2]
    pieces.append((first_owner, text[: found[0][0]]))
    for i, (_, end, label) in enumerate(found):
        stop = found[i + 1][0] if i + 1 < len(found) else len(text)
        pieces.append((label, text[end:stop]))
    for label, piece in pieces:
        out.add(label, _CONTRAST.sub("", piece.rstrip(_EDGE)))


def _label_head(line: str, known: LabelSet) -> tuple[int, str, str] | None:
    """``(indent, label, rest)`` when ``line`` is a label line or heading (rules 2-3)."""
    m = _BULLET.match(line)
    if m is None:
        return None
    indent = len(m.group(1).expandtabs(4))
    body = m.group(3)
    whole = body.strip().rstrip(":").strip(_MARKUP)
    if whole and known.exact(whole) is not None and len(whole) <= 120:
        label = known.exact(whole)
        assert label is not None
        return indent, label, ""
    for sep in _SEPARATORS.finditer(body):
        head = body[: sep.start()].strip(_MARKUP)
        if not head or len(head) > 120:
            break
        label = known.exact(head)
        if label is not None:
            rest = body[sep.end() :].lstrip(_MARKUP)
            return indent, label, rest
    return None


def read_instruction(text: str, known: LabelSet, out: PromptReading | None = None) -> PromptReading:
    """Apply the reading rule (module doc) to one instruction text."""
    out = out if out is not None else PromptReading(known.labels)
    out.examples += parse_examples(text, known)
    text = _BLOCK_SPAN.sub("\n", text)
    mentions = _mentions_for(known)
    owner: str | None = None
    owner_indent = 0
    heading = False
    heading_has_text = False
    prose: list[str] = []

    def flush_prose() -> None:
        if prose:
            for sentence in _SENTENCE.split("\n".join(prose)):
                _attribute(sentence, None, mentions, out)
            prose.clear()

    for line in text.split("\n"):
        if not line.strip():
            if heading and not heading_has_text:
                continue
            owner, heading = None, False
            flush_prose()
            continue
        head = _label_head(line, known)
        if head is not None:
            flush_prose()
            owner_indent, owner, rest = head
            heading = not rest.strip()
            heading_has_text = False
            if rest.strip():
                for sentence in _SENTENCE.split(rest):
                    _attribute(sentence, owner, mentions, out)
            continue
        if _MD_HEADING.match(line):
            owner, heading = None, False
        elif owner is not None:
            indent = len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())
            if heading or indent > owner_indent:
                heading_has_text = True
                for sentence in _SENTENCE.split(line.strip()):
                    _attribute(sentence, owner, mentions, out)
                continue
            owner, heading = None, False
        prose.append(line)
    flush_prose()
    return out


def read_prompt(
    instructions: Sequence[str],
    labels: Sequence[str] | LabelSet,
    examples: Sequence[tuple[str, str]] = (),
) -> PromptReading:
    """Read every instruction text (system/developer messages) and add the labelled
    examples found elsewhere (conversation turns)."""
    known = labels if isinstance(labels, LabelSet) else LabelSet(labels)
    out = PromptReading(known.labels)
    for text in instructions:
        read_instruction(text, known, out)
    out.examples += [(q, lab) for q, lab in examples if normalize_label(lab) in known.by_norm]
    return out
