"""The dashboard in headless Chromium: the numbers it shows match the API, and it updates live;
intervals are the engine's Beta credible intervals (inside [0, 1] for 0/1 rewards), the chart
shows reward over time with axes, a session without traffic reads idle, and the promotion
evidence the engine reports is on the page.

Needs Debian's ``chromium`` (``apt-get install chromium``). Without it the
Chromium test is skipped, unless ``CI`` is set, where a missing browser fails.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from starlette.types import ASGIApp, Receive, Scope, Send

from synth_middleware.server import create_app
from synth_middleware.server.background import BackgroundServer

KEY = "dash-key"
H = {"X-API-Key": KEY}
SID = "dash-session"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM_BIN"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is required in CI for the dashboard test: apt-get install chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); CI is not set")


class _Table(HTMLParser):
    """Rows of ``tr[data-candidate-id]`` / ``tr[data-session-id]`` as {class: text}."""

    def __init__(self) -> None:
        super().__init__()
        self.candidates: dict[str, dict[str, str]] = {}
        self.sessions: dict[str, dict[str, str]] = {}
        self.ids: dict[str, str] = {}
        self._row: dict[str, str] | None = None
        self._cls: str | None = None
        self._id: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-candidate-id"):
            self._row = self.candidates.setdefault(a["data-candidate-id"] or "", {})
        elif tag == "tr" and a.get("data-session-id"):
            self._row = self.sessions.setdefault(a["data-session-id"] or "", {})
        elif tag == "td" and self._row is not None:
            self._cls, self._text = a.get("class") or "", []
        elif a.get("id") in ("best-prompt", "best-id", "updated", "error", "evidence-summary"):
            self._id, self._text = a["id"], []

    def handle_data(self, data: str) -> None:
        if self._cls is not None or self._id is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cls is not None:
            self._row[self._cls] = "".join(self._text)
            self._cls = None
        elif tag == "tr":
            self._row = None
        elif self._id is not None and tag in ("pre", "span", "p"):
            self.ids[self._id] = "".join(self._text)
            self._id = None


class _ChangeOnThirdPoll:
    """Test middleware: on the page's 3rd session-list poll, add rewards (a live change)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.polls = 0
        self.on_poll: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/v1/dashboard/sessions":
            if scope["method"] == "GET":
                self.polls += 1
                if self.polls == 3 and self.on_poll is not None:
                    self.on_poll()
        await self.app(scope, receive, send)


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[BackgroundServer, _ChangeOnThirdPoll]]:
    app = create_app(db_path=tmp_path / "dash.db", api_key=KEY)
    holder: dict[str, _ChangeOnThirdPoll] = {}

    def factory(inner: ASGIApp) -> _ChangeOnThirdPoll:
        holder["mw"] = _ChangeOnThirdPoll(inner)
        return holder["mw"]

    app.add_middleware(factory)  # type: ignore[arg-type]
    with BackgroundServer(app=app) as srv:
        httpx.get(f"{srv.url}/health")  # builds the middleware stack
        yield srv, holder["mw"]


def _rewards(
    cid: str, values: list[float], tag: str, ago: float = 0.0, every: float = 0.0
) -> list[dict[str, Any]]:
    """Reward records, the first ``ago`` seconds ago and then one per ``every`` seconds."""
    start = time.time() - ago
    return [
        {
            "idempotency_key": f"{tag}-{cid}-{i}",
            "rollout_id": f"{tag}-{cid}-{i}",
            "value": v,
            "session_id": SID,
            "candidate_id": cid,
            "created_at": start + i * every,
        }
        for i, v in enumerate(values)
    ]


def _beta_quantiles(a: float, b: float, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of Beta(a, b) by integrating its density on a fine grid (independent of
    the library's own code)."""
    n = 20_000
    lnorm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    xs = [(i + 0.5) / n for i in range(n)]
    dens = [math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - lnorm) / n for x in xs]
    out, acc, j = [], 0.0, 0
    for q in qs:
        while j < n and acc + dens[j] < q:
            acc += dens[j]
            j += 1
        out.append((j + 0.5) / n)
    return out


def _expected(c: dict[str, Any]) -> tuple[str, str]:
    """Mean and the 95% credible interval under Beta(1 + sum, 1 + n - sum): rewards in [0, 1]."""
    n, mean = c["reward_count"], c["avg_reward"]
    shown_mean = "\u2014" if mean is None else f"{mean:.3f}"
    if not n or mean is None:
        return shown_mean, "\u2014"
    lo, hi = _beta_quantiles(1 + n * mean, 1 + n * (1 - mean), (0.025, 0.975))
    return shown_mean, f"[{lo:.3f}, {hi:.3f}]"


def _close(shown: str, want: str) -> bool:
    got = [float(x) for x in re.findall(r"-?\d+\.\d+", shown)]
    exp = [float(x) for x in re.findall(r"-?\d+\.\d+", want)]
    return len(got) == len(exp) and all(abs(a - b) <= 0.0021 for a, b in zip(got, exp, strict=True))


def test_dashboard_page_is_served_without_data(dashboard: Any) -> None:
    srv, _ = dashboard
    r = httpx.get(f"{srv.url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in r.headers
    assert SID not in r.text  # the shell holds no data; the API calls need the key


def test_dashboard_numbers_match_the_api_in_chromium(dashboard: Any, tmp_path: Path) -> None:
    chromium = _chromium()
    srv, mw = dashboard
    http = httpx.Client(base_url=srv.url, headers=H)
    http.post(
        "/api/v1/online/sessions",
        json={"session_id": SID, "kind": "gepa_online", "baseline": "BASELINE PROMPT"},
    )
    base = http.get(f"/api/v1/online/sessions/{SID}").json()["baseline_candidate_id"]
    a = http.post(
        f"/api/v1/online/sessions/{SID}/candidates",
        json={"candidate_content": "CANDIDATE A <b>not html</b>"},
    ).json()["candidate_id"]
    b = http.post(
        f"/api/v1/online/sessions/{SID}/candidates", json={"candidate_content": "CANDIDATE B"}
    ).json()["candidate_id"]
    rewards = _rewards(base, [0.2, 0.4, 0.1, 0.3], "r", ago=300, every=70)
    rewards += _rewards(a, [0.9, 0.7], "r", ago=240, every=120) + _rewards(b, [0.55], "r", ago=90)
    coin = http.post(
        f"/api/v1/online/sessions/{SID}/candidates", json={"candidate_content": "CANDIDATE C"}
    ).json()["candidate_id"]
    rewards += _rewards(coin, [0.0, 1.0], "r", ago=200, every=150)  # n=2 of 0/1 rewards
    # a finished run: its last rollout 10 minutes ago, status still "running"
    old = "dash-finished"
    http.post("/api/v1/online/sessions", json={"session_id": old, "baseline": "OLD"})
    assert http.post(
        "/api/v1/rollouts/batch",
        json={
            "rollouts": [
                {"session_id": old, "rollout_id": "old-1", "created_at": time.time() - 600}
            ]
        },
    ).status_code in (200, 207)
    assert http.post("/api/v1/rewards/batch", json={"rewards": rewards}).status_code == 200
    engine = srv.app.state.synth.engine
    later = _rewards(b, [0.35, 0.8, 0.6], "late") + _rewards(base, [0.25], "late")
    mw.on_poll = lambda: engine.record_rewards(later)  # the page must pick this up live

    url = f"{srv.url}/#key={KEY}&session={SID}"
    profile = tempfile.mkdtemp(dir=tmp_path)
    dom = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=9000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert 'data-loaded="true"' in dom, dom[-2000:]
    assert mw.polls >= 4  # it kept polling after the change
    table = _Table()
    table.feed(dom)
    state = http.get(f"/api/v1/online/sessions/{SID}").json()
    assert state["reward_count"] == 13  # includes the live change
    row = table.sessions[SID]
    assert row["num rollouts"] == str(state["rollout_count"])
    assert row["num rewards"] == str(state["reward_count"])
    for c in state["candidates"]:
        shown = table.candidates[c["candidate_id"]]
        mean, ci = _expected(c)
        assert _close(shown["num mean"], mean), (shown, mean)
        assert _close(shown["num ci"], ci), (shown, ci)
        assert shown["num rewards"] == str(c["reward_count"])
        # the engine's own evidence, shown as given (not computed in the page)
        p_best = state["policy"]["probability_best"].get(c["candidate_id"])
        if p_best is not None:
            assert abs(float(shown["evidence probability_best"]) - p_best) < 1e-3, shown
    lo, hi = (float(x) for x in re.findall(r"-?\d+\.\d+", table.candidates[coin]["num ci"]))
    assert 0.0 <= lo < 0.5 < hi <= 1.0  # Beta(2, 2): [0.094, 0.906], not [-0.48, 1.48]
    # status: the session with traffic runs; the one without it for 10 minutes is idle
    assert row["status"] == "running"
    old_status = next(v for k, v in table.sessions[old].items() if k.startswith("status"))
    assert old_status == "idle", table.sessions[old]
    assert "min ago" in table.sessions[old]["last-rollout"]
    # promotion evidence: the policy's fields as the engine reports them
    assert 'data-key="best_p_beats_baseline"' in dom and 'data-key="posterior"' in dom
    assert table.ids["evidence-summary"].startswith(("Best named", "No candidate promoted"))
    best = state["best_candidate_id"]
    prompt = http.get(f"/api/v1/candidates/{best}").json()["candidate_content"]
    assert table.ids["best-prompt"] == prompt and best in table.ids["best-id"]
    assert table.ids.get("error", "") == ""
    # reward over time: one line per candidate with rewards, ending at its mean; two axes
    lines = dict(re.findall(r'<path[^>]*data-candidate-id="([^"]+)"[^>]*data-last="([^"]+)"', dom))
    for c in state["candidates"]:
        if c["reward_count"]:
            assert abs(float(lines[c["candidate_id"]]) - c["avg_reward"]) < 1e-6, (c, lines)
    assert 'data-axis="x"' in dom and 'data-axis="y"' in dom
    assert "mean reward so far" in dom and "time (reward received)" in dom
    assert len(re.findall(r'class="tick"', dom)) >= 8

    shot = Path(os.environ.get("SYNTH_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
            "--virtual-time-budget=4000",
            "--window-size=1280,1500",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        timeout=60,
    )
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 1500)
    http.close()
