"""The hosted client's spellings of the wire API, over HTTP against a real server
(also driven with the vendor's own client in ``test_vendor_client.py``; these keep
the routes covered where that client is not installed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from synth_middleware.server.background import BackgroundServer

BASELINE = "You classify banking requests."
CONFIG: dict[str, Any] = {
    "prompt_learning": {"initial_prompt": {"messages": [{"role": "system", "pattern": BASELINE}]}}
}


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("configs")
    (d / "ok.toml").write_text('[prompt_learning]\ninitial_prompt = "From TOML."\n')
    (d / "bad.toml").write_text("[prompt_learning\n")
    return d


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Iterator[httpx.Client]:
    db = tmp_path_factory.mktemp("spellings") / "synth.db"
    with (
        BackgroundServer(db_path=db, api_key="k", config_dirs=(str(config_dir),)) as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer k"}, timeout=10) as c,
    ):
        yield c


def _create(http: httpx.Client, path: str = "/api/v1/online/sessions", **body: Any) -> Any:
    return http.post(path, json={"kind": "mipro_online", **body})


def test_v2_sessions_and_unversioned_candidates(http: httpx.Client) -> None:
    r = _create(http, "/api/v2/online/sessions", kind="gepa_online", config_body=CONFIG)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    state = http.get(f"/api/v2/online/sessions/{sid}").json()
    base = state["baseline_candidate_id"]
    assert http.patch(f"/api/v2/online/sessions/{sid}", json={"state": "paused"}).json()[
        "status"
    ] == "paused"
    ack = http.post(f"/api/v2/online/sessions/{sid}/reward", json={"reward_info": {"score": 1}})
    assert ack.status_code == 200 and ack.json()["status"] == "accepted"

    page = http.get(f"/api/systems/{sid}/candidates", params={"limit": 200}).json()
    by_id = {i["candidate_id"]: i for i in page["items"]}
    assert by_id["baseline"]["alias_of"] == base
    assert by_id["baseline"]["candidate_content"] == BASELINE
    # our own spelling carries no alias (our clients would see two baselines)
    ours = http.get(f"/api/v1/systems/{sid}/candidates").json()
    assert "baseline" not in [i["candidate_id"] for i in ours["items"]]
    real = http.get(f"/api/candidates/{base}").json()
    assert real["system_id"] == sid and real["candidate_content"] == BASELINE
    alias = http.get("/api/candidates/baseline")
    assert alias.status_code == 200 and alias.json()["system_id"] is None
    assert http.get("/api/v1/candidates/baseline").status_code == 404


def test_create_reads_config_and_config_path(http: httpx.Client, config_dir: Path) -> None:
    r = _create(http, config=CONFIG)
    assert r.status_code == 200, r.text
    assert r.json()["system"]["id"] == r.json()["session_id"]
    sid = r.json()["session_id"]
    items = http.get(f"/api/v1/systems/{sid}/candidates").json()["items"]
    assert [i["candidate_content"] for i in items] == [BASELINE]

    r = _create(http, config_path=str(config_dir / "ok.toml"))
    assert r.status_code == 200, r.text
    items = http.get(f"/api/v1/systems/{r.json()['session_id']}/candidates").json()["items"]
    assert [i["candidate_content"] for i in items] == ["From TOML."]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"config_path": "/etc/passwd"}, "config_path_not_allowed"),
        ({"config_path": "{dir}/../../etc/hosts"}, "config_path_not_allowed"),
        ({"config_path": "{dir}/missing.toml"}, "config_path_unreadable"),
        ({"config_path": "{dir}/bad.toml"}, "config_path_invalid"),
        ({"config": {"prompt_learning": {"algorithm": "mipro"}}}, "missing_baseline"),
        ({"config_name": "banking77-default"}, "missing_baseline"),
        ({"config": CONFIG, "config_body": CONFIG}, "validation_error"),
    ],
)
def test_create_refuses_what_it_cannot_read(
    http: httpx.Client, config_dir: Path, body: dict[str, Any], code: str
) -> None:
    if "config_path" in body:
        body = {"config_path": body["config_path"].replace("{dir}", str(config_dir))}
    r = _create(http, **body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert "root:" not in err["message"]  # never echoes a file's content


def test_bare_create_says_it_has_no_baseline(http: httpx.Client) -> None:
    r = _create(http)
    assert r.status_code == 200 and "baseline" in r.json()["warnings"][0]


def test_events_json_page_unless_a_stream_is_asked_for(http: httpx.Client) -> None:
    sid = _create(http, config_body=CONFIG, metadata={"worker_token": "sk-secret-1234567"})
    sid = sid.json()["session_id"]
    for i in range(3):
        http.post(f"/api/v1/online/sessions/{sid}/reward", json={"reward_info": {"score": i}})
    first = http.get(f"/api/v1/online/sessions/{sid}/events", params={"limit": 2}).json()
    assert len(first["events"]) == 2 and first["has_more"] is True
    seqs = [e["seq"] for e in first["events"]]
    rest = http.get(
        f"/api/v1/online/sessions/{sid}/events", params={"since_seq": first["next_seq"]}
    ).json()
    assert rest["events"] and all(e["seq"] > max(seqs) for e in rest["events"])
    assert rest["has_more"] is False
    assert "sk-secret-1234567" not in str(first) + str(rest)
    with http.stream(
        "GET", f"/api/v1/online/sessions/{sid}/events", headers={"Accept": "text/event-stream"}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")


def test_offline_create_with_the_hosted_kind(http: httpx.Client) -> None:
    body = {
        "technique": "discrete_optimization",
        "kind": "mipro_offline",
        "system": {"name": "bank", "reuse": True},
        "config_mode": "DEFAULT",
        "config": {"container_url": "http://127.0.0.1:9", "initial_prompt": BASELINE},
        "metadata": {},
        "auto_start": False,
    }
    r = http.post("/api/v1/offline/jobs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["algorithm"] == "mipro" and r.json()["status"] == "created"
    r = http.post("/api/v1/offline/jobs", json={**body, "kind": "eval"})
    assert r.status_code == 422 and "kind" in r.json()["error"]["message"]
