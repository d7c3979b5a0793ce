"""The small shared helpers: backoff arithmetic, Retry-After, log-once, the fork reset."""

from __future__ import annotations

import logging
import os
import weakref

import pytest

from synth_middleware import _fork
from synth_middleware._logonce import LogOnce
from synth_middleware._retry import BackoffWait, attempt_state, backoff_delay
from synth_middleware.errors import error_for_status


def test_backoff_delay_doubles_to_the_cap_without_overflow() -> None:
    old = [min(300.0, 2.0 * 2.0 ** min(max(n - 1, 0), 60)) for n in range(0, 1300)]
    assert [backoff_delay(2.0, 300.0, n) for n in range(0, 1300)] == old
    # no backoff asked for stays none, however many failures (0.0 * 2**n overflows)
    assert backoff_delay(0.0, 300.0, 2000) == 0.0


def test_backoff_wait_honours_retry_after_and_the_cap() -> None:
    from synth_middleware.client._delivery import _retry_after

    wait = BackoffWait(0.2, 5.0, _retry_after)

    def state(attempt: int, exc: BaseException) -> object:
        st = attempt_state(attempt)
        st.set_exception((type(exc), exc, None))
        return st

    slow = error_for_status(429, "slow down", retry_after=2.0)
    for _ in range(20):
        assert 2.0 <= wait(state(1, slow)) <= 2.2  # Retry-After plus up to 10 %
        assert wait(state(1, error_for_status(503, "x", retry_after=60.0))) == 5.0
        assert 0.1 <= wait(state(1, OSError("reset"))) < 0.3  # jittered first delay
        assert wait(state(40, OSError("reset"))) <= 5.0


def test_log_once_logs_a_key_once_until_reset(caplog: pytest.LogCaptureFixture) -> None:
    logged = LogOnce(logging.getLogger("synth_middleware"), prefix="synth-middleware: ")
    with caplog.at_level(logging.WARNING, logger="synth_middleware"):
        assert logged.warning("k", "down: %s", 1)
        assert not logged.warning("k", "down: %s", 2)
        logged.reset("k")
        assert logged.warning("k", "down: %s", 3)
    assert [r.getMessage() for r in caplog.records] == [
        "synth-middleware: down: 1",
        "synth-middleware: down: 3",
    ]
    every = LogOnce(logging.getLogger("synth_middleware"), every=0.0)
    assert every.warning("k", "x") and every.warning("k", "x")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_reset_after_fork_runs_in_the_child_only() -> None:
    class Thing:
        resets = 0

        def reset(self) -> None:
            self.resets += 1

    thing = Thing()
    _fork.reset_after_fork(thing, "reset")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        os.write(write, str(thing.resets).encode())
        os._exit(0)
    os.close(write)
    got = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert got == b"1" and thing.resets == 0
    ref = weakref.ref(thing)
    del thing
    assert ref() is None  # the registry holds it weakly


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_optimizer_runner_takes_its_own_lease_identity() -> None:
    from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore

    eng = Engine(SqliteStore(":memory:"), optimizer=OptimizerOptions(background=False))
    try:
        parent = eng.optimizer.owner  # type: ignore[union-attr]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, eng.optimizer.owner.encode())  # type: ignore[union-attr]
            os._exit(0)
        os.close(write)
        child = os.read(read, 512).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert child and child != parent and f":{pid}:" in child
        assert eng.optimizer.owner == parent  # type: ignore[union-attr]
    finally:
        eng.close()
