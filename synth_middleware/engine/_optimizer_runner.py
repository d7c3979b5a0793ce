"""Runs the online optimizers of one engine in a background thread.

The runner is attached to an engine from outside
(:func:`~synth_middleware.engine.factory.attach_optimizer`, which
``Engine(optimizer=...)`` calls): it sees the engine only through
:class:`OptimizerHost`, and the engine sees it only through
:class:`~synth_middleware.engine.engine.AttachedOptimizer`. The engine calls
:meth:`OptimizerRunner.notify` after each commit that can matter (rewards,
candidates, config, status): a set insert and an event set, so reward ingestion and candidate serving never wait on an optimizer. The
thread then steps each touched session, at most once per ``interval``:

1. apply the selection policy's pruning (archive, with the evidence in the reason),
   and record changes of the named best (promotion, rollback) in the
   session's ``optimizer.best_history``;
2. if :func:`~synth_middleware.engine.optimizers.base.trigger` says go, take
   the session's optimizer lease (one writer across processes sharing the
   database), read recent rollouts, run the optimizer round (proposer calls
   happen here, with no engine lock held) and add its candidates.

Failures (proposer down, bad answers, storage errors) back off exponentially
per session and are visible in the session state::

    state["optimizer"] == {"status": "backoff", "last_error": "APIConnectionError: ...",
                           "failures": 2, "next_retry_at": 1718000000.0,
                           "proposals": 3, "malformed": 1, "rounds": 4, ...}
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from synth_middleware._fork import reset_after_fork
from synth_middleware._retry import backoff_delay
from synth_middleware.engine._optimizer_options import OptimizerOptions
from synth_middleware.engine.config import parse_session_config
from synth_middleware.engine.optimizers import OPTIMIZERS
from synth_middleware.engine.optimizers.base import (
    RoundContext,
    generation_rewards,
    optimizer_candidates,
    traces_from_records,
    trigger,
)
from synth_middleware.engine.proposer import ProposerFactory, scrub_secrets
from synth_middleware.engine.state import OPTIMIZER_INTERNAL_KEYS, SessionStateMachine
from synth_middleware.errors import InvalidRequestError, NotFoundError

__all__ = ["OptimizerHost", "OptimizerOptions", "OptimizerRunner"]

log = logging.getLogger("synth_middleware.engine.optimizer")

_HISTORY_KEEP = 20
_ERROR_CHARS = 500


class OptimizerHost(Protocol):
    """What the runner uses of its engine (:class:`~synth_middleware.engine.Engine`
    has all of it); a protocol so this module does not import the engine."""

    def session_ids(self) -> list[str]:
        """Every session id in the store."""
        ...

    def session_state(self, session_id: str) -> SessionStateMachine:
        """A copy of the session's state."""
        ...

    def rollout_records(self, session_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The session's recent rollouts with their rewards."""
        ...

    def add_candidate(
        self,
        session_id: str,
        content: str | None,
        *,
        payload: Any = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Add an active candidate; return its id."""
        ...

    def archive_candidate(
        self, session_id: str, candidate_id: str, *, reason: str = "archived"
    ) -> bool:
        """Archive a candidate; False if it was archived already."""
        ...

    def update_optimizer(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        owner: str | None = None,
        lease_seconds: float | None = None,
    ) -> bool:
        """Patch the session's optimizer state (under the round lease with ``owner``)."""
        ...


@dataclass(slots=True)
class _Run:
    """Per-session scheduling state (in memory, per process)."""

    not_before: float = 0.0  # monotonic: rate limit between steps
    retry_at: float = 0.0  # monotonic: no round before this (backoff)
    failures: int = 0
    empty_rounds: int = 0
    errors_logged: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class OptimizerRunner:
    """Background optimizer rounds for every session of one engine.

    Build it with :func:`~synth_middleware.engine.factory.attach_optimizer` (or
    ``Engine(optimizer=...)``), which also registers it with the engine."""

    def __init__(self, engine: OptimizerHost, options: OptimizerOptions | None = None) -> None:
        self._engine = engine
        self.options = opts = options or OptimizerOptions()
        self._proposers = ProposerFactory(
            client=opts.proposer_client,
            default_model=opts.proposer_model,
            env=opts.env,
            client_factory=opts.client_factory,
        )
        self._rng = random.Random(opts.seed)
        self._init_threading()
        # the thread does not survive a fork, and a lock it held would stay held
        reset_after_fork(self, "_init_threading")

    def _init_threading(self) -> None:
        # a forked child is another process: its own round-lease identity, so that
        # parent and child never both believe they hold one session's lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._dirty: set[str] = set()
        self._runs: dict[str, _Run] = {}
        self._thread: threading.Thread | None = None
        self._next_scan = 0.0

    # -- lifecycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def notify(self, session_ids: Iterable[str]) -> None:
        """Mark sessions as changed; cheap, called by the engine after commits."""
        with self._lock:
            self._dirty.update(session_ids)
        if self.options.background and not self._stopping.is_set():
            if self._thread is None or not self._thread.is_alive():
                self.start()
            self._wake.set()

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="synth-optimizer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; a proposer call in flight is abandoned after ``timeout``."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        opts = self.options
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= self._next_scan:
                self._next_scan = now + opts.scan_interval
                try:  # sessions written by other processes sharing the database
                    ids = self._engine.session_ids()
                except Exception:
                    ids = []
                with self._lock:
                    self._dirty.update(ids)
            with self._lock:
                due = [s for s in self._dirty if self._run(s).not_before <= now]
                self._dirty.difference_update(due)
            for sid in due:
                if self._stopping.is_set():
                    return
                try:
                    if opts.session_gate is None:
                        self.step(sid)
                    else:
                        with opts.session_gate(sid) as owned:
                            if owned:
                                self.step(sid)
                except Exception as exc:  # storage trouble: retry later, log rarely
                    run = self._run(sid)
                    run.errors_logged += 1
                    run.not_before = time.monotonic() + opts.backoff_initial
                    if run.errors_logged in (1, 10, 100):
                        log.warning("optimizer step for session %s failed: %r", sid, exc)
                    with self._lock:
                        self._dirty.add(sid)
            with self._lock:
                waits = [self._run(s).not_before - time.monotonic() for s in self._dirty]
            wait = min([opts.scan_interval, *waits])
            self._wake.wait(max(0.01, wait))
            self._wake.clear()

    def _run(self, sid: str) -> _Run:
        run = self._runs.get(sid)
        if run is None:
            run = self._runs[sid] = _Run()
        return run

    # -- one step -------------------------------------------------------------------

    def step(self, session_id: str, *, force: bool = False) -> dict[str, Any]:
        """Prune, track the best, and run one optimizer round if due; return the
        session's optimizer status afterwards. ``force`` ignores backoff."""
        with self._step_lock:
            return self._step(session_id, force)

    def _step(self, sid: str, force: bool) -> dict[str, Any]:
        opts = self.options
        engine = self._engine
        run = self._run(sid)
        now = time.monotonic()
        run.not_before = now + opts.interval
        try:
            st = engine.session_state(sid)
        except NotFoundError:
            self._runs.pop(sid, None)
            return {}
        optimizer_cls = OPTIMIZERS.get(st.kind or "")
        if optimizer_cls is None:
            return {}
        try:
            cfg = parse_session_config(st.config, st.kind)
        except InvalidRequestError as exc:
            return self._write(
                st, {"status": "config_error", "last_error": str(exc)[:_ERROR_CHARS]}
            )
        if not cfg.online_optimizer_enabled:
            return self._write(st, {"status": "disabled"})

        patch: dict[str, Any] = {}
        if st.status == "running":
            pruned = 0  # the policy archives only on evidence (engine.policy): all "pruned"
            for cid, why in st.policy().prune:
                if engine.archive_candidate(sid, cid, reason=why[:200]):
                    pruned += 1
            retired = self._retire_dormant(st, cfg)
            if pruned:
                patch["pruned"] = int(st.optimizer.get("pruned", 0)) + pruned
            if retired:
                patch["retired"] = int(st.optimizer.get("retired", 0)) + retired
            if pruned or retired:
                st = engine.session_state(sid)
        self._track_best(st, patch)

        reason = trigger(st, cfg, st.policy())
        if reason is None and now < run.retry_at and not force:
            with self._lock:  # come back when the backoff ends
                self._dirty.add(sid)
            run.not_before = max(run.not_before, run.retry_at)
            return self._write(st, patch)
        if reason is not None:
            patch["status"] = reason
            return self._write(st, patch)
        return self._round(st, cfg, optimizer_cls, run, patch)

    def _round(
        self,
        st: SessionStateMachine,
        cfg: Any,
        optimizer_cls: type,
        run: _Run,
        patch: dict[str, Any],
    ) -> dict[str, Any]:
        opts = self.options
        engine = self._engine
        sid = st.session_id
        patch["status"] = "proposing"
        if not engine.update_optimizer(
            sid, patch, owner=self.owner, lease_seconds=opts.lease_seconds
        ):
            return dict(st.optimizer)  # another process holds the lease
        counters = {k: int(st.optimizer.get(k, 0)) for k in ("proposals", "malformed", "rounds")}
        calls = int(st.optimizer.get("proposer_calls", 0))
        done: dict[str, Any] = {"last_round_at": time.time()}
        added: list[str] = []
        error: BaseException | None = None
        result = None
        try:
            records = engine.rollout_records(sid, limit=min(cfg.online_history_rollouts, 10_000))
            proposer = self._proposers.for_config(cfg)
            ctx = RoundContext(
                state=st,
                config=cfg,
                decision=st.policy(),
                traces=traces_from_records(records),
                proposer=proposer,
                rng=self._rng,
                pool=st.optimizer.get("pool") or {},
            )
            result = optimizer_cls().propose(ctx)
            seen = generation_rewards(st)  # what the spacing of the next round counts from
            for p in result.proposals:
                added.append(
                    engine.add_candidate(
                        sid,
                        p.content,
                        payload=p.payload,
                        parent_id=p.parent_id,
                        metadata={**p.metadata, "after_rewards": seen},
                    )
                )
            error = result.error
        except Exception as exc:
            error = exc
        if result is not None:
            counters["malformed"] += result.malformed
            calls += result.proposer_calls
            if result.pool is not None:
                done["pool"] = result.pool
        counters["proposals"] += len(added)
        counters["rounds"] += 1
        done.update(counters)
        done["proposer_calls"] = calls
        now = time.monotonic()
        if error is not None:
            run.failures += 1
            delay = backoff_delay(opts.backoff_initial, opts.backoff_max, run.failures)
            delay *= 0.8 + 0.4 * self._rng.random()
            run.retry_at = now + delay
            env = self._proposers.env
            message = scrub_secrets(f"{type(error).__name__}: {error}", env)[:_ERROR_CHARS]
            done.update(
                status="backoff",
                last_error=message,
                failures=run.failures,
                next_retry_at=time.time() + delay,
            )
            if run.failures in (1, 5) or run.failures % 20 == 0:
                log.warning(
                    "optimizer round for session %s failed (%d in a row; retry in %.0fs): %s",
                    sid,
                    run.failures,
                    delay,
                    message,
                )
        else:
            run.failures = 0
            done.update(failures=0, last_error=None, next_retry_at=None)
            if added:
                run.empty_rounds = 0
                run.retry_at = 0.0
                done["status"] = "proposed"
                done["last_proposed"] = added
            else:  # nothing to add: try again later, not on every reward
                run.empty_rounds += 1
                delay = backoff_delay(opts.backoff_initial, opts.backoff_max, run.empty_rounds)
                run.retry_at = now + delay
                done["status"] = result.note if result is not None else "idle"
                done["next_retry_at"] = time.time() + delay
        if run.retry_at > now:
            with self._lock:
                self._dirty.add(sid)
        if added:  # new candidates may change the trigger at once
            with self._lock:
                self._dirty.add(sid)
        return self._write(engine.session_state(sid), done)

    def _retire_dormant(self, st: SessionStateMachine, cfg: Any) -> int:
        """Archive the least likely dormant optimizer candidates beyond
        ``online_max_active_candidates`` (they get almost no traffic anyway)."""
        decision = st.policy()
        mine = [
            c
            for c in optimizer_candidates(st)
            if c.status == "active"
            and c.candidate_id in decision.verdicts
            and not decision.verdicts[c.candidate_id].prune_reason  # archived just now
        ]
        excess = len(mine) - cfg.online_max_active_candidates
        if excess <= 0:
            return 0
        dormant = sorted(
            (
                decision.verdicts[c.candidate_id]
                for c in mine
                if decision.verdicts[c.candidate_id].p_best < cfg.online_dormant_probability
                and c.candidate_id != decision.best_id
            ),
            key=lambda v: v.p_best,
        )
        n = 0
        for v in dormant[:excess]:
            reason = f"retired: dormant (P(best)={v.p_best:.2g} after {v.n} rewards)"
            if self._engine.archive_candidate(st.session_id, v.candidate_id, reason=reason):
                n += 1
        return n

    def _track_best(self, st: SessionStateMachine, patch: dict[str, Any]) -> None:
        """Record promotions and rollbacks of the named best."""
        decision = st.policy()
        best = decision.best_id
        prev = st.optimizer.get("best_candidate_id")
        if best == prev or (prev is None and best == st.baseline_candidate_id):
            if prev is None and best is not None:
                patch["best_candidate_id"] = best
            return
        if best is None:
            return
        verdict = decision.verdicts.get(best)
        was_promoted = prev is not None and prev != st.baseline_candidate_id
        if best == st.baseline_candidate_id:
            action = "rolled_back" if was_promoted else "baseline"
        else:
            action = "replaced" if was_promoted else "promoted"
        entry = {
            "candidate_id": best,
            "previous": prev,
            "action": action,
            "at": time.time(),
            "rewards": verdict.n if verdict else None,
            "p_beats_baseline": verdict.p_beats_baseline if verdict else None,
        }
        if prev is not None and prev in decision.verdicts:
            entry["previous_p_beats_baseline"] = decision.verdicts[prev].p_beats_baseline
        history = list(st.optimizer.get("best_history") or [])
        patch["best_candidate_id"] = best
        patch["best_history"] = [*history, entry][-_HISTORY_KEEP:]

    def _write(self, st: SessionStateMachine, patch: dict[str, Any]) -> dict[str, Any]:
        """Write what changed; return the optimizer state as it is now (best effort)."""
        changed = {k: v for k, v in patch.items() if st.optimizer.get(k) != v}
        ok = True
        if changed:
            ok = self._engine.update_optimizer(
                st.session_id, changed, owner=self.owner, lease_seconds=0
            )
        out = dict(st.optimizer)
        if ok:
            for k, v in changed.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
        return {k: v for k, v in out.items() if k not in OPTIMIZER_INTERNAL_KEYS}

