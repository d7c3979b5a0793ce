"""Shared fixtures: a real local OpenAI-compatible server, real SQLite backends,
and an OpenTelemetry SDK provider with an in-memory exporter."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BANKING77_DIR = SHARED / "data" / "banking77"

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("SYNTH_EXIT_FLUSH_TIMEOUT", "2")


@pytest.fixture(scope="session")
def model_server() -> Iterator[object]:
    from synth_middleware.testing import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def server(model_server):  # type: ignore[no-untyped-def]
    model_server.reset()
    yield model_server
    model_server.reset()


@pytest.fixture
def backend(tmp_path: Path):  # type: ignore[no-untyped-def]
    import synth_middleware as synth
    from synth_middleware.backends.local import LocalBackend

    b = LocalBackend(str(tmp_path / "synth.db"))
    yield b
    synth.flush(2.0)  # let queued rollouts/rewards reach it before it closes
    b.close()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """``SYNTH_TEST_PG_URL`` (see tests/_pg.py): skips without it, fails under CI."""
    from _pg import require_pg_url

    return require_pg_url()


@pytest.fixture
def pg_target(pg_url: str) -> Iterator[str]:
    """A PostgreSQL URL bound to a fresh schema, dropped after the test."""
    from _pg import fresh_schema

    with fresh_schema(pg_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``open_store`` opens, once per store: a SQLite file, then a fresh
    PostgreSQL schema (the contract tests run against both)."""
    if request.param == "sqlite":
        return str(tmp_path / "synth.db")
    return str(request.getfixturevalue("pg_target"))


@pytest.fixture
def otel():  # type: ignore[no-untyped-def]
    """(provider, exporter): an SDK provider that is NOT installed globally."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def wire(request):  # type: ignore[no-untyped-def]
    """A wire-API test server (``_wire_server``) with the test module's ``SID`` session."""
    from _wire_server import WireServer
    from helpers import BASELINE

    with WireServer() as server:
        server.engine.ensure_session(request.module.SID, baseline=BASELINE)
        yield server


@pytest.fixture
def make_reporter():  # type: ignore[no-untyped-def]
    """A factory of reward reporters with fast test backoffs, closed afterwards."""
    from synth_middleware.client.reporter import RewardReporter

    made: list[RewardReporter] = []

    def make(backend, **options):  # type: ignore[no-untyped-def]
        opts = {
            "backoff": 0.02,
            "max_backoff": 0.3,
            "max_retries": 200,
            "interval": 0.01,
            "batch_size": 50,
        }
        opts.update(options)
        rep = RewardReporter(backend, **opts)
        made.append(rep)
        return rep

    yield make
    for rep in made:
        rep.close(0)
