"""Security promises, tested end to end on loopback.

* API keys never appear in logs (DEBUG, every logger) or error bodies, across
  the wrapped client, ``HttpBackend``, the server and its proxy error paths.
* The optimized prompt never reaches a container (a recording container driven
  through the session's proxy; the model does get it).
* SQL is built only with parameters: an AST scan of ``synth_middleware/`` for
  f-strings / ``%`` / ``.format`` that build SQL, allowing only fixed identifiers.
* Request size limits: 413 with a JSON body.
* Signed rollout tokens cannot be forged to reward another session's rollout.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from helpers import BASELINE, CANDIDATE, messages, pick, seed, wait_until

import synth_middleware as synth
from synth_middleware._tokens import encode_token
from synth_middleware.backends.http import HttpBackend
from synth_middleware.errors import TokenError
from synth_middleware.server.background import BackgroundServer

SERVER_KEY = "sk-server-SECRET-1111"
UPSTREAM_KEY = "sk-upstream-SECRET-2222"
OPENAI_KEY = "sk-openai-SECRET-3333"
WRONG_KEY = "sk-wrong-SECRET-4444"
KEYS = (SERVER_KEY, UPSTREAM_KEY, OPENAI_KEY, WRONG_KEY)
ROOT = Path(__file__).resolve().parent.parent / "synth_middleware"


def _no_keys(text: str, where: str) -> None:
    for k in KEYS:
        assert k not in text, f"{k} leaked in {where}"
        assert k[-8:] not in text, f"part of {k} leaked in {where}"


# --------------------------------------------------------------------------- keys


def test_api_keys_never_in_logs_or_error_bodies(tmp_path, server, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    logging.getLogger().setLevel(logging.DEBUG)
    bodies: list[str] = []
    errors: list[str] = []
    with BackgroundServer(
        db_path=str(tmp_path / "s.db"),
        api_key=SERVER_KEY,
        upstream_url=server.url,
        upstream_api_key=UPSTREAM_KEY,
    ) as srv:
        h = {"authorization": f"Bearer {SERVER_KEY}"}
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            c.post("/api/v1/online/sessions", json={"session_id": "sec"}, headers=h)
            # server: wrong key, malformed bodies, unknown ids
            for hdr in ({"authorization": f"Bearer {WRONG_KEY}"}, {"x-api-key": WRONG_KEY}, {}):
                bodies.append(c.get("/api/v1/online/sessions", headers=hdr).text)
            bodies.append(c.post("/api/v1/rewards/batch", content=b"{not json", headers=h).text)
            bodies.append(c.get("/api/v1/candidates/nope", headers=h).text)
            # proxy: upstream failure, upstream unreachable shape, wrong key
            proxy = "/api/v1/online/sessions/sec/proxy/chat/completions"
            body = {"model": "m", "messages": messages()}
            server.fail_next(500)
            bodies.append(c.post(proxy, json=body, headers=h).text)
            server.fail_next(401)
            bodies.append(c.post(proxy, json=body, headers=h).text)
            bodies.append(
                c.post(proxy, json=body, headers={"authorization": f"Bearer {WRONG_KEY}"}).text
            )
            ok = c.post(proxy, json=body, headers=h)
            assert ok.status_code == 200
            # the proxy sends the upstream key upstream, never the caller's key
            sent = server.requests[-1]["_headers"] if "_headers" in server.requests[-1] else None
            if sent is not None:
                assert SERVER_KEY not in json.dumps(sent)

        # HttpBackend with a wrong key: a clear error without the key
        bad = HttpBackend(srv.url, WRONG_KEY, timeout=2)
        try:
            bad.get_state("sec")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc} {exc!r}")
        else:
            pytest.fail("a wrong key was accepted")
        errors.append(repr(bad))
        bad.close()

        # the wrapped client on HttpBackend; the model failing; the backend down
        good = HttpBackend(srv.url, SERVER_KEY, timeout=2)
        client = synth.wrap(
            openai.OpenAI(api_key=OPENAI_KEY, base_url=server.url, max_retries=0),
            session="sec",
            backend=good,
            warm=True,
        )
        resp = client.chat.completions.create(model="m", messages=messages())
        synth.reward(resp, 1.0)
        server.fail_next(500)
        with pytest.raises(openai.InternalServerError) as ei:
            client.chat.completions.create(model="m", messages=messages())
        errors.append(str(ei.value))
        server.fail_next(401)
        with pytest.raises(openai.AuthenticationError) as ei2:
            client.chat.completions.create(model="m", messages=messages())
        errors.append(str(ei2.value))
        synth.flush(5)
    # the server is gone: refreshes and rewards fail in the background
    down = synth.wrap(
        openai.OpenAI(api_key=OPENAI_KEY, base_url=server.url, max_retries=0),
        session="sec-down",
        backend=good,
        warm=True,
        warm_timeout=0.5,
    )
    r = down.chat.completions.create(model="m", messages=messages())
    synth.reward(r, 0.5)
    synth.flush(1)
    # the server is gone for good: drop what this reporter still holds so later
    # tests' synth.flush() is not kept waiting on it
    down._self_cfg.runtime.reporter.close(0.5)  # type: ignore[attr-defined]
    good.close()
    errors.append(repr(synth.settings))

    for i, b in enumerate(bodies):
        _no_keys(b, f"error body {i}: {b[:200]}")
        assert b.startswith("{"), f"error body {i} is not JSON: {b[:200]}"
    for e in errors:
        _no_keys(e, f"error text {e[:200]}")
    assert caplog.records, "nothing was logged at DEBUG: the test would prove nothing"
    for rec in caplog.records:
        text = rec.getMessage()
        if rec.exc_info:
            text += logging.Formatter().formatException(rec.exc_info)
        _no_keys(text, f"log record {rec.name}: {text[:300]}")


# --------------------------------------------------------------------------- container


SECRET_PROMPT = "You are an EXPERT-OPTIMIZED classifier 9d2c."


async def test_optimized_prompt_never_reaches_a_container(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    from synth_middleware.offline.container import (
        AsyncContainerClient,
        InProcessContainer,
        OnlineRunner,
        Outcome,
        RolloutContext,
        TaskDefinition,
        create_container_app,
    )
    from synth_middleware.offline.sdk import AsyncSynthClient

    received: list[bytes] = []  # every byte the container got: headers and bodies

    async def rollout(ctx: RolloutContext) -> Outcome:
        msgs = [{"role": "system", "content": BASELINE}, {"role": "user", "content": "hi"}]
        data = await ctx.chat(msgs)
        received.append(json.dumps(data).encode())  # what the proxy answered, too
        return Outcome(reward=1.0, info={"predicted": "x"})

    task = TaskDefinition(
        name="rec",
        splits={"train": [("q", "a")] * 12},
        rollout=rollout,
        prompt_template={"messages": [{"role": "system", "pattern": BASELINE}]},
    )
    inner = create_container_app(task, api_key="ck", rollout_timeout=10)

    async def recording(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            received.append(repr(scope.get("headers")).encode() + scope["path"].encode())

            async def rec_receive():  # type: ignore[no-untyped-def]
                msg = await receive()
                received.append(msg.get("body", b""))
                return msg

            return await inner(scope, rec_receive, send)
        return await inner(scope, receive, send)

    with (
        BackgroundServer(db_path=str(tmp_path / "s.db"), upstream_url=server.url) as srv,
        InProcessContainer(recording) as cont,
    ):
        async with AsyncSynthClient(base_url=srv.url) as sdk:
            session = await sdk.optimization.online.create(kind="mipro_online", baseline=BASELINE)
            cid = await session.add_candidate_async(SECRET_PROMPT)
            assert cid
            runner = OnlineRunner(AsyncContainerClient(cont.url, "ck"), session, model="m")
            results = await runner.run(range(12), concurrency=3)
    assert all(r.error is None for r in results), [r.error for r in results]
    assert SECRET_PROMPT in server.system_prompts(), "the candidate was never served"
    blob = b"".join(received)
    assert b"/rollout" in blob
    assert SECRET_PROMPT.encode() not in blob
    assert b"EXPERT-OPTIMIZED" not in blob


# --------------------------------------------------------------------------- SQL

_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|CREATE|DROP|ALTER|WHERE|BEGIN)\b")
# Interpolations allowed inside SQL text, and why each is not a value:
_ALLOWED_NAMES = {
    "marks": "a string of '?' placeholders, built as ','.join('?' * len(chunk))",
    "key": "store_pg: lock_key() returns an int (a blake2b digest of fixed names)",
}


def _allowed(expr: ast.expr) -> bool:
    # a module constant (fixed column lists, SCHEMA_VERSION, _DB_NOW)
    if isinstance(expr, ast.Name) and expr.id.lstrip("_").isupper():
        return True
    if isinstance(expr, ast.Name) and expr.id in _ALLOWED_NAMES:
        return True
    # int(...): a number cannot carry SQL
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "int":
        return True
    # ','.join('?' * n) / ','.join(['%s'] * n): placeholders only
    if (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "join"
    ):
        consts = [n.value for n in ast.walk(expr.args[0]) if isinstance(n, ast.Constant)]
        strs = [c for c in consts if isinstance(c, str)]
        return bool(strs) and all(s in ("?", "%s") for s in strs)
    return False


def test_sql_is_built_only_with_parameters() -> None:
    offenders: list[str] = []
    checked = 0
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(ROOT.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                lit = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if not _SQL.search(lit):
                    continue
                checked += 1
                for v in node.values:
                    if isinstance(v, ast.FormattedValue) and not _allowed(v.value):
                        offenders.append(f"{rel}:{node.lineno} f-string {{{ast.unparse(v.value)}}}")
            elif (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Mod)
                and isinstance(node.left, ast.Constant)
                and isinstance(node.left.value, str)
                and _SQL.search(node.left.value)
            ):
                offenders.append(f"{rel}:{node.lineno} %-formatted SQL")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "format"
                and isinstance(node.func.value, ast.Constant)
                and isinstance(node.func.value.value, str)
                and _SQL.search(node.func.value.value)
            ):
                offenders.append(f"{rel}:{node.lineno} .format() on SQL")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany")
                and node.args
                and isinstance(node.args[0], ast.BinOp)
                and isinstance(node.args[0].op, ast.Add)
            ):
                offenders.append(f"{rel}:{node.lineno} SQL concatenated in execute()")
    assert checked > 5, "the scan found no SQL at all: the pattern is broken"
    assert not offenders, "\n".join(offenders)


def test_lock_key_is_an_int() -> None:
    pytest.importorskip("psycopg")
    from synth_middleware.engine.store_pg import lock_key

    assert isinstance(lock_key("x'; DROP TABLE events; --", "write"), int)


def test_hostile_ids_are_data_not_sql(backend) -> None:  # type: ignore[no-untyped-def]
    from synth_middleware.errors import InvalidRequestError

    evil = "s'; DROP TABLE events; --"
    with pytest.raises(InvalidRequestError):  # ids are validated before any SQL
        backend.ensure_session(evil)
    (cid,) = seed(backend, "plain", evil)  # hostile text is stored as data, verbatim
    assert evil in json.dumps(backend.get_candidate(cid))
    assert backend.get_state("plain")["session_id"] == "plain"


# --------------------------------------------------------------------------- size


def test_request_size_limit_is_413_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with BackgroundServer(
        db_path=str(tmp_path / "s.db"), api_key=SERVER_KEY, max_body_bytes=10_000
    ) as srv:
        h = {"authorization": f"Bearer {SERVER_KEY}"}
        big = json.dumps({"items": [{"rollout_id": "r" * 100, "value": 1.0}] * 200})
        r = httpx.post(f"{srv.url}/api/v1/rewards/batch", content=big, headers=h)
        assert r.status_code == 413
        assert "error" in r.json()

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(50):
                yield b" " * 1000

        r = httpx.post(f"{srv.url}/api/v1/rewards/batch", content=chunks(), headers=h)
        assert r.status_code == 413
        # the server is fine afterwards
        assert httpx.get(f"{srv.url}/health").status_code == 200


# --------------------------------------------------------------------------- tokens


def test_signed_tokens_cannot_be_forged(server, backend) -> None:  # type: ignore[no-untyped-def]
    old = synth.settings.token_secret
    synth.configure(token_secret="s3cret-for-tokens")
    try:
        (victim_cid,) = seed(backend, "victim", CANDIDATE)
        seed(backend, "attacker", CANDIDATE)
        client = synth.wrap(
            openai.OpenAI(api_key="k", base_url=server.url, max_retries=0),
            session="victim",
            backend=backend,
            warm=True,
            selection=pick(victim_cid),
        )
        resp = client.chat.completions.create(model="m", messages=messages())
        real = resp.synth.token
        body, _, sig = real.partition(".")
        assert sig, "tokens must be signed when a secret is set"
        rid = resp.synth.rollout_id
        forged = [
            encode_token("victim", rid, victim_cid),  # unsigned
            encode_token("victim", rid, victim_cid, secret="guess"),  # wrong secret
            encode_token("attacker", rid, victim_cid).split(".")[0] + "." + sig,  # body swapped
            body,  # signature stripped
            body + "." + "A" * len(sig),
        ]
        for tok in forged:
            with pytest.raises(TokenError):
                synth.reward(tok, 1.0)
        synth.reward(real, 0.25)  # the genuine one works
        synth.flush(5)
        assert wait_until(lambda: _reward_count(backend, "victim") == 1, timeout=5), (
            "exactly the genuine reward is stored"
        )
    finally:
        synth.configure(token_secret=old)


def _reward_count(backend: Any, session: str) -> int:
    state = backend.get_state(session)
    return int(state.get("reward_count") or 0)
