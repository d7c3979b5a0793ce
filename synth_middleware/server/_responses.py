"""Fast JSON responses.

Routes return :func:`json_response` instead of plain dicts: FastAPI then skips
re-validating the answer against the declared ``response_model`` (which still
documents it in the OpenAPI schema), which matters on the hot routes.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_encode_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(data: Any) -> bytes:
    """Compact strict JSON as UTF-8 bytes (``\\u`` escapes when a string holds a lone
    surrogate, which UTF-8 cannot carry)."""
    text = _encode(data)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _encode_ascii(data).encode("ascii")


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A ``application/json`` response with a compact body."""
    return Response(dumps(data), status_code=status, headers=headers, media_type="application/json")
