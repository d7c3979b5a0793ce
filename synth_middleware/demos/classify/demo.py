"""``synth-middleware demo classify``: MIPRO online on any labelled dataset, end to end.

::

    synth-middleware demo classify --train train.csv --test test.csv \\
        [--text-col text] [--label-col label] [--rollouts N] [--seed N] [--model gpt-4.1-nano]

1. reads the two files (:mod:`~synth_middleware.demos.classify.data`: CSV or
   JSONL, checked) and builds the task (:mod:`~synth_middleware.demos.classify.task`:
   a generic baseline prompt listing the labels; reward 1 for the expected label);
2. starts the model: the offline **stand-in** (not an LLM) unless ``--model``
   names a real one (then ``OPENAI_API_KEY``, optional ``OPENAI_BASE_URL``);
3. starts the task's container and the backend (``synth-middleware serve``'s
   app in-process, or ``--backend-url``) and health-checks both; against an
   external backend it first checks that the backend's proxy can reach a
   model, and stops with the fix if it cannot;
4. creates a MIPRO online session whose proposer is the same model;
5. runs the rollouts over the train seeds: **pattern a**, the container calls
   the session's proxy, which applies the candidate; **pattern b**, the app
   calls the model through a wrapped OpenAI client. On the embedded backend,
   pattern a runs in **lockstep** by default: one rollout at a time, the
   optimizer stepped after each reward, the proxy's draws seeded, so the same
   ``--seed`` gives the same proposals and the same candidates;
6. evaluates the baseline and the candidate the backend **names** best on the
   validation seeds and on the whole held-out test file (or ``--test-size``),
   prints baseline vs named best with the paired 95% CI, and writes
   ``results.json`` and ``plot.png`` into a new run directory
   ``<out>/runs/<dataset>-<timestamp>-seed<N>/`` (never over an earlier run).

The Banking77 demo (:mod:`synth_middleware.demos.banking77.demo`) is this demo
with Banking77's verified files and its own prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from synth_middleware.demos.classify.data import Example, LabelledData
from synth_middleware.demos.classify.report import (
    format_table,
    paired_diff,
    plot_rollouts,
    wilson,
)
from synth_middleware.demos.classify.task import ClassifyTask, task_definition

__all__ = [
    "STANDIN",
    "DemoError",
    "DemoOptions",
    "describe_candidate",
    "new_run_dir",
    "run",
]

STANDIN = "standin"
_INPUT_LINE = re.compile(r"(?m)^[ \t]*Input:[ \t]*$")


class DemoError(RuntimeError):
    """The demo cannot produce a meaningful result (the message says why and what to do)."""


# How the demo's optimizer proposes (the session config it creates; --session-config
# style overrides in DemoOptions.session_config win). A classification prompt over
# tens of labels improves by describing the labels: each proposal is written from
# the labelled traffic so far (up to 400 rollouts answered right and 400 answered
# wrong), and proposals are spaced so that each sees twice the data of the one
# before (after 40, 80, 160, ... rewards) instead of six thin ones in the first
# hundred rollouts. MIPRO proposes instructions only here (no bootstrapped demo
# sets: the instruction already carries labelled examples).
PROPOSAL_CONFIG: dict[str, Any] = {
    "online_proposal_spacing": 2.0,
    "proposer_max_examples": 400,
    "proposer_max_failures": 400,
    "instructions_per_batch": 1,
    "demo_sets_per_batch": 0,
    "max_demo_sets": 0,
    "reflection_minibatch_size": 40,
}


@dataclass
class DemoOptions:
    """The demo's settings (the command's flags).

    ``train_size``: the training rows the rollouts draw from (``None``: up to
    2,000, fewer when the file is smaller); ``val_size``: validation rows after them
    (``None``: up to 50, at most a fifth of the file). ``test_size``: held-out test
    queries to evaluate on (``None``: the whole test file). ``lockstep``: on the embedded backend with pattern a, one rollout at a
    time with the optimizer stepped after each reward (reproducible per seed);
    ``False`` runs ``concurrency`` rollouts in flight with the optimizer in the
    background (timing-dependent). ``standin_latency``: seconds each stand-in
    answer takes during rollouts (``None``: 0 in lockstep, 0.2 otherwise).
    ``copy_baseline_proposals``: the control run: the optimizer proposes nothing
    and the demo adds exact copies of the baseline prompt as candidates instead,
    so a sound promotion rule names none of them. ``standin_port``: a fixed port
    for the stand-in (so an external backend can be started with
    ``--upstream-url http://127.0.0.1:PORT/v1``).
    """

    rollouts: int = 3000  # a +10-point proposal is named after about 1,000-1,500 (BENCHMARKS)
    optimizer: str = "mipro"
    train_size: int | None = None
    val_size: int | None = None
    min_proposal_rollouts: int = 40
    model: str = STANDIN
    proposer_model: str | None = None
    pattern: str = "a"
    seed: int = 0
    test_size: int | None = None
    concurrency: int = 4
    data_dir: str | None = None
    out: str = "results"
    backend_url: str | None = None
    optimizer_interval: float = 0.05
    standin_latency: float | None = None
    standin_port: int = 0
    lockstep: bool = True
    copy_baseline_proposals: bool = False
    copies: int = 4
    progress: bool = True
    plot: bool = True
    session_config: dict[str, Any] = field(default_factory=dict)

    @property
    def standin(self) -> bool:
        """Whether the model is the offline stand-in."""
        return self.model in (STANDIN, "standin-tfidf")


# --------------------------------------------------------------------------- output


class _Out:
    """Prints through tqdm when a bar is open, so lines do not tear the bar."""

    def __init__(self, stream: IO[str], progress: bool) -> None:
        self.stream = stream
        self.progress = progress
        self.bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, text: str = "") -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def bar_for(self, total: int, desc: str) -> Iterator[Any]:
        """A tqdm bar on a terminal, a line every 10% otherwise (``None`` when quiet)."""
        bar: Any = None
        if self.progress:
            tty = getattr(self.stream, "isatty", lambda: False)()
            try:
                from tqdm import tqdm
            except ImportError:
                tty = False
            if tty:
                bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True)
            else:
                bar = _PlainBar(total, desc, self.stream)
        self.bar = bar
        try:
            yield bar
        finally:
            self.bar = None
            if bar is not None:
                bar.close()


class _PlainBar:
    """Progress for logs: one line per 10%, no carriage returns (tqdm's interface, the
    parts we use)."""

    def __init__(self, total: int, desc: str, stream: IO[str]) -> None:
        self.total, self.desc, self.stream = total, desc, stream
        self.n = 0
        self.postfix = ""
        self._step = max(1, total // 10)

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self._step == 0 or self.n == self.total:
            print(
                f"  {self.desc}: {self.n}/{self.total} {self.postfix}", file=self.stream, flush=True
            )

    def write(self, text: str, file: IO[str] | None = None) -> None:
        print(text, file=file or self.stream, flush=True)

    def close(self) -> None:
        pass


def new_run_dir(out: str | os.PathLike[str], name: str, seed: int, tag: str = "") -> Path:
    """A new, empty directory ``<out>/runs/<name>-<YYYYmmdd-HHMMSS>-seed<N>[-tag]`` (a
    ``-2``, ``-3``... suffix when a run started in the same second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "data"
    base = Path(out) / "runs" / f"{safe}-{stamp}-seed{seed}{('-' + tag) if tag else ''}"
    base.parent.mkdir(parents=True, exist_ok=True)
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


# --------------------------------------------------------------------------- model


@dataclass
class _Model:
    url: str  # OpenAI base URL (ends in /v1)
    name: str  # the model name requests carry
    label: str  # how outputs name it
    api_key: str | None
    standin: bool


@contextlib.contextmanager
def _model(opts: DemoOptions, labels: Sequence[str], latency: float) -> Iterator[_Model]:
    if opts.standin:
        from synth_middleware.demos.banking77 import standin as standin_module
        from synth_middleware.demos.banking77.standin import StandInModel

        model_name = str(getattr(standin_module, "MODEL_NAME", STANDIN))
        note = str(getattr(standin_module, "STANDIN_NOTE", "offline stand-in, not an LLM"))

        kwargs: dict[str, Any] = {"latency": latency}
        if opts.standin_port:
            kwargs["port"] = opts.standin_port
        try:
            srv = StandInModel(list(labels), **kwargs)
            srv.start()
        except OSError as exc:
            raise DemoError(
                f"the stand-in model cannot listen on port {opts.standin_port}: {exc}"
            ) from None
        try:
            label = f"{model_name} ({note}; {latency:g}s simulated latency)"
            yield _Model(srv.url, model_name, label, None, True)
        finally:
            srv.stop()
        return
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise SystemExit(
            f"--model {opts.model} needs OPENAI_API_KEY (and optionally OPENAI_BASE_URL); "
            "omit --model to run offline with the stand-in"
        )
    base = (os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
    yield _Model(base, opts.model, opts.model, key, False)


# --------------------------------------------------------------------------- backend


@dataclass
class _Backend:
    url: str
    api_key: str | None
    embedded: bool
    engine: Any = None


_PROPOSER_ENV = ("SYNTH_PROPOSER_MODEL", "SYNTH_PROPOSER_URL")


@contextlib.contextmanager
def _backend(opts: DemoOptions, model: _Model, workdir: Path, lockstep: bool) -> Iterator[_Backend]:
    external = opts.backend_url
    if external:
        yield _Backend(external.rstrip("/"), os.environ.get("SYNTH_API_KEY"), False)
        return
    from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore
    from synth_middleware.offline.container import InProcessServer
    from synth_middleware.server import create_app

    env: dict[str, str] = dict(os.environ)
    if opts.copy_baseline_proposals:
        for name in _PROPOSER_ENV:  # the control: no proposer at all
            env.pop(name, None)
    elif not model.standin:
        env["SYNTH_PROPOSER_URL"] = model.url  # the proposer's key may go to this host only
    options = OptimizerOptions(
        interval=0.0 if lockstep else opts.optimizer_interval,
        backoff_initial=0.0 if lockstep else 0.2,
        backoff_max=0.0 if lockstep else 5.0,
        seed=opts.seed,
        env=env,
        background=not lockstep,
    )
    engine = Engine(SqliteStore(str(workdir / "synth.db")), optimizer=options)
    app = create_app(
        engine,
        upstream_url=model.url,
        upstream_api_key=model.api_key or "none",
        proxy_refresh_interval=0.0 if lockstep else 0.05,
        dashboard=False,
    )
    try:
        with InProcessServer(app, lifespan="on", name="backend") as srv:
            yield _Backend(srv.url, None, True, engine)
    finally:
        if engine.optimizer is not None:
            engine.optimizer.stop()
        engine.close()


def _preflight(proxy_url: str, backend: _Backend, model: _Model, opts: DemoOptions) -> None:
    """Check that the session's proxy reaches a model before running rollouts through it
    (an external backend started without ``--upstream-url`` would fail every one)."""
    headers = {"authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    try:
        resp = httpx.post(
            f"{proxy_url}/chat/completions",
            json={"model": model.name, "messages": []},  # refused upstream, never recorded
            headers=headers,
            timeout=30.0,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        raise DemoError(f"the backend's proxy {proxy_url} is unreachable: {exc}") from None
    try:
        code = str((resp.json().get("error") or {}).get("code") or "")
    except (ValueError, AttributeError):
        code = ""
    if resp.status_code not in (502, 503, 504) and code != "upstream_not_configured":
        return
    port = opts.standin_port or 8011
    if model.standin:
        fix = (
            f"restart it as `synth-middleware serve --upstream-url http://127.0.0.1:{port}/v1 "
            f"...` and run this demo with `--standin-port {port}`, so the backend forwards to "
            "this demo's stand-in model"
        )
    else:
        fix = f"restart it with `--upstream-url {model.url}` (and the provider's key in its env)"
    if code == "upstream_not_configured" or resp.status_code == 503:
        what = "has no upstream model (it was started without --upstream-url)"
    else:
        what = f"cannot reach its upstream model (its proxy answered {resp.status_code}: {resp.text[:160]})"
    raise DemoError(
        f"the backend at {backend.url} {what}, so every pattern-a rollout would fail. Fix: {fix}; "
        "or use --pattern b (the app calls the model itself)."
    )


# --------------------------------------------------------------------------- watcher


class _Watcher(threading.Thread):
    """Polls the session's candidates and best: prints each new proposal once and
    records when the named best changes (``promotions``)."""

    def __init__(
        self,
        session: Any,
        say: _Out,
        counter: list[int],
        names: dict[str, str],
        baseline_text: str,
        prefix: str = "proposal",
    ) -> None:
        super().__init__(name="proposal-watcher", daemon=True)
        self.prefix = prefix
        self.session = session
        self.say = say
        self.counter = counter
        self.names = names
        self.baseline_text = baseline_text
        self.proposals: list[dict[str, Any]] = []
        self.promotions: list[dict[str, Any]] = []
        self._best: str | None = None
        self._stop_event = threading.Event()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def poll(self, state: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._poll(state)

    def _poll(self, state: dict[str, Any] | None) -> None:
        ids = {c["candidate_id"] for c in state.get("candidates") or []} if state else None
        items: list[dict[str, Any]] = []
        if ids is None or ids - self._seen:  # a new candidate (or no state to tell)
            page = self.session.list_candidates(limit=1000, include="prompt_text", status="all")
            items = page.get("items", [])
        for item in items:
            cid = item["candidate_id"]
            if cid in self._seen:
                continue
            self._seen.add(cid)
            if item.get("is_baseline"):
                self.names.setdefault(cid, "baseline")
                continue
            n = len(self.proposals) + 1
            self.names[cid] = f"{self.prefix} {n}"
            text = item.get("candidate_content")
            payload = item.get("artifact_payload")
            desc = describe_candidate(text, payload, baseline=self.baseline_text)
            self.proposals.append(
                {
                    "candidate_id": cid,
                    "name": f"{self.prefix} {n}",
                    "after_rollouts": self.counter[0],
                    "content": text,
                    "payload": payload,
                    **desc,
                }
            )
            self.say(
                f"  + {self.prefix} {n} ({cid}) after {self.counter[0]} rollouts: "
                f"{desc['instruction']} + {desc['examples']} labelled example(s)"
            )
        state = state if state is not None else self.session.get_status()
        best = state.get("best_candidate_id")
        base = state.get("baseline_candidate_id")
        if best is not None and best != self._best:
            if self._best is not None or best != base:
                name = self.names.get(best, best)
                self.promotions.append(
                    {
                        "candidate_id": best,
                        "name": name,
                        "after_rollouts": self.counter[0],
                        "action": "rolled back to the baseline" if best == base else "named best",
                    }
                )
                what = "rolls back to the baseline" if best == base else f"names {name} best"
                self.say(f"  * the backend {what} after {self.counter[0]} rollouts")
            self._best = best

    def run(self) -> None:
        while not self._stop_event.wait(0.25):
            with contextlib.suppress(Exception):
                self.poll()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5)
        with contextlib.suppress(Exception):
            self.poll()


def describe_candidate(text: str | None, payload: Any, *, baseline: str) -> dict[str, Any]:
    """``{instruction, examples, new_instruction}``: whether the candidate keeps the
    ``baseline`` instruction (else its first words) and how many labelled examples it
    carries."""
    examples = 0
    instruction = text or ""
    if text is None and isinstance(payload, dict):
        for inj in payload.get("example_injections") or []:
            examples += sum(1 for m in inj.get("examples") or [] if m.get("role") == "user")
        for rep in payload.get("text_replacements") or []:
            instruction = str(rep.get("new_text") or "")
        instruction = instruction or baseline
    else:
        examples = len(_INPUT_LINE.findall(instruction))
        for marker in ("\n\nHere are examples", "\n\nLabelled examples", "\nExample 1:"):
            instruction = instruction.split(marker)[0]
    same = " ".join(instruction.split()) == " ".join(baseline.split())
    head = "the baseline instruction" if same else f'"{" ".join(instruction.split())[:70]}..."'
    return {"instruction": head, "examples": examples, "new_instruction": not same}


# --------------------------------------------------------------------------- rollouts


def _record(r: Any) -> dict[str, Any]:
    return {
        "seed": r.seed,
        "rollout_id": r.rollout_id,
        "candidate_id": r.candidate_id,
        "reward": r.reward,
        "expected": r.details.get("expected"),
        "predicted": r.details.get("predicted"),
        "error": r.error,
        "seconds": round(r.seconds, 4),
    }


def _pattern_a(
    opts: DemoOptions,
    session: Any,
    container: Any,
    model: _Model,
    seeds: Sequence[int],
    on_done: Callable[[Any], None],
    after_each: Callable[[int], None] | None,
) -> list[dict[str, Any]]:
    from synth_middleware.offline.container import AsyncContainerClient, OnlineRunner

    async def go() -> list[dict[str, Any]]:
        client = AsyncContainerClient(container.url, container.api_key, timeout=120.0)
        runner = OnlineRunner(client, session, model=model.name, env_config={"split": "train"})
        try:
            if after_each is None:
                results = await runner.run(seeds, concurrency=opts.concurrency, on_result=on_done)
            else:  # lockstep: one rollout, its reward, one optimizer step; in order
                results = []
                for i, seed in enumerate(seeds):
                    res = await runner.run_one(seed)
                    results.append(res)
                    on_done(res)
                    if i == 0 and res.reward is None:
                        break  # the first one failed: stop here, the caller explains
                    after_each(i + 1)
        finally:
            await client.aclose()
        return [_record(r) for r in results]

    return asyncio.run(go())


def _pattern_b(
    opts: DemoOptions,
    session: Any,
    backend: _Backend,
    model: _Model,
    task: ClassifyTask,
    train: Sequence[Example],
    seeds: Sequence[int],
    on_done: Callable[[Any], None],
) -> list[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    import openai

    import synth_middleware as synth
    from synth_middleware.backends.http import HttpBackend
    from synth_middleware.offline.container import OnlineRolloutResult

    http_backend = HttpBackend(backend.url, backend.api_key)
    client = synth.wrap(
        openai.OpenAI(base_url=model.url, api_key=model.api_key or "none", max_retries=1),
        session=session.session_id,
        backend=http_backend,
        ttl=0.5,
        warm=True,
    )
    params = task.request_params()

    def one(seed: int) -> dict[str, Any]:
        ex = train[seed]
        started = time.perf_counter()
        out: dict[str, Any] = {"seed": seed, "expected": ex.label}
        try:
            resp = client.chat.completions.create(
                model=model.name,
                messages=task.messages(ex.text),  # type: ignore[arg-type]  # plain dicts
                **params,
            )
        except openai.OpenAIError as exc:
            out.update(reward=None, error=f"{type(exc).__name__}: {exc}", candidate_id=None)
        else:
            pred = task.parse_message(resp.choices[0].message)
            reward = task.reward(pred, ex.label)
            info = synth.rollout_of(resp)
            synth.reward(
                resp, reward, metadata={"expected": ex.label, "predicted": pred.label or pred.raw}
            )
            out.update(
                reward=reward,
                predicted=pred.label,
                candidate_id=info.candidate_id if info else None,
                rollout_id=info.rollout_id if info else None,
                error=None,
            )
        out["seconds"] = round(time.perf_counter() - started, 4)
        on_done(
            OnlineRolloutResult(
                seed, str(out.get("rollout_id")), out["reward"], out.get("candidate_id")
            )
        )
        return out

    try:
        with ThreadPoolExecutor(max_workers=opts.concurrency) as pool:
            return list(pool.map(one, seeds))
    finally:
        synth.flush(10.0)
        http_backend.close()


# --------------------------------------------------------------------------- evaluation


async def _evaluate(
    model: _Model,
    task: ClassifyTask,
    candidates: dict[str, Any],
    baseline: Any,
    examples: Sequence[Example],
    concurrency: int,
) -> dict[str, list[float]]:
    """Rewards of each candidate (``None``: the baseline itself) on ``examples``, calling the
    model directly with the candidate applied to the baseline messages (no session traffic)."""
    headers = {"content-type": "application/json"}
    if model.standin:
        headers["x-standin-latency"] = "0"  # no simulated latency for bulk evaluation
    if model.api_key:
        headers["authorization"] = f"Bearer {model.api_key}"
    sem = asyncio.Semaphore(max(1, concurrency))
    out: dict[str, list[float]] = {name: [0.0] * len(examples) for name in candidates}
    async with httpx.AsyncClient(timeout=120.0, trust_env=False) as http:

        async def one(name: str, cand: Any, i: int, ex: Example) -> None:
            messages = task.messages(ex.text)
            if cand is not None:
                messages = cand.apply(messages, baseline=baseline) or messages
            body = {"model": model.name, "messages": messages, **task.request_params()}
            async with sem:
                for attempt in range(3):
                    resp = await http.post(
                        f"{model.url}/chat/completions", json=body, headers=headers
                    )
                    if resp.status_code < 500 and resp.status_code != 429:
                        break
                    await asyncio.sleep(1.0 * 2**attempt)
            if resp.status_code >= 300:
                raise DemoError(f"evaluation call failed: {resp.status_code} {resp.text[:200]}")
            out[name][i] = task.reward(task.parse(resp.json()), ex.label)

        await asyncio.gather(
            *(
                one(name, cand, i, ex)
                for name, cand in candidates.items()
                for i, ex in enumerate(examples)
            )
        )
    return out


# --------------------------------------------------------------------------- run


def run(
    opts: DemoOptions,
    data: LabelledData,
    task: ClassifyTask | None = None,
    *,
    title: str | None = None,
    stream: IO[str] | None = None,
) -> dict[str, Any]:
    """Run the demo on ``data`` (``task``: default the generic task of its labels); return
    the results (also written as ``results.json`` in a new run directory)."""
    from synth_middleware.client.candidates import parse_candidate
    from synth_middleware.offline.container import (
        InProcessContainer,
        create_container_app,
        wait_healthy,
    )
    from synth_middleware.offline.sdk import SynthClient

    if opts.pattern not in ("a", "b"):
        raise ValueError("pattern must be 'a' or 'b'")
    if opts.rollouts < 1:
        raise ValueError("rollouts must be at least 1")
    val_size = opts.val_size if opts.val_size is not None else min(50, len(data.train) // 5)
    train_size = (
        opts.train_size if opts.train_size is not None else min(2000, len(data.train) - val_size)
    )
    if train_size < 1 or val_size < 0:
        raise ValueError("train-size must be at least 1 and val-size at least 0")
    t0 = time.perf_counter()
    task = task or ClassifyTask(data.labels)
    name = data.name
    say = _Out(stream or sys.stdout, opts.progress)
    import openai  # noqa: F401  (imported here, not first in the optimizer thread mid-run)

    if train_size + val_size > len(data.train):
        raise ValueError(
            f"train-size + val-size ({train_size} + {val_size}) must be at most the "
            f"{len(data.train)} training rows"
        )
    lockstep = opts.lockstep and opts.pattern == "a" and not opts.backend_url
    latency = (
        opts.standin_latency if opts.standin_latency is not None else (0.0 if lockstep else 0.2)
    )
    train = data.shuffled("train", opts.seed)
    test = data.shuffled("test", opts.seed)
    if opts.test_size is not None:
        test = test[: opts.test_size]
    train_seeds = list(range(train_size))
    val_seeds = list(range(train_size, train_size + val_size))
    rng = random.Random(opts.seed)
    order = train_seeds[:]
    rng.shuffle(order)
    seeds = [order[i % len(order)] for i in range(opts.rollouts)]
    tag = "-".join(
        x
        for x in (
            "b" if opts.pattern == "b" else "",
            "copy" if opts.copy_baseline_proposals else "",
        )
        if x
    )
    run_dir = new_run_dir(opts.out, name, opts.seed, tag)
    saved_random = random.getstate()
    if lockstep:
        random.seed(f"synth-demo:{opts.seed}")  # the proxy's Thompson draws

    try:
        with (
            tempfile.TemporaryDirectory(prefix="synth-demo-") as tmp,
            _model(opts, data.labels, latency) as model,
        ):
            mode = "lockstep" if lockstep else f"concurrency {opts.concurrency}"
            say(
                f"{title or name} online demo ({opts.optimizer.upper()} online, pattern {opts.pattern.upper()}, "
                f"seed {opts.seed}, {mode})"
            )
            sources = ", ".join(f"{k} {v}" for k, v in data.sources.items())
            say(
                f"  data:      {sources} ({len(data.train)} train, {len(data.test)} test, "
                f"{len(data.labels)} labels)"
            )
            say(f"  model:     {model.label} at {model.url}")
            with contextlib.ExitStack() as stack:
                backend = stack.enter_context(_backend(opts, model, Path(tmp), lockstep))
                container_app = create_container_app(
                    task_definition(data, task, shuffle_seed=opts.seed),
                    inference_api_key=backend.api_key,
                )
                container = stack.enter_context(InProcessContainer(container_app))
                health = wait_healthy(container.url)
                say(
                    f"  container: {container.url} healthy={health.get('healthy')} "
                    f"task={health.get('task')}"
                )
                try:
                    wait_healthy(backend.url)
                except Exception as exc:
                    raise DemoError(f"the backend at {backend.url} is not healthy: {exc}") from None
                kind = (
                    "embedded (synth-middleware serve, in-process)"
                    if backend.embedded
                    else "external"
                )
                say(f"  backend:   {backend.url} {kind}")
                proposer = opts.proposer_model or model.name
                cfg: dict[str, Any] = {
                    "online_proposer_min_rollouts": opts.min_proposal_rollouts,
                    "proposer_model": proposer,
                    **PROPOSAL_CONFIG,
                }
                if model.standin:
                    cfg["proposer_url"] = model.url
                if opts.copy_baseline_proposals:
                    cfg = {
                        "online_proposer_min_rollouts": opts.min_proposal_rollouts,
                        "demo_sets_per_batch": 0,
                        "max_demo_sets": 0,
                    }
                cfg.update(opts.session_config)
                client = stack.enter_context(
                    contextlib.closing(SynthClient(base_url=backend.url, api_key=backend.api_key))
                )
                session = client.optimization.online.create(
                    kind=f"{opts.optimizer}_online",
                    system_name=name,
                    session_id=f"{_session_prefix(name)}-{os.urandom(4).hex()}",
                    baseline=task.system_prompt,
                    overrides=cfg,
                )
                say(f"  session:   {session.session_id} proxy={session.proxy_url}")
                if opts.copy_baseline_proposals:
                    say(
                        f"  proposer:  none (control run: the demo adds {opts.copies} exact "
                        "copies of the baseline prompt as candidates)"
                    )
                else:
                    say(f"  proposer:  {proposer}" + (" (the stand-in)" if model.standin else ""))
                if opts.pattern == "a" and not backend.embedded:
                    if session.proxy_url is None:
                        raise DemoError("the session has no proxy URL for pattern a")
                    _preflight(session.proxy_url, backend, model, opts)
                say(
                    f"Running {opts.rollouts} rollouts over {train_size} train seeds "
                    f"(proposals after {opts.min_proposal_rollouts} rewards; {mode})"
                )
                names: dict[str, str] = {}
                counter = [0]
                rewards: list[float] = []
                watcher = _Watcher(
                    session,
                    say,
                    counter,
                    names,
                    task.system_prompt,
                    "copy" if opts.copy_baseline_proposals else "proposal",
                )
                copies_added: list[int] = []

                def add_copy() -> None:
                    session.add_candidate(
                        task.system_prompt, metadata={"control": "copy of the baseline"}
                    )
                    copies_added.append(counter[0])

                def copy_due(done: int) -> bool:
                    every = max(1, opts.min_proposal_rollouts)
                    return (
                        opts.copy_baseline_proposals
                        and len(copies_added) < opts.copies
                        and done >= every * (len(copies_added) + 1)
                    )

                after_each: Callable[[int], None] | None = None
                if lockstep:
                    sid = session.session_id

                    def after_each(done: int) -> None:
                        if copy_due(done):
                            add_copy()
                        backend.engine.optimizer.step(sid)
                        watcher.poll(dict(backend.engine.get_state(sid)))

                else:
                    watcher.start()
                started = time.perf_counter()
                with say.bar_for(opts.rollouts, "rollouts") as bar:

                    def on_done(res: Any) -> None:
                        counter[0] += 1
                        if res.reward is not None:
                            rewards.append(res.reward)
                        if not lockstep and copy_due(counter[0]):
                            with contextlib.suppress(Exception):
                                add_copy()
                        if bar is not None:
                            mean = sum(rewards) / len(rewards) if rewards else 0.0
                            bar.set_postfix(
                                mean_reward=f"{mean:.3f}", proposals=len(watcher.proposals)
                            )
                            bar.update(1)

                    if opts.pattern == "a":
                        records = _pattern_a(
                            opts, session, container, model, seeds, on_done, after_each
                        )
                    else:
                        records = _pattern_b(
                            opts, session, backend, model, task, train, seeds, on_done
                        )
                loop_seconds = time.perf_counter() - started
                watcher.stop()
                failed = [r for r in records if r["reward"] is None]
                if records and len(failed) == len(records):
                    raise DemoError(
                        f"all {len(records)} rollout(s) failed, so there is nothing to compare; "
                        f"the first error: {failed[0]['error']}"
                    )
                state = session.get_status()
                done = [r["reward"] for r in records if r["reward"] is not None]
                mean = sum(done) / len(done) if done else 0.0
                say(
                    f"Rollouts done in {loop_seconds:.1f}s: mean reward {mean:.3f} over "
                    f"{len(done)} ({len(failed)} failed); {len(watcher.proposals)} proposals"
                )
                if failed:
                    say(
                        f"  warning: {len(failed)} rollout(s) failed; the first error: "
                        f"{failed[0]['error']}"
                    )
                say(_candidate_table(state, names))
                say(
                    "(online means are adaptively collected: routing sends more traffic to "
                    "arms that did well early, so they are biased; the held-out evaluation "
                    "below is not)"
                )

                base_id = str(state.get("baseline_candidate_id") or "")
                best_id = str(state.get("best_candidate_id") or base_id)
                chosen: dict[str, str] = {"baseline": base_id}
                if best_id != base_id:
                    chosen["named best"] = best_id
                parsed: dict[str, Any] = {}
                base_cand = None
                for label, cid in chosen.items():
                    cand = parse_candidate(session.get_candidate(cid))
                    if label == "baseline":
                        base_cand = cand
                        parsed[label] = None
                    else:
                        parsed[label] = cand
                val = [train[s] for s in val_seeds]
                say(
                    f"Evaluating {' and '.join(chosen)} on {len(val)} validation seeds and "
                    f"{len(test)} held-out test queries (direct model calls; no session traffic)"
                )
                ev_started = time.perf_counter()
                conc = max(4, opts.concurrency * 2)
                val_scores = (
                    asyncio.run(_evaluate(model, task, parsed, base_cand, val, conc)) if val else {}
                )
                test_scores = asyncio.run(_evaluate(model, task, parsed, base_cand, test, conc))
                eval_seconds = time.perf_counter() - ev_started

            evaluation = _evaluation(chosen, val_scores, test_scores)
            say(_eval_table(evaluation))
            headline = _headline(evaluation, names.get(best_id, best_id), len(test))
            for line in headline:
                say(line)
            first_named = next(
                (p["after_rollouts"] for p in watcher.promotions if p["candidate_id"] != base_id),
                None,
            )
            results: dict[str, Any] = {
                "demo": name,
                "run_dir": str(run_dir),
                "options": {
                    **asdict(opts),
                    "train_size": train_size,
                    "val_size": val_size,
                    "lockstep": lockstep,
                    "standin_latency": latency,
                },
                "data": {
                    "name": name,
                    "sources": data.sources,
                    "sha256": data.digests,
                    "train_rows": len(data.train),
                    "test_rows": len(data.test),
                    "labels": list(data.labels),
                },
                "baseline_prompt": task.system_prompt,
                "model": {"name": model.name, "label": model.label, "standin": model.standin},
                "session_id": session.session_id,
                "pattern": opts.pattern,
                "lockstep": lockstep,
                "copy_baseline_proposals": opts.copy_baseline_proposals,
                "rollouts": records,
                "proposals": watcher.proposals,
                "copies_added_after_rollouts": copies_added,
                "promotions": watcher.promotions,
                "first_named_after_rollouts": first_named,
                "named_best": {
                    "candidate_id": best_id,
                    "name": names.get(best_id, best_id),
                    "is_baseline": best_id == base_id,
                },
                "final_state": {
                    k: state.get(k)
                    for k in (
                        "best_candidate_id",
                        "baseline_candidate_id",
                        "rollout_count",
                        "reward_count",
                        "candidates",
                        "optimizer",
                        "policy",
                    )
                },
                "evaluation": evaluation,
                "summary": headline,
            }
            png = None
            if opts.plot:
                plot_title = (
                    f"{title or name}, {opts.optimizer.upper()} online, pattern {opts.pattern.upper()}, "
                    f"seed {opts.seed}, {opts.rollouts} rollouts"
                    + (
                        ", proposals = copies of the baseline"
                        if opts.copy_baseline_proposals
                        else ""
                    )
                    + f"\nmodel: {model.label}"
                )
                png = plot_rollouts(
                    records,
                    names,
                    run_dir / "plot.png",
                    title=plot_title,
                    proposals=watcher.proposals,
                    promotions=watcher.promotions,
                    evaluation=evaluation.get("test"),
                )
            total = round(time.perf_counter() - t0, 1)
            results["seconds"] = {
                "rollouts": round(loop_seconds, 1),
                "evaluation": round(eval_seconds, 1),
                "total": total,
            }
            json_path = run_dir / "results.json"
            json_path.write_text(json.dumps(results, indent=2, default=str))
            say(f"Wrote {json_path}" + (f" and {png}" if png else " (no plot: install matplotlib)"))
            say(f"Total {total:.1f}s")
            return results
    finally:
        if lockstep:
            random.setstate(saved_random)
        if not (run_dir / "results.json").exists():  # failed: leave no empty run behind
            with contextlib.suppress(OSError):
                for leftover in run_dir.iterdir():
                    leftover.unlink()
                run_dir.rmdir()


def _session_prefix(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "classify"
    return f"{safe}-demo"


def _candidate_table(state: dict[str, Any], names: dict[str, str]) -> str:
    rows = []
    best = state.get("best_candidate_id")
    for c in state.get("candidates", []):
        cid = c["candidate_id"]
        avg = c.get("avg_reward")
        rows.append(
            [
                names.get(cid, "baseline" if c.get("is_baseline") else cid),
                cid,
                c.get("status") or "",
                str(c.get("reward_count") or 0),
                f"{avg:.3f}" if isinstance(avg, int | float) else "-",
                "named best" if cid == best else "",
            ]
        )
    return format_table(rows, ["candidate", "id", "status", "rewards", "online mean", ""])


def _evaluation(
    chosen: dict[str, str],
    val_scores: dict[str, list[float]],
    test_scores: dict[str, list[float]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"candidates": chosen, "val": {}, "test": {}}
    for split, scores in (("val", val_scores), ("test", test_scores)):
        if not scores:
            continue
        base = scores["baseline"]
        for label, values in scores.items():
            lo, hi = wilson(sum(values), len(values))
            entry: dict[str, Any] = {
                "candidate_id": chosen[label],
                "n": len(values),
                "accuracy": sum(values) / len(values) if values else 0.0,
                "accuracy_ci95": [lo, hi],
            }
            if label != "baseline" and values:
                entry["vs_baseline"] = paired_diff(base, values).to_json()
            out[split][label] = entry
    return out


def _eval_table(evaluation: dict[str, Any]) -> str:
    rows = []
    for split in ("val", "test"):
        for label, e in evaluation.get(split, {}).items():
            d = e.get("vs_baseline")
            diff = f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
            lo, hi = e["accuracy_ci95"]
            rows.append(
                [
                    "held-out test" if split == "test" else "validation",
                    label,
                    e["candidate_id"],
                    str(e["n"]),
                    f"{e['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
                    diff,
                ]
            )
    return format_table(
        rows,
        ["split", "candidate", "id", "n", "accuracy [95% CI]", "paired diff vs baseline [95% CI]"],
    )


def _headline(evaluation: dict[str, Any], best_name: str | None, n_test: int) -> list[str]:
    """The newcomer's summary: baseline vs the named best on held-out data."""
    test = evaluation.get("test", {})
    base = test.get("baseline")
    if base is None:
        return []
    lines = [f"Held-out test ({n_test} queries never used online):"]
    lines.append(f"  baseline prompt:      accuracy {base['accuracy']:.3f}")
    best = test.get("named best")
    if best is None:
        lines.append(
            "  named best:           the baseline (the backend named no candidate: none beat "
            "the baseline with enough evidence)"
        )
        return lines
    d = best["vs_baseline"]
    lo, hi = d["ci95"]
    lines.append(f"  named best ({best_name}): accuracy {best['accuracy']:.3f}")
    if lo > 0:
        verdict = "better than the baseline (the interval excludes zero)"
    elif hi < 0:
        verdict = "WORSE than the baseline (the interval excludes zero)"
    else:
        verdict = "not distinguishable from the baseline (the interval includes zero)"
    lines.append(
        f"  difference:           {100 * d['diff']:+.1f} points, paired 95% CI "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}]: {verdict}"
    )
    return lines
