"""Prompt candidates: parse them once per refresh, apply them on every call.

A candidate arrives as a wire item (``GET /api/v1/systems/{id}/candidates``)::

    cand = parse_candidate(item)          # per refresh; raises CandidateError
    new_messages = cand.apply(messages)   # per call; pure, about 1 us for text

``apply`` never mutates its input. It returns ``None`` when a structured
candidate does not fit the messages (a pattern that does not match, a
transformation that changes nothing); the caller then sends the app's own
messages untouched.

Shapes understood (see reference/synth-wire-api.md, "Candidates"):

* plain text, read in order from ``candidate_content``, ``candidate_code``,
  ``prompt_text``, ``instruction``, ``text``, then the same keys inside
  ``artifact_payload`` (which may also be the text itself);
* ``transformation``: ``text_replacements`` and ``example_injections``;
* ``pattern``: ``messages`` with ``{placeholder}`` wildcards;
* ``template`` (legacy): ``sections``, handled like a pattern.

Structured payloads carry ``object`` or ``payload_kind`` and may sit under a
``data`` (or ``object``) key, in ``artifact_payload``, in ``candidate_content``
(a dict or a JSON string of one) or in the item itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from synth_middleware.errors import CandidateError

__all__ = [
    "Candidate",
    "extract_prompt_text",
    "parse_candidate",
    "system_text",
]

KINDS = ("text", "transformation", "pattern", "template")
_STRUCTURED_KINDS = frozenset(KINDS[1:])
# Plain-text keys, in the order the wire reference gives.
_TEXT_KEYS = ("candidate_content", "candidate_code", "prompt_text", "instruction", "text")
_NESTED_TEXT_KEYS = (*_TEXT_KEYS, "content")
# Where each structured kind keeps its body, primary key first.
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "transformation": ("text_replacements", "example_injections"),
    "pattern": ("messages", "sections", "prompt_sections"),
    "template": ("sections", "prompt_sections", "messages"),
}
# Unmarked bodies are recognised by these list-valued fields (only when no text is found).
_INFER_FIELDS = (
    ("transformation", ("text_replacements", "example_injections")),
    ("pattern", ("messages",)),
    ("template", ("sections", "prompt_sections")),
)
_TEXT_PART_TYPES = ("text", "input_text")
_ALL_ROLES = ("all", "*", "any")
# `{{` / `}}` are literal braces; `{name}` is a placeholder; any other brace is literal text
# (system prompts often contain JSON examples, which must not break parsing).
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_NESTING = 4


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class _Template:
    """One pattern string, compiled at parse time so apply does no regex building."""

    source: str
    parts: tuple[tuple[str, bool], ...]  # (literal text | field name, is_field)
    fields: tuple[str, ...]  # distinct placeholder names, first-seen order
    regex: re.Pattern[str]
    literal: str | None  # the rendered text when there are no placeholders

    def match(self, text: str, values: dict[str, str]) -> bool:
        """Extract placeholder values from ``text`` into ``values``; False on any mismatch."""
        m = self.regex.fullmatch(text)
        if m is None:
            return False
        for key, val in m.groupdict().items():
            old = values.setdefault(key, val)
            if old != val:  # the same placeholder must mean the same text everywhere
                return False
        return True

    def render(self, values: Mapping[str, str]) -> str | None:
        """The text with placeholders filled in, or None if a value is missing."""
        if self.literal is not None:
            return self.literal
        out: list[str] = []
        for piece, is_field in self.parts:
            if is_field:
                val = values.get(piece)
                if val is None:
                    return None
                out.append(val)
            else:
                out.append(piece)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class _PatternMessage:
    role: str
    template: _Template
    name: str | None  # the section's label in the payload; not sent to the model


@dataclass(frozen=True, slots=True)
class _Pattern:
    messages: tuple[_PatternMessage, ...]  # sorted by `order`
    system: _PatternMessage | None  # first system/developer message
    rest: tuple[_PatternMessage, ...]  # every other message, in order


@dataclass(frozen=True, slots=True)
class _Replacement:
    old_text: str
    new_text: str
    apply_to_role: str


@dataclass(frozen=True, slots=True)
class _Injection:
    # Each example is stored as a tuple of (key, value) pairs so the payload stays hashable.
    examples: tuple[tuple[tuple[str, str], ...], ...]
    insert_after_role: str


@dataclass(frozen=True, slots=True)
class _Transformation:
    replacements: tuple[_Replacement, ...]
    injections: tuple[_Injection, ...]


# --------------------------------------------------------------------------- Candidate


@dataclass(frozen=True, slots=True)
class Candidate:
    """A parsed prompt candidate, ready to apply to outgoing chat messages.

    Build it with :func:`parse_candidate`. ``text`` is the system prompt the
    candidate sets when it has one (plain text, or a pattern's fixed system
    message); ``payload`` holds the precompiled structured form (private).
    """

    candidate_id: str
    kind: str  # "text" | "transformation" | "pattern" | "template"
    text: str | None
    is_baseline: bool = False
    payload: Any = None

    def __post_init__(self) -> None:
        # Cheap guard so a hand-built Candidate cannot reach the hot path in a bad shape.
        if not isinstance(self.candidate_id, str) or not self.candidate_id:
            raise CandidateError("candidate_id must be a non-empty string")
        if self.kind == "text":
            if not isinstance(self.text, str):
                raise CandidateError(f"candidate {self.candidate_id!r}: text must be a string")
        elif self.kind == "transformation":
            if not isinstance(self.payload, _Transformation):
                raise CandidateError(
                    f"candidate {self.candidate_id!r}: build transformation candidates "
                    "with parse_candidate()"
                )
        elif self.kind in ("pattern", "template"):
            if not isinstance(self.payload, _Pattern):
                raise CandidateError(
                    f"candidate {self.candidate_id!r}: build {self.kind} candidates "
                    "with parse_candidate()"
                )
        else:
            raise CandidateError(
                f"candidate {self.candidate_id!r}: unknown kind {self.kind!r} "
                f"(expected one of {', '.join(KINDS)})"
            )

    def apply(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        baseline: Candidate | None = None,
    ) -> list[dict[str, Any]] | None:
        """Return a new message list with this candidate applied, or None if it does not fit.

        Text: the first ``system``/``developer`` message gets the candidate text
        as its content (role kept), or ``{"role": "system", ...}`` is inserted
        first. Transformation: replacements then example injections; None if
        nothing changed. Pattern/template: the non-system messages are matched
        against ``baseline``'s pattern when ``baseline`` is a pattern candidate
        (else this candidate's own), and this candidate's messages are rendered
        with the extracted values; None if they do not match.

        The input list and its dicts are never mutated; unchanged message
        objects are reused in the result.
        """
        if self.kind == "text":
            return _apply_text(messages, self.text)  # type: ignore[arg-type]
        if self.kind == "transformation":
            return _apply_transformation(messages, self.payload)
        base = baseline.payload if baseline is not None else None
        return _apply_pattern(messages, self.payload, base if isinstance(base, _Pattern) else None)

    def instructions(self) -> str | None:
        """The system text for the Responses API ``instructions`` field.

        None when the candidate has no single fixed system text (transformations,
        patterns without a system message or with placeholders in it).
        """
        if self.kind == "text":
            return self.text
        if isinstance(self.payload, _Pattern) and self.payload.system is not None:
            return self.payload.system.template.literal
        return None


# --------------------------------------------------------------------------- public helpers


def parse_candidate(item: Mapping[str, Any]) -> Candidate:
    """Parse one wire candidate item into a :class:`Candidate`.

    Structured payloads win over plain text when both are present. Raises
    :class:`CandidateError` naming the candidate and the problem when the item
    is malformed (no id, no text, wrong types, empty pattern, ...).
    """
    if not isinstance(item, Mapping):
        raise CandidateError(f"candidate must be a JSON object, got {type(item).__name__}")
    cid = item.get("candidate_id")
    if not isinstance(cid, str) or not cid.strip():
        raise CandidateError(f"candidate is missing a non-empty string candidate_id (got {cid!r})")
    kind, text, payload = _parse(item, cid)
    return Candidate(
        candidate_id=cid,
        kind=kind,
        text=text,
        is_baseline=_as_bool(item.get("is_baseline")),
        payload=payload,
    )


def extract_prompt_text(item: Mapping[str, Any]) -> str | None:
    """The system prompt text a wire candidate item carries, or None.

    Same rules as :func:`parse_candidate` (a pattern yields its system message
    text, a transformation yields None) but never raises: a malformed item or
    one without a ``candidate_id`` simply yields what can be read, or None.
    """
    if not isinstance(item, Mapping):
        return None
    cid = item.get("candidate_id")
    try:
        return _parse(item, cid if isinstance(cid, str) else "<unknown>")[1]
    except CandidateError:
        return None


def system_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The text of the first ``system``/``developer`` message, or None if there is none.

    List content (``[{"type": "text", "text": ...}]``) is joined with ``""``;
    non-text parts are skipped; missing content gives ``""``.
    """
    for m in messages:
        role = _role(m)
        if role == "system" or role == "developer":
            content = m.get("content") if isinstance(m, Mapping) else getattr(m, "content", None)
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(_part_texts(content))
            return ""
    return None


# --------------------------------------------------------------------------- apply


def _apply_text(messages: Sequence[Mapping[str, Any]], text: str) -> list[dict[str, Any]]:
    # Hot path: one shallow list copy, one dict copy, no regex, no helper calls for dicts.
    out: list[Any] = list(messages)
    i = 0
    for m in out:
        if type(m) is dict:
            role = m.get("role")
            if role == "system" or role == "developer":
                new = m.copy()
                new["content"] = text
                out[i] = new
                return out
        else:
            role = _role(m)
            if role == "system" or role == "developer":
                out[i] = _with_content(m, text)
                return out
        i += 1
    out.insert(0, {"role": "system", "content": text})
    return out


def _apply_transformation(
    messages: Sequence[Mapping[str, Any]], tf: _Transformation
) -> list[dict[str, Any]] | None:
    out: list[Any] = list(messages)
    changed = False
    for rep in tf.replacements:
        for i, m in enumerate(out):
            if not isinstance(m, Mapping) or not _role_matches(m.get("role"), rep.apply_to_role):
                continue
            content = _replace_in_content(m.get("content"), rep.old_text, rep.new_text)
            if content is not None:
                new = dict(m)
                new["content"] = content
                out[i] = new
                changed = True
    for inj in tf.injections:
        pos = 0  # no message with that role: examples go first
        for i, m in enumerate(out):
            if _role_matches(_role(m), inj.insert_after_role):
                pos = i + 1
                break
        out[pos:pos] = [dict(example) for example in inj.examples]
        changed = True
    # Nothing changed means the candidate does not fit these messages: let the caller
    # serve them untouched rather than credit the candidate for the baseline's output.
    return out if changed else None


def _apply_pattern(
    messages: Sequence[Mapping[str, Any]], pat: _Pattern, baseline: _Pattern | None
) -> list[dict[str, Any]] | None:
    cand_sys = pat.system
    if not pat.rest and cand_sys is not None and cand_sys.template.literal is not None:
        return _apply_text(messages, cand_sys.template.literal)  # a system-only pattern is text

    # Match against the baseline's pattern when it says anything about the messages,
    # because the app sends baseline-shaped messages, not candidate-shaped ones.
    ref = pat
    if baseline is not None and (
        baseline.rest or (baseline.system is not None and baseline.system.template.fields)
    ):
        ref = baseline

    msgs: list[Any] = list(messages)
    sys_i: int | None = None
    for i, m in enumerate(msgs):
        role = _role(m)
        if role == "system" or role == "developer":
            sys_i = i
            break
    rest = [m for i, m in enumerate(msgs) if i != sys_i]

    values: dict[str, str] = {}
    if ref.system is not None and ref.system.template.fields:
        if sys_i is None:
            return None
        sys_content = _content_text(_content(msgs[sys_i]))
        if sys_content is None or not ref.system.template.match(sys_content, values):
            return None
    # A baseline that only describes its system message says nothing about the rest:
    # then the candidate's own non-system messages are the shape to match.
    rest_ref = ref.rest or pat.rest
    if rest_ref:
        if len(rest) != len(rest_ref):
            return None
        for m, pm in zip(rest, rest_ref, strict=True):
            if _norm_role(_role(m)) != _norm_role(pm.role):
                return None
            content = _content_text(_content(m))
            if content is None or not pm.template.match(content, values):
                return None

    if not pat.rest:  # system-only pattern with placeholders
        if cand_sys is None:
            return None
        sys_rendered = cand_sys.template.render(values)
        return None if sys_rendered is None else _apply_text(messages, sys_rendered)

    # Reuse the app's message dicts (extra keys such as `name`) only when the shapes line up.
    aligned = len(rest) == len(pat.rest) and all(
        _norm_role(_role(m)) == _norm_role(pm.role) for m, pm in zip(rest, pat.rest, strict=True)
    )
    out: list[Any] = []
    k = 0
    for pm in pat.messages:
        rendered = pm.template.render(values)
        if rendered is None:
            return None
        if pm is cand_sys:
            if sys_i is not None:
                out.append(_with_content(msgs[sys_i], rendered))
            else:
                out.append({"role": pm.role, "content": rendered})
        else:
            if aligned:
                out.append(_with_content(rest[k], rendered))
            else:
                out.append({"role": pm.role, "content": rendered})
            k += 1
    if cand_sys is None and sys_i is not None:
        out.insert(0, msgs[sys_i])  # the candidate says nothing about the system prompt
    return out


# --------------------------------------------------------------------------- message helpers


def _role(m: Any) -> Any:
    # Messages are normally dicts; tolerate other Mappings and objects with a `role`.
    try:
        return m.get("role")
    except AttributeError:
        return getattr(m, "role", None)
    except Exception:
        return None


def _content(m: Any) -> Any:
    if isinstance(m, Mapping):
        return m.get("content")
    return getattr(m, "content", None)


def _norm_role(role: Any) -> Any:
    return "system" if role == "developer" else role


def _role_matches(role: object, target: str) -> bool:
    if target in _ALL_ROLES:
        return True
    if target == "system" or target == "developer":
        return role == "system" or role == "developer"
    return role == target


def _with_content(m: Any, content: str) -> Any:
    """``m`` with its content replaced: a new dict, or ``m`` itself if nothing changes."""
    if isinstance(m, Mapping):
        if m.get("content") == content:
            return m
        new = dict(m)
        new["content"] = content
        return new
    new = {"role": _role(m), "content": content}
    name = getattr(m, "name", None)
    if isinstance(name, str):
        new["name"] = name
    return new


def _part_texts(parts: list[Any]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, Mapping) and p.get("type", "text") in _TEXT_PART_TYPES:
            t = p.get("text")
            if isinstance(t, str):
                out.append(t)
    return out


def _content_text(content: Any) -> str | None:
    """Content as one string for matching; None if it holds anything but text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = _part_texts(content)
        return "".join(texts) if len(texts) == len(content) else None
    return None


def _replace_in_content(content: Any, old: str, new: str) -> Any:
    """Replaced content, or None when ``old`` does not occur (so the message stays shared)."""
    if isinstance(content, str):
        return content.replace(old, new) if old in content else None
    if isinstance(content, list):
        changed = False
        parts: list[Any] = []
        for p in content:
            if isinstance(p, Mapping) and p.get("type", "text") in _TEXT_PART_TYPES:
                t = p.get("text")
                if isinstance(t, str) and old in t:
                    p = {**p, "text": t.replace(old, new)}
                    changed = True
            elif isinstance(p, str) and old in p:
                p = p.replace(old, new)
                changed = True
            parts.append(p)
        return parts if changed else None
    return None


# --------------------------------------------------------------------------- parsing


def _parse(item: Mapping[str, Any], cid: str) -> tuple[str, str | None, Any]:
    """(kind, text, payload) for a wire item; raises CandidateError."""
    found = _find_structured(item, explicit=True)
    if found is None:
        text = _read_text(item, cid)
        if text is not None:
            return "text", text, None
        found = _find_structured(item, explicit=False)
        if found is None:
            raise CandidateError(
                f"candidate {cid!r} has no prompt text (looked in "
                f"{', '.join(_TEXT_KEYS)} and artifact_payload) and no structured payload "
                "(transformation, pattern or template)"
            )
    kind, body = found
    if kind == "transformation":
        return kind, None, _parse_transformation(body, cid)
    pattern = _parse_pattern(body, cid, kind)
    text = None
    if pattern.system is not None:
        tmpl = pattern.system.template
        text = tmpl.literal if tmpl.literal is not None else tmpl.source
    return kind, text, pattern


def _sources(item: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Where a structured payload may live, in order of precedence."""
    out: list[Mapping[str, Any]] = []
    for key in ("artifact_payload", "candidate_content"):
        value = item.get(key)
        if isinstance(value, str):
            value = _json_object(value)
        if isinstance(value, Mapping):
            out.append(value)
    out.append(item)
    return out


def _json_object(text: str) -> Mapping[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None  # a prompt that merely starts with a brace
    return value if isinstance(value, dict) else None


def _find_structured(
    item: Mapping[str, Any], *, explicit: bool
) -> tuple[str, Mapping[str, Any]] | None:
    for source in _sources(item):
        found = _structured_in(source, explicit, 0)
        if found is not None:
            return found
    return None


def _structured_in(
    obj: Mapping[str, Any], explicit: bool, depth: int
) -> tuple[str, Mapping[str, Any]] | None:
    if depth > _MAX_NESTING:
        return None
    if explicit:
        kind = _marker(obj)
        if kind is not None:
            return kind, _body_for(obj, kind)
    else:
        # No marker anywhere: recognise a body by its fields, but only when they have
        # the right type, so an unrelated key cannot turn text into a pattern.
        for kind, keys in _INFER_FIELDS:
            if any(isinstance(obj.get(k), list) for k in keys):
                return kind, obj
    for key in ("data", "object"):
        sub = obj.get(key)
        if isinstance(sub, str):
            sub = _json_object(sub)
        if isinstance(sub, Mapping):
            found = _structured_in(sub, explicit, depth + 1)
            if found is not None:
                return found
    return None


def _marker(obj: Mapping[str, Any]) -> str | None:
    for key in ("payload_kind", "object"):
        value = obj.get(key)
        if isinstance(value, str) and value.strip().lower() in _STRUCTURED_KINDS:
            return value.strip().lower()
    return None


def _body_for(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The dict holding the kind's fields: ``obj`` itself or one nested under data/object."""
    fields = _KIND_FIELDS[kind]
    current: Mapping[str, Any] = obj
    for _ in range(_MAX_NESTING):
        if any(f in current for f in fields):
            return current
        nxt = next(
            (current[k] for k in ("data", "object") if isinstance(current.get(k), Mapping)),
            None,
        )
        if nxt is None:
            break
        current = nxt
    return obj  # parsing then reports the missing field


def _read_text(item: Mapping[str, Any], cid: str) -> str | None:
    for key in _TEXT_KEYS:
        text = _text_value(item.get(key), key, cid, 0)
        if text is not None:
            return text
    return _text_value(item.get("artifact_payload"), "artifact_payload", cid, 0)


def _text_value(value: Any, where: str, cid: str, depth: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        parsed = _json_object(value) if depth == 0 else None
        if parsed is not None:
            inner = _text_value(parsed, where, cid, depth + 1)
            if inner is not None:
                return inner
        return value
    if isinstance(value, Mapping):
        if depth > _MAX_NESTING:
            return None
        for key in _NESTED_TEXT_KEYS:
            text = _text_value(value.get(key), f"{where}.{key}", cid, depth + 1)
            if text is not None:
                return text
        data = value.get("data")
        if isinstance(data, Mapping):
            return _text_value(data, f"{where}.data", cid, depth + 1)
        return None
    if depth > 0:
        return None  # inside a payload object, unrelated keys may hold anything
    raise CandidateError(
        f"candidate {cid!r}: {where} must be a string or an object, got {type(value).__name__}"
    )


def _parse_transformation(body: Mapping[str, Any], cid: str) -> _Transformation:
    raw_reps = body.get("text_replacements")
    raw_injs = body.get("example_injections")
    if raw_reps is None and raw_injs is None:
        raise CandidateError(
            f"candidate {cid!r}: transformation has neither text_replacements "
            "nor example_injections"
        )
    reps: list[_Replacement] = []
    for i, r in enumerate(_as_list(raw_reps, "text_replacements", cid)):
        where = f"text_replacements[{i}]"
        if not isinstance(r, Mapping):
            raise CandidateError(f"candidate {cid!r}: {where} must be an object")
        old = r.get("old_text")
        new = r.get("new_text")
        if not isinstance(old, str) or not old:
            raise CandidateError(f"candidate {cid!r}: {where}.old_text must be a non-empty string")
        if not isinstance(new, str):
            raise CandidateError(f"candidate {cid!r}: {where}.new_text must be a string")
        role = _opt_str(r.get("apply_to_role"), f"{where}.apply_to_role", cid) or "system"
        reps.append(_Replacement(old, new, role))
    injs: list[_Injection] = []
    for i, inj in enumerate(_as_list(raw_injs, "example_injections", cid)):
        where = f"example_injections[{i}]"
        if not isinstance(inj, Mapping):
            raise CandidateError(f"candidate {cid!r}: {where} must be an object")
        examples = _as_list(inj.get("examples"), f"{where}.examples", cid)
        if not examples:
            raise CandidateError(f"candidate {cid!r}: {where}.examples must be a non-empty list")
        parsed: list[tuple[tuple[str, str], ...]] = []
        for j, ex in enumerate(examples):
            ex_where = f"{where}.examples[{j}]"
            if not isinstance(ex, Mapping):
                raise CandidateError(f"candidate {cid!r}: {ex_where} must be an object")
            ex_role = ex.get("role")
            content = ex.get("content")
            if not isinstance(ex_role, str) or not ex_role:
                raise CandidateError(f"candidate {cid!r}: {ex_where}.role must be a string")
            if not isinstance(content, str):
                raise CandidateError(
                    f"candidate {cid!r}: {ex_where}.content must be a string, "
                    f"got {type(content).__name__}"
                )
            pairs: list[tuple[str, str]] = [("role", ex_role), ("content", content)]
            name = ex.get("name")
            if isinstance(name, str) and name:
                pairs.append(("name", name))
            parsed.append(tuple(pairs))
        after = _opt_str(inj.get("insert_after_role"), f"{where}.insert_after_role", cid)
        injs.append(_Injection(tuple(parsed), after or "system"))
    if not reps and not injs:
        raise CandidateError(f"candidate {cid!r}: transformation has no replacements or injections")
    return _Transformation(tuple(reps), tuple(injs))


def _parse_pattern(body: Mapping[str, Any], cid: str, kind: str) -> _Pattern:
    fields = _KIND_FIELDS[kind]
    key = next((f for f in fields if body.get(f) is not None), fields[0])
    raw = body.get(key)
    if raw is None:
        raise CandidateError(f"candidate {cid!r}: {kind} has no {fields[0]}")
    if not isinstance(raw, list) or not raw:
        raise CandidateError(
            f"candidate {cid!r}: {kind} {key} must be a non-empty list, got {_describe(raw)}"
        )
    # Pattern messages name their text `pattern`; legacy template sections say `content`.
    text_keys = ("pattern", "content") if kind == "pattern" else ("content", "pattern")
    entries: list[tuple[int, int, _PatternMessage]] = []
    for i, m in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(m, Mapping):
            raise CandidateError(f"candidate {cid!r}: {where} must be an object")
        role = m.get("role")
        if not isinstance(role, str) or not role.strip():
            raise CandidateError(f"candidate {cid!r}: {where}.role must be a non-empty string")
        tkey = next((k for k in text_keys if m.get(k) is not None), text_keys[0])
        source = m.get(tkey)
        if not isinstance(source, str):
            raise CandidateError(
                f"candidate {cid!r}: {where}.{tkey} must be a string, got {_describe(source)}"
            )
        order = m.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, int)):
            raise CandidateError(f"candidate {cid!r}: {where}.order must be an integer")
        name = _opt_str(m.get("name"), f"{where}.name", cid)
        pm = _PatternMessage(role.strip(), _compile_template(source), name)
        entries.append((i if order is None else order, i, pm))
    entries.sort(key=lambda e: (e[0], e[1]))
    messages = tuple(e[2] for e in entries)
    system = next((pm for pm in messages if pm.role in ("system", "developer")), None)
    rest = tuple(pm for pm in messages if pm is not system)
    return _Pattern(messages, system, rest)


def _compile_template(source: str) -> _Template:
    parts: list[tuple[str, bool]] = []
    fields: list[str] = []
    regex: list[str] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            text = "".join(literal)
            parts.append((text, False))
            regex.append(re.escape(text))
            literal.clear()

    pos = 0
    for m in _TOKEN.finditer(source):
        literal.append(source[pos : m.start()])
        pos = m.end()
        name = m.group(1)
        if name is None:
            literal.append(m.group(0)[0])  # `{{` -> `{`, `}}` -> `}`
            continue
        flush()
        parts.append((name, True))
        if name in fields:
            regex.append(f"(?P={name})")  # repeated placeholder: same text again
        else:
            fields.append(name)
            regex.append(f"(?P<{name}>.*?)")
    literal.append(source[pos:])
    flush()
    rendered = None if fields else "".join(p for p, _ in parts)
    return _Template(
        source=source,
        parts=tuple(parts),
        fields=tuple(fields),
        regex=re.compile("".join(regex), re.DOTALL),
        literal=rendered,
    )


def _as_list(value: Any, where: str, cid: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CandidateError(f"candidate {cid!r}: {where} must be a list, got {_describe(value)}")
    return value


def _opt_str(value: Any, where: str, cid: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CandidateError(f"candidate {cid!r}: {where} must be a string, got {_describe(value)}")
    return value


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if isinstance(value, bool | int) else False


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__
