"""The dashboard: one static page at ``/`` that draws the API's numbers.

The page holds no data itself (so it is served without a key); its script
reads the sessions, candidates (mean reward with a 95% confidence interval),
rollouts over time and the best candidate's prompt from the authenticated
API, with the key the user types (kept in ``sessionStorage``) or passes in the
URL fragment (``/#key=...``, never sent to the server), and refreshes on the
session's server-sent events (or every few seconds).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@cache
def _page() -> bytes:
    return resources.files("synth_middleware.server").joinpath("static/dashboard.html").read_bytes()


@router.get("/")
async def dashboard() -> HTMLResponse:
    """The dashboard page."""
    return HTMLResponse(
        _page(),
        headers={
            "cache-control": "no-cache",
            "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
        },
    )
