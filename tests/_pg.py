"""PostgreSQL for tests: the server named by ``SYNTH_TEST_PG_URL`` (``.ci/run`` starts
one with ``scripts/ci_postgres.sh``), one fresh schema per test.

Without the variable the PostgreSQL tests skip with a message, except under
``CI``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

PG_ENV = "SYNTH_TEST_PG_URL"
HOW = 'start one with: eval "$(scripts/ci_postgres.sh)"'


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason} ({HOW})", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason} ({HOW})")


def require_pg_url() -> str:
    """The test server's URL, checked to answer; else skip (fail under ``CI``)."""
    url = os.environ.get(PG_ENV)
    if not url:
        _unavailable(f"{PG_ENV} is not set")
        raise AssertionError("unreachable")
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        _unavailable(f"the postgres extra is not installed ({exc})")
        raise AssertionError("unreachable") from exc
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _unavailable(f"cannot connect to {PG_ENV}: {exc}")
    return url


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema`` (libpq ``options``)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema(url: str, prefix: str = "t") -> Iterator[str]:
    """A new empty schema for one test; yields the URL that uses it; dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield with_schema(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
