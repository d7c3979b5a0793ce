"""Auth, body limits and the `serve` command's safety checks."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("fastapi")

from synth_middleware import cli
from synth_middleware.server.background import BackgroundServer
from synth_middleware.server.routes import hot
from synth_middleware.server.run import InsecureBindError, check_bind, is_loopback

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    db = tmp_path_factory.mktemp("auth") / "synth.db"
    with BackgroundServer(db_path=db, api_key=KEY, max_body_bytes=4096) as srv:
        yield srv


def test_every_route_but_health_needs_the_key(server: BackgroundServer) -> None:
    base = server.url
    assert httpx.get(f"{base}/health").status_code == 200
    page = httpx.get(f"{base}/")  # the dashboard shell: static, no data
    assert page.status_code == 200 and "synth-middleware" in page.text
    probes = [
        ("GET", "/openapi.json"),
        ("GET", "/api/v1/online/sessions"),
        ("POST", "/api/v1/online/sessions"),
        ("GET", "/api/v1/online/sessions/s1"),
        ("PATCH", "/api/v1/online/sessions/s1"),
        ("POST", "/api/v1/online/sessions/s1/reward"),
        ("POST", "/api/v1/rewards/batch"),
        ("POST", "/api/v1/rollouts/batch"),
        ("GET", "/api/v1/systems/s1/candidates"),
        ("GET", "/api/v1/candidates/c1"),
        ("POST", "/api/v1/online/sessions/s1/proxy/chat/completions"),
        ("POST", "/api/prompt-learning/online/mipro/systems/s1/status"),
        ("GET", "/api/v1/online/sessions/s1/events"),
        ("GET", "/no/such/route"),
    ]
    # the routes answered before FastAPI too (they sit behind the auth middleware)
    probes += [(r.method, re.sub(r"\{\w+\}", "x1", r.path)) for r in hot.ROUTES]
    client = httpx.Client(base_url=base)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": KEY[:-1]},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
    ):
        for method, path in probes:
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"]["code"] == "unauthorized"
            assert KEY not in r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
    client.close()


def test_bearer_and_x_api_key_both_work(server: BackgroundServer) -> None:
    for headers in (
        {"Authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {KEY}"},
        {"X-API-Key": KEY},
        {"X-API-Key": KEY, "Authorization": "Bearer nope"},
    ):
        r = httpx.post(
            f"{server.url}/api/v1/online/sessions",
            headers=headers,
            json={"session_id": "auth-ok", "baseline": "b"},
        )
        assert r.status_code == 200, headers
    assert httpx.get(f"{server.url}/openapi.json", headers={"X-API-Key": KEY}).status_code == 200


def test_keys_are_never_logged(server: BackgroundServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        httpx.get(f"{server.url}/api/v1/online/sessions", headers={"X-API-Key": "guess-" + KEY})
        httpx.get(f"{server.url}/api/v1/online/sessions/nope", headers={"X-API-Key": KEY})
    assert KEY not in caplog.text
    assert KEY not in repr(server.app.state.synth.config)


def test_oversized_bodies_get_413_and_store_nothing(server: BackgroundServer) -> None:
    h = {"X-API-Key": KEY}
    http = httpx.Client(base_url=server.url, headers=h)
    http.post("/api/v1/online/sessions", json={"session_id": "big", "baseline": "b"})
    before = http.get("/api/v1/online/sessions/big").json()
    big = {"reward_info": {"score": 1}, "metadata": {"pad": "x" * 5000}}
    r = http.post("/api/v1/online/sessions/big/reward", json=big)  # Content-Length declared
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"reward_info": {"score": 1}, "metadata": {"pad": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}}'

    r = http.post(
        "/api/v1/online/sessions/big/reward",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = http.post("/api/v1/online/sessions/big/proxy/chat/completions", content=chunks())
    assert r.status_code == 413
    # unauthenticated oversized bodies are refused as unauthorized first
    r = httpx.post(f"{server.url}/api/v1/online/sessions/big/reward", json=big)
    assert r.status_code == 401
    after = http.get("/api/v1/online/sessions/big").json()
    assert after["version"] == before["version"] and after["reward_count"] == 0
    assert (
        http.post(
            "/api/v1/online/sessions/big/reward", json={"reward_info": {"score": 1}}
        ).status_code
        == 200
    )
    http.close()


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", ""):
        assert not is_loopback(host), host
    check_bind("0.0.0.0", "key", insecure=False)
    check_bind("0.0.0.0", None, insecure=True)
    check_bind("127.0.0.1", None, insecure=False)
    with pytest.raises(InsecureBindError, match="SYNTH_API_KEY"):
        check_bind("0.0.0.0", None, insecure=False)


def test_cli_refuses_a_public_bind_without_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SYNTH_API_KEY", raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on '0.0.0.0'" in err and "--insecure" in err


def test_cli_help_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--db", "--api-key", "--upstream-url", "--insecure"):
        assert flag in out
