"""Rollout tokens: opaque, URL-safe strings that let a reward arrive later.

A token names the session, rollout and candidate, so a reward can come from
another request or process with nothing else to look up. When a secret is
configured the token is signed (HMAC-SHA256), so a token from outside cannot
be forged to reward somebody else's rollout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from synth_middleware.errors import TokenError

_VERSION = 1
_SIG_BYTES = 16


@dataclass(frozen=True, slots=True)
class TokenData:
    """What a token carries."""

    session_id: str | None
    rollout_id: str
    candidate_id: str | None
    issued_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_encode = json.JSONEncoder(separators=(",", ":")).encode
_macs: dict[str | bytes, hmac.HMAC] = {}


def _sign(secret: str | bytes, body: str) -> str:
    base = _macs.get(secret)
    if base is None:  # keyed once per secret; copy() is cheaper than re-keying
        key = secret.encode() if isinstance(secret, str) else secret
        base = _macs[secret] = hmac.new(key, digestmod=hashlib.sha256)
        if len(_macs) > 64:  # secrets rotate rarely; keep the map bounded anyway
            _macs.clear()
            _macs[secret] = base
    mac = base.copy()
    mac.update(body.encode("ascii"))
    return _b64(mac.digest()[:_SIG_BYTES])


def encode_token(
    session_id: str | None,
    rollout_id: str,
    candidate_id: str | None,
    *,
    secret: str | bytes | None = None,
    issued_at: float | None = None,
) -> str:
    """Encode a rollout token; signed when ``secret`` is given."""
    ts = int(time.time() if issued_at is None else issued_at)
    body = _b64(
        json.dumps(
            [_VERSION, session_id, rollout_id, candidate_id, ts], separators=(",", ":")
        ).encode()
    )
    if secret:
        return f"{body}.{_sign(secret, body)}"
    return body


def decode_token(
    token: str, *, secret: str | bytes | None = None, max_age: float | None = None
) -> TokenData:
    """Decode (and, with ``secret``, verify) a token; raise :class:`TokenError` if it is not valid."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise TokenError("rollout token must be a non-empty string")
    body, _, sig = token.partition(".")
    if secret:
        if not sig or not hmac.compare_digest(sig, _sign(secret, body)):
            raise TokenError("rollout token signature is missing or invalid")
    try:
        version, session_id, rollout_id, candidate_id, ts = json.loads(_unb64(body))
    except (ValueError, TypeError) as exc:
        raise TokenError("rollout token is malformed") from exc
    if version != _VERSION or not isinstance(rollout_id, str) or not isinstance(ts, int):
        raise TokenError("rollout token is malformed")
    if max_age is not None and time.time() - ts > max_age:
        raise TokenError("rollout token has expired")
    return TokenData(session_id, rollout_id, candidate_id, float(ts))


def looks_like_token(text: str) -> bool:
    """Cheap test used to tell a token from a bare rollout id (ours start with ``ro_``)."""
    return not text.startswith("ro_") and len(text) > 24
