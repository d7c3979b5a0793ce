"""The proposer: an OpenAI-compatible chat model that writes new instructions.

Prompts are built by pure functions (:func:`mipro_instruction_prompt`,
:func:`gepa_reflection_prompt`, :func:`gepa_merge_prompt`) from traces, so
tests can read exactly what the model will see. Only traces that carry
content reach a prompt: with ``wrap(..., send_traces=False)`` rollouts have
no input/output, so no example and no feedback text appears.

Where the key comes from (never from a request or a session config):

* ``proposer_url`` (session config) or ``SYNTH_PROPOSER_URL`` names the
  endpoint (``https://api.openai.com/v1`` by default; a trailing
  ``/chat/completions`` is accepted, as the hosted dialect writes it);
* ``SYNTH_PROPOSER_API_KEY``, else ``OPENAI_API_KEY``, is sent **only** to
  an allowed origin (scheme, host, port): ``https://api.openai.com``, the
  origin of ``SYNTH_PROPOSER_URL``, and those listed in
  ``SYNTH_PROPOSER_ALLOWED_HOSTS`` (comma separated origins such as
  ``http://127.0.0.1:8080``, or bare host names trusted on every port). A
  session config naming any other URL gets a call without a key, so a request
  cannot make the backend send its key elsewhere;
* ``proposer_model`` (session config), else ``SYNTH_PROPOSER_MODEL``, else
  the engine's default, names the model. No model: no proposer.

For the in-process backend an OpenAI client can be injected (the engine's
``OptimizerOptions(proposer_client=...)``): sessions that name no
``proposer_url`` use it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from synth_middleware._origins import origin_allowed, split_list
from synth_middleware._scrub import Scrubber

if TYPE_CHECKING:
    from synth_middleware.engine.config import SessionConfig
    from synth_middleware.engine.trace import Trace

__all__ = [
    "ENV_ALLOWED_HOSTS",
    "ENV_API_KEY",
    "ENV_MODEL",
    "ENV_URL",
    "INSTRUCTION_CHARS",
    "MIPRO_TIPS",
    "Proposer",
    "ProposerError",
    "ProposerFactory",
    "api_key_for",
    "dataset_summary",
    "extract_instruction",
    "gepa_merge_prompt",
    "gepa_reflection_prompt",
    "mipro_instruction_prompt",
    "normalize_base_url",
    "scrub_secrets",
]

ENV_API_KEY = "SYNTH_PROPOSER_API_KEY"
ENV_URL = "SYNTH_PROPOSER_URL"
ENV_MODEL = "SYNTH_PROPOSER_MODEL"
ENV_ALLOWED_HOSTS = "SYNTH_PROPOSER_ALLOWED_HOSTS"
DEFAULT_URL = "https://api.openai.com/v1"
_NO_KEY = "no-key"  # the openai client insists on some key; servers without auth ignore it
_FIELD_CHARS = 2000  # one input/output/feedback in a prompt
# An instruction goes into a proposer prompt whole up to this size (about 15k tokens; GEPA's
# instructions grow with every reflection). Beyond it, it is cut with a marker saying how much
# was cut and a warning is logged: never silently.
INSTRUCTION_CHARS = 60_000
_CUT_MARKER = "[... {n} more characters of this instruction were cut here ...]"

log = logging.getLogger("synth_middleware.proposer")

# MIPROv2's proposal tips: one is drawn at random for each proposed instruction.
MIPRO_TIPS: dict[str, str] = {
    "creative": "Don't be afraid to be creative when creating the new instruction!",
    "simple": "Keep the instruction clear and concise.",
    "description": "Make sure your instruction is very informative and descriptive.",
    "high_stakes": "The instruction should include a high stakes scenario in which the "
    "model must solve the task!",
    "persona": 'Include a persona that is relevant to the task in the instruction (ie. "You '
    'are a ...")',
    "edge_cases": "Name the edge cases and failure modes the examples suggest, and say how "
    "to handle them.",
    "format": "Be precise about the exact output format the task expects.",
}


class ProposerError(RuntimeError):
    """The proposer model could not be called or answered nothing usable."""


_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+\S+)")


def scrub_secrets(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with API-key-looking strings and the proposer keys from ``env`` masked."""
    env = os.environ if env is None else env
    for name in (ENV_API_KEY, "OPENAI_API_KEY"):
        key = env.get(name)
        if key and len(key) >= 4:
            text = text.replace(key, "***")
    # Fragments too (a provider's "abcd1234****wxyz" of a key without an sk- prefix).
    text = Scrubber((env.get(ENV_API_KEY), env.get("OPENAI_API_KEY")))(text)
    return _KEY_PATTERN.sub("***", text)


def normalize_base_url(url: str) -> str:
    """An OpenAI ``base_url`` from a hosted-style ``proposer_url``
    (``.../v1/chat/completions`` -> ``.../v1``)."""
    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url.rstrip("/")


def api_key_for(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The key to send to ``url``, or ``None`` when its host is not allowed (see module doc)."""
    env = os.environ if env is None else env
    # Origins, not hosts: the operator's SYNTH_PROPOSER_URL allows its own scheme and port
    # only (a session naming another port on that host gets no key).
    allowed = [DEFAULT_URL, env.get(ENV_URL), *split_list(env.get(ENV_ALLOWED_HOSTS))]
    if not origin_allowed(url, allowed):
        return None
    return env.get(ENV_API_KEY) or env.get("OPENAI_API_KEY") or None


class Proposer:
    """One proposer model behind an OpenAI-compatible client (sync, called from
    the optimizer thread, never on a request path)."""

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.calls = 0

    def complete(self, prompt: str, *, temperature: float | None = None) -> str:
        """The model's answer to one user message; :class:`ProposerError` on an empty answer.
        Client errors (network, HTTP status) propagate: the runner backs off."""
        client = self.client
        with_options = getattr(client, "with_options", None)
        if callable(with_options):
            client = with_options(timeout=self.timeout, max_retries=1)
        self.calls += 1
        resp = client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens,
        )
        try:
            text = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            text = None
        if not isinstance(text, str) or not text.strip():
            raise ProposerError("the proposer answered with no text")
        return text


ClientFactory = Callable[[str, str], Any]  # (base_url, api_key) -> OpenAI-compatible client


def _openai_client(base_url: str, api_key: str) -> Any:
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=1)


class ProposerFactory:
    """Builds (and caches) the proposer for a session config."""

    def __init__(
        self,
        *,
        client: Any = None,
        default_model: str | None = None,
        env: Mapping[str, str] | None = None,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self._client = client
        self._default_model = default_model
        self._env = env
        self._client_factory = client_factory or _openai_client
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def env(self) -> Mapping[str, str]:
        """The environment keys are read from (``os.environ`` unless injected)."""
        return os.environ if self._env is None else self._env

    def for_config(self, cfg: SessionConfig) -> Proposer | None:
        """The proposer a session should use, or ``None`` when no model is configured."""
        env = self.env
        model = cfg.proposer_model or env.get(ENV_MODEL) or self._default_model
        if not model:
            return None
        opts = {
            "temperature": cfg.proposer_temperature,
            "max_tokens": cfg.proposer_max_tokens,
            "timeout": cfg.proposer_timeout,
        }
        if cfg.proposer_url is None and self._client is not None:
            return Proposer(self._client, model, **opts)  # type: ignore[arg-type]
        url = normalize_base_url(cfg.proposer_url or env.get(ENV_URL) or DEFAULT_URL)
        key = api_key_for(url, env) or _NO_KEY
        with self._lock:
            client = self._clients.get((url, key))
            if client is None:
                client = self._client_factory(url, key)
                self._clients[(url, key)] = client
        return Proposer(client, model, **opts)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- parsing


def extract_instruction(answer: str | None) -> str | None:
    """The text between the first and the last triple backticks, or ``None``.

    A language tag right after the opening fence (```` ```text ````) is dropped.
    Fewer than two fences, or nothing but whitespace between them, is malformed.
    """
    if not isinstance(answer, str):
        return None
    first = answer.find("```")
    last = answer.rfind("```")
    if first < 0 or last <= first:
        return None
    body = answer[first + 3 : last]
    head, nl, rest = body.partition("\n")
    if nl and re.fullmatch(r"[A-Za-z0-9_+\-]{1,20}", head.strip()):
        body = rest
    body = body.strip()
    return body or None


# ---------------------------------------------------------------------------- prompts


def _clip(text: str | None, limit: int = _FIELD_CHARS) -> str:
    if text is None:
        return ""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 15].rstrip() + " ...[truncated]"


def _instruction_text(text: str | None) -> str:
    """An instruction for a prompt: whole up to :data:`INSTRUCTION_CHARS`; beyond, cut with
    an explicit marker (how many characters) and a logged warning."""
    text = (text or "").strip()
    if len(text) <= INSTRUCTION_CHARS:
        return text
    marker = _CUT_MARKER.format(n=len(text) - INSTRUCTION_CHARS)
    log.warning(
        "synth-middleware: an instruction of %d characters is longer than the proposer "
        "prompt allows (%d); it was cut and the prompt says so",
        len(text),
        INSTRUCTION_CHARS,
    )
    return text[:INSTRUCTION_CHARS].rstrip() + "\n" + marker


def _fmt_reward(value: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:.3g}"


def dataset_summary(traces: Sequence[Trace], *, samples: int = 5) -> str:
    """A short, deterministic description of the inputs seen so far.

    Counts, lengths, the labels named in reward metadata (``expected``), the
    share of rewarded rollouts and a few sample inputs. Only traces with an
    input count; with none, it says so.
    """
    inputs = [t for t in traces if t.input]
    if not inputs:
        return "No inputs were recorded for this task (traces are off), so there is no data."
    texts = [t.input or "" for t in inputs]
    words = sorted(len(t.split()) for t in texts)
    median = words[len(words) // 2]
    distinct = len(set(texts))
    lines = [
        f"{len(inputs)} recorded inputs ({distinct} distinct); length {words[0]}-{words[-1]} "
        f"words, median {median}.",
    ]
    rewards = [t.reward for t in inputs if t.reward is not None]
    if rewards:
        mean = math.fsum(rewards) / len(rewards)
        lines.append(f"Mean reward so far: {mean:.3g} over {len(rewards)} rewarded rollouts.")
    labels = Counter(t.expected for t in inputs if t.expected)
    if labels:
        top = ", ".join(f"{label} ({n})" for label, n in labels.most_common(12))
        lines.append(f"{len(labels)} distinct expected labels; most common: {top}.")
    seen: set[str] = set()
    picked: list[str] = []
    for t in texts:  # newest first, distinct
        if t not in seen:
            seen.add(t)
            picked.append(t)
        if len(picked) >= samples:
            break
    lines.append("Sample inputs:")
    lines += [f"- {_clip(t, 300)}" for t in picked]
    return "\n".join(lines)


def _example_block(i: int, t: Trace, *, feedback: bool = True) -> str:
    parts = [
        f"# Example {i}",
        "## Input",
        _clip(t.input),
        "## Output",
        _clip(t.output) or "(no output recorded)",
        "## Reward",
        _fmt_reward(t.reward),
    ]
    if t.expected:
        parts += ["## Expected", _clip(t.expected, 300)]
    if feedback and t.feedback:
        parts += ["## Feedback", _clip(t.feedback)]
    return "\n".join(parts)


def _with_content(traces: Sequence[Trace]) -> list[Trace]:
    """Only traces that carry content may reach a prompt (send_traces=False: none)."""
    return [t for t in traces if t.input is not None]


def mipro_instruction_prompt(
    *,
    instruction: str,
    summary: str,
    examples: Sequence[Trace],
    tip: str,
    failures: Sequence[Trace] = (),
) -> str:
    """MIPRO's grounded instruction proposal: dataset summary, the current
    instruction, a few high-reward examples, the low-reward ones (``failures``:
    input, output, reward, expected answer, feedback) and a tip; the answer is one
    instruction between triple backticks."""
    shown = _with_content(examples)
    missed = _with_content(failures)
    parts = [
        "You are improving the system prompt (instruction) of a language-model task that is "
        "running in production.",
        "",
        "DATASET SUMMARY",
        summary,
        "",
        "CURRENT INSTRUCTION",
        "```",
        _instruction_text(instruction),
        "```",
    ]
    if shown:
        parts += ["", "EXAMPLES THAT SCORED WELL (input, the model's output, the reward)"]
        parts += [_example_block(i, t, feedback=False) for i, t in enumerate(shown, 1)]
    if missed:
        parts += [
            "",
            "EXAMPLES THAT SCORED POORLY (input, the model's output, the reward, the expected "
            "answer when known, feedback): say what the instruction must tell the model so it "
            "gets these right",
        ]
        parts += [_example_block(i, t) for i, t in enumerate(missed, len(shown) + 1)]
    parts += [
        "",
        f"TIP: {tip}",
        "",
        "Propose one new instruction for this task that should earn higher rewards. "
        "Return only the new instruction, between triple backticks (```).",
    ]
    return "\n".join(parts)


def gepa_reflection_prompt(*, instruction: str, examples: Sequence[Trace]) -> str:
    """GEPA's reflective mutation: the parent's instruction and a minibatch of its
    rollouts with inputs, outputs, rewards and feedback."""
    shown = _with_content(examples)
    blocks = "\n\n".join(_example_block(i, t) for i, t in enumerate(shown, 1))
    return "\n".join(
        [
            "I provided an assistant with the following instructions to perform a task for me:",
            "```",
            _instruction_text(instruction),
            "```",
            "",
            "The following are examples of different task inputs provided to the assistant "
            "along with the assistant's response for each of them, the reward it earned and "
            "some feedback on how the response could be better:",
            "```",
            blocks or "(no examples)",
            "```",
            "",
            "Your task is to write a new instruction for the assistant.",
            "Read the inputs carefully and identify the input format and infer a detailed "
            "description of the task I wish to solve with the assistant.",
            "Read all the assistant responses, rewards and feedback. Identify all niche and "
            "domain-specific factual information about the task and include it in the "
            "instruction, as a lot of it may not be available to the assistant in the future. "
            "If the assistant used a generalizable strategy, include it too.",
            "Provide the new instruction within ``` blocks.",
        ]
    )


def gepa_merge_prompt(*, ancestor: str, first: str, second: str) -> str:
    """GEPA's merge for a single instruction: two descendants of a common ancestor,
    each better on different inputs, combined into one."""
    return "\n".join(
        [
            "Two improved versions of an assistant's instruction were derived from the same "
            "original. Each works better than the original on different inputs.",
            "",
            "ORIGINAL INSTRUCTION",
            "```",
            _instruction_text(ancestor),
            "```",
            "",
            "VERSION A",
            "```",
            _instruction_text(first),
            "```",
            "",
            "VERSION B",
            "```",
            _instruction_text(second),
            "```",
            "",
            "Write one instruction that keeps every improvement of A and of B over the "
            "original and resolves any conflict between them. Provide it within ``` blocks.",
        ]
    )
