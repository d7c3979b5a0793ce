"""``GET /health``: liveness, no key needed."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from synth_middleware import __version__
from synth_middleware.server._responses import json_response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> Response:
    """``{"healthy": true}`` while the server runs."""
    return json_response({"healthy": True, "status": "ok", "version": __version__})
