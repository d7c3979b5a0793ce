"""The stand-in's reflective proposer: GEPA's recipe without an LLM.

It answers the engine's proposer prompts (GEPA reflection, MIPRO instruction
proposal, GEPA merge; see :mod:`synth_middleware.engine.proposer`) the way an
LLM reflecting on failures would, but by a fixed procedure, deterministic
given the prompt (no randomness: the same prompt gets the same answer):

1. **Read the prompt.** The current instruction is the first fenced block;
   the rollouts are the ``# Example N`` blocks with their ``## Input`` (the
   query is extracted as the stand-in model does), ``## Output`` (the label
   the model answered), ``## Reward`` and ``## Expected`` (the label the
   reward's metadata carried). It sees nothing else: what it writes comes from
   the prompt, i.e. from the training rollouts the engine chose, never from a
   test split.
2. **Keep what the parent says.** The parent's label lines (the stand-in's
   reading rule, :mod:`~synth_middleware.demos.standin.reading`, rules 2-3)
   become entries of a label guide; everything else in the parent stays as it
   was, so successive mutations accumulate.
3. **Reflect on failures.** For each rollout whose answer differs from its
   expected label ``E`` (the model said ``P``): the query becomes an example
   of ``E`` (at most :data:`MAX_EXAMPLES` per label); the distinguishing cues
   of ``E`` (content words that recur in two or more of ``E``'s examples and
   that ``P``'s text does not use) become its key words (at most
   :data:`MAX_KEYWORDS`); and ``P`` joins ``E``'s "Not to be confused with"
   list (at most :data:`MAX_CONTRASTS`). A rewarded rollout whose answer is
   right adds its query as an example of its label while the label has fewer
   than half of :data:`MAX_EXAMPLES` (what the label covers, as an LLM
   describing the labels from the examples it was shown would write). Past :data:`MAX_CHARS` characters of instruction no example is
   added (the engine keeps an instruction in 64 KiB of metadata).
4. **Write** the instruction back: the parent's other text, then a
   ``Label guide`` section, one line per label with anything to say::

       - card_arrival: Examples: "my card has not come yet"; "still waiting for my card". Key words: come, waiting. Not to be confused with `card_delivery_estimate`.

   which is exactly the form the stand-in model reads (rule 2). A merge prompt
   unites the guides of its two versions.

With no labelled rollouts there is nothing to reflect on: it returns the
parent instruction unchanged (the optimizers then discard it as a duplicate).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from synth_middleware.demos.standin.parsing import (
    LabelSet,
    extract_query,
    json_label_values,
    label_of,
    label_words,
    normalize_label,
)
from synth_middleware.demos.standin.reading import _label_head

__all__ = [
    "GUIDE_HEADER",
    "MAX_CHARS",
    "MAX_CONTRASTS",
    "MAX_EXAMPLES",
    "MAX_KEYWORDS",
    "Guide",
    "Rollout",
    "parse_rollouts",
    "reflective_answer",
]

GUIDE_HEADER = "Label guide (what each label covers, from reviewed mistakes):"
MAX_EXAMPLES = 8
MAX_KEYWORDS = 8
MAX_CONTRASTS = 4
# The instruction it writes stays under this size (the engine keeps a proposal's instruction
# in its metadata, at most 64 KiB): past it, no new examples are added.
MAX_CHARS = 40_000
_SLACK_CHARS = 2_000
# Rollouts answered right add examples up to half the cap: failures keep room for the
# cases the instruction must fix.
_SUCCESS_EXAMPLES = MAX_EXAMPLES // 2
_FENCE = re.compile(r"```[A-Za-z0-9_+\-]*\n?(.*?)```", re.S)
_EXAMPLE = re.compile(r"(?m)^# Example \d+[ \t]*$")
_SECTION = re.compile(r"(?m)^## (Input|Output|Reward|Expected|Feedback)[ \t]*$")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")
_STOP = frozenset(
    "a an the i im i'm my me we our you your it its it's is are am was were be been being to "
    "of for in on at and or but if so do does did done can can't could would should will "
    "shall may might have has had this that these those there here with from by as what why "
    "when where which who how not no please just about into than then also get got any some "
    "all one much many very need want would like know tell still yet out up there their they "
    "them him her his she he us because been being don't didn't doesn't isn't wasn't hasn't "
    "haven't cannot way thing things make made".split()
)
_EXAMPLES_PART = re.compile(r'(?:^|\s)Examples:\s*((?:"[^"]*"(?:;\s*)?)+)\.?')
_KEYWORDS_PART = re.compile(r"(?:^|\s)Key words:\s*([^.]*)\.")
_CONTRAST_PART = re.compile(r"(?:^|\s)Not to be confused with\s+([^.]*)\.")


@dataclass(slots=True)
class Entry:
    """What the guide says about one label."""

    description: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    contrasts: list[str] = field(default_factory=list)

    def words(self) -> set[str]:
        """The lowercased words this entry already uses."""
        text = " ".join(self.description + self.examples + self.keywords)
        return {w.casefold() for w in _WORD.findall(text)}

    def render(self, label: str) -> str:
        """The entry as one label line (the reading rule's rule 2)."""
        parts = [" ".join(self.description).strip()]
        if self.examples:
            parts.append("Examples: " + "; ".join(f'"{q}"' for q in self.examples) + ".")
        if self.keywords:
            parts.append("Key words: " + ", ".join(self.keywords) + ".")
        if self.contrasts:
            parts.append(
                "Not to be confused with " + ", ".join(f"`{c}`" for c in self.contrasts) + "."
            )
        return f"- {label}: " + " ".join(p for p in parts if p)


@dataclass(slots=True)
class Guide:
    """An instruction as the reflective proposer edits it: free text plus label entries."""

    preamble: str
    entries: dict[str, Entry]

    @classmethod
    def parse(cls, instruction: str, known: LabelSet) -> Guide:
        """Split ``instruction`` into its label lines (with continuation lines) and the rest."""
        entries: dict[str, Entry] = {}
        rest: list[str] = []
        owner: str | None = None
        owner_indent = 0
        for line in instruction.split("\n"):
            if line.strip() == GUIDE_HEADER:
                owner = None
                continue
            head = _label_head(line, known)
            if head is not None:
                owner_indent, owner, text = head
                _parse_entry(text, entries.setdefault(owner, Entry()))
                continue
            indent = len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())
            if owner is not None and line.strip() and indent > owner_indent:
                _parse_entry(line.strip(), entries[owner])
                continue
            owner = None
            rest.append(line)
        preamble = re.sub(r"\n{3,}", "\n\n", "\n".join(rest)).strip()
        return cls(preamble, entries)

    def render(self, order: Sequence[str]) -> str:
        """The instruction text: the preamble, then the guide (labels in ``order``)."""
        rank = {label: i for i, label in enumerate(order)}
        labels = sorted(self.entries, key=lambda x: (rank.get(x, len(rank)), x))
        lines = [self.entries[x].render(x) for x in labels]
        lines = [line for line in lines if not line.endswith(": ")]
        if not lines:
            return self.preamble
        guide = "\n".join([GUIDE_HEADER, *lines])
        return f"{self.preamble}\n\n{guide}" if self.preamble else guide

    def merge(self, other: Guide) -> None:
        """Add ``other``'s entries to this guide's (this guide's text first, no duplicates)."""
        for label, entry in other.entries.items():
            mine = self.entries.setdefault(label, Entry())
            for name in ("description", "examples", "keywords", "contrasts"):
                have: list[str] = getattr(mine, name)
                cap = {"examples": MAX_EXAMPLES, "keywords": MAX_KEYWORDS}.get(name)
                cap = MAX_CONTRASTS if name == "contrasts" else cap
                for item in getattr(entry, name):
                    if item not in have and (cap is None or len(have) < cap):
                        have.append(item)


def _parse_entry(text: str, entry: Entry) -> None:
    """Read one label line's text back into ``entry`` (the format :meth:`Entry.render`
    writes; any other text is kept as description)."""
    m = _EXAMPLES_PART.search(text)
    if m:
        for q in re.findall(r'"([^"]*)"', m.group(1)):
            if q and q not in entry.examples:
                entry.examples.append(q)
        text = text[: m.start()] + " " + text[m.end() :]
    m = _KEYWORDS_PART.search(text)
    if m:
        for w in m.group(1).split(","):
            w = w.strip()
            if w and w not in entry.keywords:
                entry.keywords.append(w)
        text = text[: m.start()] + " " + text[m.end() :]
    m = _CONTRAST_PART.search(text)
    if m:
        for c in m.group(1).split(","):
            c = c.strip().strip("`*\"'")
            if c and c not in entry.contrasts:
                entry.contrasts.append(c)
        text = text[: m.start()] + " " + text[m.end() :]
    text = " ".join(text.split())
    if text and text not in entry.description:
        entry.description.append(text)


@dataclass(frozen=True, slots=True)
class Rollout:
    """One ``# Example`` block of a proposer prompt."""

    query: str
    output: str
    reward: float | None
    expected: str | None


def _sections(block: str) -> dict[str, str]:
    block = block.split("```")[0]
    parts = _SECTION.split(block)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def parse_rollouts(prompt: str) -> list[Rollout]:
    """The rollouts shown in an engine proposer prompt (``# Example N`` blocks)."""
    out: list[Rollout] = []
    for block in _EXAMPLE.split(prompt)[1:]:
        s = _sections(block)
        raw = s.get("Input")
        if not raw:
            continue
        try:
            reward: float | None = float((s.get("Reward") or "").split()[0])
        except (ValueError, IndexError):
            reward = None
        expected = (s.get("Expected") or "").strip().split("\n")[0].strip() or None
        out.append(Rollout(raw, (s.get("Output") or "").strip(), reward, expected))
    return out


def _content_words(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for w in _WORD.findall(text):
        low = w.casefold()
        if len(low) >= 3 and low not in _STOP:
            seen.setdefault(low, None)
    return list(seen)


def _clean_query(query: str) -> str:
    return " ".join(query.replace('"', "'").split())[:300]


def _reflect(guide: Guide, rollouts: Sequence[Rollout], known: LabelSet) -> None:
    top = max((r.reward for r in rollouts if r.reward is not None), default=None)
    # what the examples added below may take (keywords and "not to be confused" lines are
    # short; the slack covers them)
    budget = MAX_CHARS - len(guide.render(known.labels)) - _SLACK_CHARS
    for r in rollouts:
        query = _clean_query(extract_query(r.query, known))
        if not query:
            continue
        expected = known.exact(r.expected) if r.expected else None
        answered = label_of(r.output, known) if r.output else None
        if expected is None:
            if answered is not None and r.reward is not None and r.reward > 0 and r.reward == top:
                expected = answered  # a rewarded answer without an expected label
            else:
                continue
        failed = answered != expected or (
            r.reward is not None and top is not None and r.reward < top
        )
        entry = guide.entries.setdefault(expected, Entry())
        if not failed:
            if (
                len(entry.examples) < _SUCCESS_EXAMPLES
                and query not in entry.examples
                and budget > len(query)
            ):
                entry.examples.append(query)
                budget -= len(query) + 4
            continue
        name_words = set(label_words(expected).casefold().split())
        taken_other: set[str] = set()
        if (
            query not in entry.examples
            and len(entry.examples) < MAX_EXAMPLES
            and budget > len(query)
        ):
            entry.examples.append(query)
            budget -= len(query) + 4
        if answered is not None and answered != expected:
            other = guide.entries.get(answered, Entry())
            taken_other = other.words() | set(label_words(answered).casefold().split())
            if answered not in entry.contrasts and len(entry.contrasts) < MAX_CONTRASTS:
                entry.contrasts.append(answered)
        # distinguishing cues: words that recur across this label's examples (at least two of
        # them) and that the confused label's text does not use
        counts: dict[str, int] = {}
        for example in entry.examples:
            for w in _content_words(example):
                counts[w] = counts.get(w, 0) + 1
        for w, n in counts.items():
            if len(entry.keywords) >= MAX_KEYWORDS:
                break
            if n >= 2 and w not in taken_other and w not in name_words and w not in entry.keywords:
                entry.keywords.append(w)


def _known_labels(labels: Sequence[str] | None, rollouts: Sequence[Rollout]) -> LabelSet:
    names: list[str] = list(labels or [])
    for r in rollouts:
        if r.expected:
            names.append(r.expected)
        names += json_label_values(r.output)
    seen: dict[str, str] = {}
    for n in names:
        seen.setdefault(normalize_label(n), n)
    return LabelSet([n for k, n in seen.items() if k])


def reflective_answer(prompt: str, labels: Sequence[str] | None, *, note: str) -> str:
    """The stand-in proposer's answer to an engine proposer prompt (module doc): one
    line saying what it is (``note``), then the new instruction between triple backticks."""
    fences = [f.strip() for f in _FENCE.findall(prompt)]
    rollouts = parse_rollouts(prompt)
    known = _known_labels(labels, rollouts)
    if "VERSION A" in prompt and "VERSION B" in prompt and len(fences) >= 3:
        first = Guide.parse(fences[1], known)
        first.merge(Guide.parse(fences[2], known))
        body = first.render(known.labels)
        what = "merged the label guides of both versions"
    else:
        parent = fences[0] if fences else ""
        guide = Guide.parse(parent, known)
        before = guide.render(known.labels)
        _reflect(guide, rollouts, known)
        body = guide.render(known.labels)
        if body == before:
            body = parent
        changed = sum(1 for _ in rollouts)
        what = (
            f"reviewed {changed} rollout(s) and wrote label descriptions, examples and "
            "'not to be confused with' notes for the labels that were missed"
            if body != before
            else "found nothing to add (no labelled rollouts), so the instruction is unchanged"
        )
    head = f"Stand-in reflective proposer ({note}): it {what}."
    return f"{head}\n```\n{body}\n```"
