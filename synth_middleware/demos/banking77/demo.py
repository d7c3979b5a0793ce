"""``synth-middleware demo banking77``: MIPRO online on Banking77, end to end, offline by default.

What it does (the reference walkthrough, on our own backend)::

    synth-middleware demo banking77 --rollouts 100 --train-size 200 --val-size 10 \\
        --min-proposal-rollouts 20 [--model gpt-4.1-nano] [--pattern a|b] [--seed N]

1. loads Banking77 (``--data-dir``, ``$BANKING77_DIR`` or a verified download);
2. starts the model: the offline **stand-in** (TF-IDF nearest neighbours, not an
   LLM; :mod:`~synth_middleware.demos.banking77.standin`) unless ``--model``
   names a real one (then ``OPENAI_API_KEY``, optional ``OPENAI_BASE_URL``);
3. starts the Banking77 container and the backend (``synth-middleware serve``'s
   app in-process, with the online optimizer; or ``--backend-url``/``$SYNTH_URL``)
   and health-checks both;
4. creates a MIPRO online session whose proposer is the same model;
5. runs ``--rollouts`` rollouts over the train seeds with a progress bar:
   **pattern a**, the container calls the session's proxy
   (``inference_url = {proxy_url}/{rollout_id}``; the proxy substitutes the
   candidate, so the container never sees it); **pattern b**, the app calls
   the model itself through a wrapped OpenAI client (``synth.wrap``) that
   applies the candidate just in time. Rewards go back to the session and new
   proposals are printed as they appear;
6. evaluates the baseline and the backend's best candidate (and, when the
   backend kept the baseline, the strongest challenger) on the validation
   seeds and on ``--test-size`` held-out test queries, prints a table with the
   paired difference and its 95% CI, and writes ``banking77_seed{N}.json`` and
   ``banking77_seed{N}.png`` (reward over rollouts per candidate) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from synth_middleware.demos.banking77 import data as dataset
from synth_middleware.demos.banking77.parsing import example_blocks
from synth_middleware.demos.banking77.report import (
    format_table,
    paired_diff,
    plot_rollouts,
    wilson,
)
from synth_middleware.demos.banking77.standin import MODEL_NAME, STANDIN_NOTE
from synth_middleware.demos.banking77.task import SYSTEM_PROMPT, Banking77Task

__all__ = ["DemoOptions", "describe_candidate", "main", "run"]

STANDIN = "standin"
SESSION_PREFIX = "banking77-demo"


@dataclass
class DemoOptions:
    """The demo's settings (the command's flags)."""

    rollouts: int = 100
    train_size: int = 200
    val_size: int = 10
    min_proposal_rollouts: int = 20
    model: str = STANDIN
    proposer_model: str | None = None
    pattern: str = "a"
    seed: int = 0
    test_size: int = 400
    concurrency: int = 4
    data_dir: str | None = None
    out: str = "results/banking77"
    backend_url: str | None = None
    optimizer_interval: float = 0.05
    standin_latency: float = 0.2
    progress: bool = True
    plot: bool = True
    session_config: dict[str, Any] = field(default_factory=dict)

    @property
    def standin(self) -> bool:
        """Whether the model is the offline stand-in."""
        return self.model in (STANDIN, MODEL_NAME)


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
    """Progress for logs: one line per 10% (tqdm's interface, the parts we use)."""

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


# --------------------------------------------------------------------------- model


@dataclass
class _Model:
    url: str  # OpenAI base URL (ends in /v1)
    name: str  # the model name requests carry
    label: str  # how outputs name it
    api_key: str | None
    standin: bool


@contextlib.contextmanager
def _model(opts: DemoOptions, labels: Sequence[str]) -> Iterator[_Model]:
    if opts.standin:
        from synth_middleware.demos.banking77.standin import StandInModel

        with StandInModel(labels, latency=opts.standin_latency) as srv:
            label = f"{MODEL_NAME} ({STANDIN_NOTE}; {opts.standin_latency:g}s simulated latency)"
            yield _Model(srv.url, MODEL_NAME, label, None, True)
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


@contextlib.contextmanager
def _backend(opts: DemoOptions, model: _Model, workdir: Path) -> Iterator[_Backend]:
    external = opts.backend_url
    if external:
        yield _Backend(external.rstrip("/"), os.environ.get("SYNTH_API_KEY"), False)
        return
    from synth_middleware.container import InProcessServer
    from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore
    from synth_middleware.server import create_app

    env: dict[str, str] = dict(os.environ)
    if not model.standin:
        env["SYNTH_PROPOSER_URL"] = model.url  # the proposer's key may go to this host only
    options = OptimizerOptions(
        interval=opts.optimizer_interval,
        backoff_initial=0.2,
        backoff_max=5.0,
        seed=opts.seed,
        env=env,
    )
    engine = Engine(SqliteStore(str(workdir / "synth.db")), optimizer=options)
    app = create_app(
        engine,
        upstream_url=model.url,
        upstream_api_key=model.api_key or "none",
        proxy_refresh_interval=0.05,
        dashboard=False,
    )
    try:
        with InProcessServer(app, lifespan="on", name="backend") as srv:
            yield _Backend(srv.url, None, True)
    finally:
        if engine.optimizer is not None:
            engine.optimizer.stop()
        engine.close()


# --------------------------------------------------------------------------- watcher


class _Watcher(threading.Thread):
    """Polls the session's candidates and prints each new proposal once."""

    def __init__(self, session: Any, say: _Out, counter: list[int], names: dict[str, str]) -> None:
        super().__init__(name="proposal-watcher", daemon=True)
        self.session = session
        self.say = say
        self.counter = counter
        self.names = names
        self.proposals: list[dict[str, Any]] = []
        self._stop_event = threading.Event()
        self._seen: set[str] = set()

    def poll(self) -> None:
        page = self.session.list_candidates(limit=1000, include="prompt_text", status="all")
        for item in page.get("items", []):
            cid = item["candidate_id"]
            if cid in self._seen:
                continue
            self._seen.add(cid)
            if item.get("is_baseline"):
                self.names.setdefault(cid, "baseline")
                continue
            n = len(self.proposals) + 1
            self.names[cid] = f"proposal {n}"
            text = item.get("candidate_content")
            payload = item.get("artifact_payload")
            desc = describe_candidate(text, payload)
            record = {
                "candidate_id": cid,
                "name": f"proposal {n}",
                "after_rollouts": self.counter[0],
                "content": text,
                "payload": payload,
                **desc,
            }
            self.proposals.append(record)
            self.say(
                f"  + proposal {n} ({cid}) after {self.counter[0]} rollouts: "
                f"{desc['instruction']} + {desc['examples']} labelled example(s)"
            )

    def run(self) -> None:
        while not self._stop_event.wait(0.25):
            with contextlib.suppress(Exception):
                self.poll()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        with contextlib.suppress(Exception):
            self.poll()


def describe_candidate(text: str | None, payload: Any) -> dict[str, Any]:
    """``{instruction, examples}``: whether the candidate keeps the baseline instruction
    (else its first words) and how many labelled examples it carries."""
    examples = 0
    instruction = text or ""
    if text is None and isinstance(payload, dict):
        for inj in payload.get("example_injections") or []:
            examples += sum(1 for m in inj.get("examples") or [] if m.get("role") == "user")
        for rep in payload.get("text_replacements") or []:
            instruction = str(rep.get("new_text") or "")
        instruction = instruction or SYSTEM_PROMPT
    else:
        examples = len(example_blocks(instruction))
        for marker in ("\n\nHere are examples", "\n\nLabelled examples", "\nExample 1:"):
            instruction = instruction.split(marker)[0]
    same = " ".join(instruction.split()) == " ".join(SYSTEM_PROMPT.split())
    head = "the baseline instruction" if same else f'"{" ".join(instruction.split())[:70]}..."'
    return {"instruction": head, "examples": examples, "new_instruction": not same}


# --------------------------------------------------------------------------- rollouts


def _pattern_a(
    opts: DemoOptions,
    session: Any,
    container: Any,
    model: _Model,
    seeds: Sequence[int],
    on_done: Any,
) -> list[dict[str, Any]]:
    from synth_middleware.container import AsyncContainerClient, OnlineRunner

    async def go() -> list[dict[str, Any]]:
        client = AsyncContainerClient(container.url, container.api_key, timeout=120.0)
        runner = OnlineRunner(client, session, model=model.name, env_config={"split": "train"})
        try:
            results = await runner.run(seeds, concurrency=opts.concurrency, on_result=on_done)
        finally:
            await client.aclose()
        return [
            {
                "seed": r.seed,
                "rollout_id": r.rollout_id,
                "candidate_id": r.candidate_id,
                "reward": r.reward,
                "expected": r.details.get("expected"),
                "predicted": r.details.get("predicted"),
                "error": r.error,
                "seconds": round(r.seconds, 4),
            }
            for r in results
        ]

    return asyncio.run(go())


def _pattern_b(
    opts: DemoOptions,
    session: Any,
    backend: _Backend,
    model: _Model,
    task: Banking77Task,
    train: Sequence[dataset.Example],
    seeds: Sequence[int],
    on_done: Any,
) -> list[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    import openai

    import synth_middleware as synth
    from synth_middleware.backends.http import HttpBackend
    from synth_middleware.container import OnlineRolloutResult

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
                model=model.name, messages=task.messages(ex.text), **params
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
    task: Banking77Task,
    candidates: dict[str, Any],
    baseline: Any,
    examples: Sequence[dataset.Example],
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

        async def one(name: str, cand: Any, i: int, ex: dataset.Example) -> None:
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
                raise RuntimeError(f"evaluation call failed: {resp.status_code} {resp.text[:200]}")
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


def run(opts: DemoOptions, *, stream: IO[str] | None = None) -> dict[str, Any]:
    """Run the demo; return the results (also written as JSON next to the plot)."""
    from synth_middleware.client.candidates import parse_candidate
    from synth_middleware.container import (
        InProcessContainer,
        create_container_app,
        wait_healthy,
    )
    from synth_middleware.demos.banking77.task import task_definition
    from synth_middleware.sdk import SynthClient

    if opts.pattern not in ("a", "b"):
        raise ValueError("pattern must be 'a' or 'b'")
    say = _Out(stream or sys.stdout, opts.progress)
    t0 = time.perf_counter()
    import openai  # noqa: F401  (imported here, not first in the optimizer thread mid-run)

    data = dataset.load(opts.data_dir, progress=opts.progress)
    task = Banking77Task(data.labels)
    if opts.train_size + opts.val_size > len(data.train):
        raise ValueError(f"train-size + val-size must be at most {len(data.train)}")
    train = data.shuffled("train", opts.seed)
    test = data.shuffled("test", opts.seed)[: opts.test_size]
    train_seeds = list(range(opts.train_size))
    val_seeds = list(range(opts.train_size, opts.train_size + opts.val_size))
    rng = random.Random(opts.seed)
    order = train_seeds[:]
    rng.shuffle(order)
    seeds = [order[i % len(order)] for i in range(opts.rollouts)]
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"banking77_seed{opts.seed}" + ("_b" if opts.pattern == "b" else "")

    with (
        tempfile.TemporaryDirectory(prefix="synth-demo-") as tmp,
        _model(opts, data.labels) as model,
    ):
        say(
            f"Banking77 online demo (MIPRO online, pattern {opts.pattern.upper()}, seed {opts.seed})"
        )
        say(
            f"  data:      {data.source} ({len(data.train)} train, {len(data.test)} test, 77 intents)"
        )
        say(f"  model:     {model.label} at {model.url}")
        with contextlib.ExitStack() as stack:
            backend = stack.enter_context(_backend(opts, model, Path(tmp)))
            # the container's model calls go to the backend's proxy, with its key if it has one
            container_app = create_container_app(
                task_definition(data, shuffle_seed=opts.seed), inference_api_key=backend.api_key
            )
            container = stack.enter_context(InProcessContainer(container_app))
            health = wait_healthy(container.url)
            say(
                f"  container: {container.url} healthy={health.get('healthy')} task={health.get('task')}"
            )
            bh = wait_healthy(backend.url)
            kind = (
                "embedded (synth-middleware serve, in-process)" if backend.embedded else "external"
            )
            say(f"  backend:   {backend.url} {kind} healthy={bool(bh) or True}")
            proposer = opts.proposer_model or model.name
            cfg: dict[str, Any] = {
                "online_proposer_min_rollouts": opts.min_proposal_rollouts,
                "proposer_model": proposer,
                **opts.session_config,
            }
            if model.standin:
                cfg["proposer_url"] = model.url
            client = SynthClient(base_url=backend.url, api_key=backend.api_key)
            session = client.optimization.online.create(
                kind="mipro_online",
                system_name="banking77",
                session_id=f"{SESSION_PREFIX}-{os.urandom(4).hex()}",
                baseline=SYSTEM_PROMPT,
                overrides=cfg,
            )
            say(f"  session:   {session.session_id} proxy={session.proxy_url}")
            say(f"  proposer:  {proposer}" + (f" ({STANDIN_NOTE})" if model.standin else ""))
            say(
                f"Running {opts.rollouts} rollouts over {opts.train_size} train seeds "
                f"(concurrency {opts.concurrency}; proposals after {opts.min_proposal_rollouts})"
            )
            names: dict[str, str] = {}
            counter = [0]
            rewards: list[float] = []
            watcher = _Watcher(session, say, counter, names)
            watcher.start()
            started = time.perf_counter()
            with say.bar_for(opts.rollouts, "rollouts") as bar:

                def on_done(res: Any) -> None:
                    counter[0] += 1
                    if res.reward is not None:
                        rewards.append(res.reward)
                    if bar is not None:
                        mean = sum(rewards) / len(rewards) if rewards else 0.0
                        bar.set_postfix(mean_reward=f"{mean:.3f}", proposals=len(watcher.proposals))
                        bar.update(1)

                if opts.pattern == "a":
                    records = _pattern_a(opts, session, container, model, seeds, on_done)
                else:
                    records = _pattern_b(opts, session, backend, model, task, train, seeds, on_done)
            loop_seconds = time.perf_counter() - started
            watcher.stop()
            state = session.get_status()
            failed = sum(1 for r in records if r["reward"] is None)
            done = [r["reward"] for r in records if r["reward"] is not None]
            mean = sum(done) / len(done) if done else 0.0
            say(
                f"Rollouts done in {loop_seconds:.1f}s: mean reward {mean:.3f} over {len(done)} "
                f"({failed} failed); {len(watcher.proposals)} proposals"
            )
            say(_candidate_table(state, names))
            say(
                "(online means are adaptively collected: routing sends more traffic to arms "
                "that did well early, so small-sample means are biased; the held-out "
                "evaluation below is not)"
            )

            # evaluation: baseline vs the backend's best (and the top challenger)
            base_id = state.get("baseline_candidate_id")
            best_id = state.get("best_candidate_id") or base_id
            challenger = _challenger(state, base_id)
            chosen: dict[str, str] = {"baseline": base_id}
            if best_id != base_id:
                chosen["best"] = best_id
            if challenger is not None and challenger != best_id:
                chosen["top challenger"] = challenger
            parsed: dict[str, Any] = {}
            base_cand = None
            for label, cid in chosen.items():
                item = session.get_candidate(cid)
                cand = parse_candidate(item)
                if label == "baseline":
                    base_cand = cand
                    parsed[label] = None
                else:
                    parsed[label] = cand
            val = [train[s] for s in val_seeds]
            say(
                f"Evaluating {', '.join(chosen)} on {len(val)} validation seeds and "
                f"{len(test)} held-out test queries (direct model calls; no session traffic)"
            )
            ev_started = time.perf_counter()
            val_scores = (
                asyncio.run(_evaluate(model, task, parsed, base_cand, val, opts.concurrency * 2))
                if val
                else {}
            )
            test_scores = asyncio.run(
                _evaluate(model, task, parsed, base_cand, test, opts.concurrency * 2)
            )
            eval_seconds = time.perf_counter() - ev_started
        evaluation = _evaluation(chosen, val_scores, test_scores)
        say(_eval_table(evaluation, best_named=best_id != base_id))
        if best_id == base_id:
            say(
                "The backend kept the baseline as best: no candidate beat it with enough "
                "evidence (min_rollouts_for_best rewards and P(beats baseline) >= "
                "promotion_confidence)."
            )
        results = {
            "demo": "banking77",
            "options": asdict(opts),
            "model": {"name": model.name, "label": model.label, "standin": model.standin},
            "session_id": session.session_id,
            "pattern": opts.pattern,
            "seconds": {
                "rollouts": round(loop_seconds, 2),
                "evaluation": round(eval_seconds, 2),
                "total": round(time.perf_counter() - t0, 2),
            },
            "rollouts": records,
            "proposals": watcher.proposals,
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
        }
        json_path = out_dir / f"{stem}.json"
        json_path.write_text(json.dumps(results, indent=2, default=str))
        png = None
        if opts.plot:
            title = (
                f"Banking77, MIPRO online, pattern {opts.pattern.upper()}, seed {opts.seed}, "
                f"{opts.rollouts} rollouts\nmodel: {model.label}"
            )
            png = plot_rollouts(
                records, names, out_dir / f"{stem}.png", title=title, proposals=watcher.proposals
            )
        say(f"Wrote {json_path}" + (f" and {png}" if png else " (no plot: install matplotlib)"))
        say(f"Total {time.perf_counter() - t0:.1f}s")
        client.close()
        return results


def _challenger(state: dict[str, Any], base_id: str | None) -> str | None:
    """The non-baseline candidate with the highest mean reward among those with the most
    evidence (at least half the rewards of the best-evaluated one), if any."""
    cands = [
        c
        for c in state.get("candidates", [])
        if c["candidate_id"] != base_id and (c.get("reward_count") or 0) > 0
    ]
    if not cands:
        return None
    most = max(c.get("reward_count") or 0 for c in cands)
    pool = [c for c in cands if (c.get("reward_count") or 0) >= max(1, most // 2)]
    return max(pool, key=lambda c: c.get("avg_reward") or 0.0)["candidate_id"]  # type: ignore[no-any-return]


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
                "best" if cid == best else "",
            ]
        )
    return format_table(rows, ["candidate", "id", "status", "rewards", "mean", ""])


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
        for name, values in scores.items():
            lo, hi = wilson(sum(values), len(values))
            entry: dict[str, Any] = {
                "candidate_id": chosen[name],
                "n": len(values),
                "accuracy": sum(values) / len(values),
                "accuracy_ci95": [lo, hi],
            }
            if name != "baseline":
                entry["vs_baseline"] = paired_diff(base, values).to_json()
            out[split][name] = entry
    return out


def _eval_table(evaluation: dict[str, Any], *, best_named: bool) -> str:
    rows = []
    for split in ("val", "test"):
        for name, e in evaluation.get(split, {}).items():
            d = e.get("vs_baseline")
            diff = f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
            rows.append(
                [
                    split,
                    name,
                    e["candidate_id"],
                    str(e["n"]),
                    f"{e['accuracy']:.3f}",
                    diff,
                ]
            )
    return format_table(
        rows, ["split", "candidate", "id", "n", "accuracy", "diff vs baseline [95% CI]"]
    )


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m synth_middleware.demos.banking77.demo`` (same flags as the CLI)."""
    from synth_middleware.demos._cli import configure_banking77, run_banking77

    parser = argparse.ArgumentParser(prog="banking77-demo", description=__doc__)
    configure_banking77(parser)
    return run_banking77(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
