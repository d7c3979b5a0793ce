"""Schemathesis against the server's own OpenAPI schema, on a real uvicorn on
loopback with an API key.

* every documented operation, fuzzed with schema-valid and schema-invalid
  inputs (bounded: a few examples per operation, about 30 s in all): no 5xx;
* every route (documented or not) without the key: 401, except ``/health``
  and the dashboard shell ``/``, which is checked to carry no data at all.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from synth_middleware.server.background import BackgroundServer

KEY = "fuzz-key-7f3a9c"
SECRET_SESSION = "secret-session-e41d"
SECRET_PROMPT = "SECRET-CANDIDATE-PROMPT-88a1"
BUDGET_SECONDS = 15.0
PUBLIC = {"/health", "/"}


@pytest.fixture(scope="module")
def live(tmp_path_factory, model_server):  # type: ignore[no-untyped-def]
    db = tmp_path_factory.mktemp("fuzz") / "synth.db"
    with BackgroundServer(db_path=str(db), api_key=KEY, upstream_url=model_server.url) as srv:
        h = {"authorization": f"Bearer {KEY}"}
        r = httpx.post(
            f"{srv.url}/api/v1/online/sessions",
            json={"session_id": SECRET_SESSION, "baseline": "base prompt"},
            headers=h,
        )
        assert r.status_code < 300, r.text
        r = httpx.post(
            f"{srv.url}/api/v1/online/sessions/{SECRET_SESSION}/candidates",
            json={"candidate_content": SECRET_PROMPT},
            headers=h,
        )
        assert r.status_code < 300, r.text
        yield srv


def _schema(live):  # type: ignore[no-untyped-def]
    return live.app.openapi()


def test_no_5xx_on_any_operation(live) -> None:  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_dict(_schema(live))
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) > 20
    headers = {"authorization": f"Bearer {KEY}"}
    per_op = max(2.0, BUDGET_SECONDS / len(ops))
    failures: list[str] = []
    tried = 0

    def make_check(op, deadline):  # type: ignore[no-untyped-def]
        strategy = op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE)

        @settings(
            max_examples=8,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case):  # type: ignore[no-untyped-def]
            nonlocal tried
            if time.monotonic() > deadline:
                return
            tried += 1
            resp = case.call(base_url=live.url, headers=headers, timeout=10)
            if resp.status_code >= 500:
                failures.append(
                    f"{op.label} -> {resp.status_code}: path={case.path_parameters} "
                    f"query={case.query} body={case.body!r:.300} resp={resp.text[:300]}"
                )

        return check

    for op in ops:
        try:
            make_check(op, time.monotonic() + per_op)()
        except Unsatisfiable:
            pass
    assert tried > len(ops)
    assert not failures, "\n".join(failures[:10])


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", SECRET_SESSION, path)


def test_no_route_answers_without_the_key(live) -> None:  # type: ignore[no-untyped-def]
    paths = dict(_schema(live)["paths"])
    for hidden in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/"):
        paths.setdefault(hidden, {"get": {}})
    opened: list[str] = []
    with httpx.Client(base_url=live.url, timeout=10) as c:
        for path, methods in paths.items():
            for method in methods:
                if method not in ("get", "post", "put", "patch", "delete"):
                    continue
                for headers in ({}, {"authorization": "Bearer wrong-key"}, {"x-api-key": ""}):
                    r = c.request(method.upper(), _concrete(path), headers=headers, json={})
                    if path in PUBLIC:
                        continue
                    if r.status_code not in (401, 403):
                        opened.append(f"{method.upper()} {path} {headers} -> {r.status_code}")
                    assert KEY not in r.text
                    assert SECRET_PROMPT not in r.text
    assert not opened, "\n".join(opened)


def test_public_routes_carry_no_data(live) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live.url, timeout=10) as c:
        for path in sorted(PUBLIC):
            r = c.get(path)
            assert r.status_code == 200
            for secret in (SECRET_SESSION, SECRET_PROMPT, KEY, "base prompt"):
                assert secret not in r.text, (path, secret)
        health = c.get("/health").json()
        assert SECRET_SESSION not in str(health)
        # the dashboard is a static shell: the same bytes whatever the database holds
        page = c.get("/").content
        assert b"<script" in page and b"fetch(" in page


# -- hand-written hostile cases (issue #23): each must answer a JSON 4xx, never a 5xx or
# -- a dropped connection, and leave every session readable afterwards.

S = f"/api/v1/online/sessions/{SECRET_SESSION}"
_JSON = {"content-type": "application/json"}
HOSTILE: list[tuple[str, str, bytes, dict[str, str]]] = [
    *[
        ("POST", f"{S}/reward", b'{"rollout_id":"h1","reward_info":{"score":%s}}' % v, _JSON)
        for v in (b"1e155", b"-1e308", b"1" + b"0" * 400, b"1e999", b"NaN", b"-Infinity", b'"1"')
    ],
    *[
        (
            "POST",
            "/api/v1/rewards/batch",
            b'{"rewards":[{"idempotency_key":"h","rollout_id":"h2","session_id":"%s","value":%s}]}'
            % (SECRET_SESSION.encode(), v),
            _JSON,
        )
        for v in (b"1e155", b"1" + b"0" * 400, b"true")
    ],
    *[
        (
            "POST",
            "/api/v1/rollouts/batch",
            b'{"rollouts":[{"rollout_id":"h3","session_id":"%s","created_at":%s}]}'
            % (SECRET_SESSION.encode(), v),
            _JSON,
        )
        for v in (b"1e308", b"-1e308", b"1e999", b"1" + b"0" * 400)
    ],
    (
        "POST",
        f"{S}/reward",
        b'{"rollout_id":"h4","reward_info":{"score":1},"created_at":1e308}',
        _JSON,
    ),
    ("POST", f"{S}/proxy/chat/completions", b"[" * 100_000, _JSON),
    ("POST", f"{S}/proxy/chat/completions", b'{"messages":' + b"{" * 50_000, _JSON),
    ("POST", f"{S}/reward", b"[" * 100_000, _JSON),
    ("POST", "/api/v1/rewards/batch", b'{"rewards":' + b"[" * 100_000, _JSON),
    *[
        ("POST", f"{S}/proxy/{rid}/chat/completions", b'{"messages":[]}', _JSON)
        for rid in ("%0D%0Ax-a:%201", "a%00b", "%E9", "%FF%FE", "%C0%AF", "a%20b")
    ],
    *[
        ("GET", f"/api/v1/online/sessions/{sid}/state", b"", {})
        for sid in ("%00", "%E9", "..%2F..", "a%0D%0Ab", "x" * 300)
    ],
    ("POST", f"{S}/proxy/chat/completions", b'{"messages":[]}', {"content-type": "text/plain"}),
    (
        "POST",
        f"{S}/reward",
        b'{"reward_info":{"score":1}}',
        {"content-type": "multipart/form-data"},
    ),
    (
        "POST",
        f"{S}/reward",
        b'{"reward_info":{"score":1}}',
        {**_JSON, "idempotency-key": "x" * 300},
    ),
]


def _hostile_round(url: str, headers: dict[str, str]) -> list[str]:
    bad: list[str] = []
    with httpx.Client(base_url=url, timeout=20) as c:
        for method, path, body, extra in HOSTILE:
            try:
                r = c.request(method, path, content=body or None, headers={**headers, **extra})
            except httpx.HTTPError as exc:
                bad.append(f"{method} {path[:80]} {body[:40]!r}: connection {type(exc).__name__}")
                continue
            if r.status_code >= 500 or (r.status_code >= 400 and "error" not in r.text[:200]):
                bad.append(f"{method} {path[:80]} {body[:40]!r} -> {r.status_code} {r.text[:200]}")
        for path in ("/api/v1/online/sessions", f"{S}/state", f"{S}/timeline", f"{S}/rollouts"):
            r = c.get(path, headers={k: v for k, v in headers.items() if k != "host"})
            if r.status_code != 200:
                bad.append(f"GET {path} afterwards -> {r.status_code} {r.text[:200]}")
    return bad


def test_hostile_cases_answer_4xx_with_a_key(live) -> None:  # type: ignore[no-untyped-def]
    bad = _hostile_round(live.url, {"authorization": f"Bearer {KEY}"})
    assert not bad, "\n".join(bad)


def test_hostile_cases_answer_4xx_without_a_key(tmp_path, model_server) -> None:  # type: ignore[no-untyped-def]
    with BackgroundServer(db_path=str(tmp_path / "k.db"), upstream_url=model_server.url) as srv:
        r = httpx.post(f"{srv.url}/api/v1/online/sessions", json={"session_id": SECRET_SESSION})
        assert r.status_code == 200
        bad = _hostile_round(srv.url, {})
        bad += _hostile_round(srv.url, {"host": "evil.example"})
    assert not bad, "\n".join(bad)
