"""``X-Synth-Container-Authorization`` tokens for the vendor's containers.

Containers built with the hosted API's SDK (synth-ai) require, by default, a
PASETO ``v4.public`` token in ``X-Synth-Container-Authorization: Bearer ...``
on ``/rollout`` and ``/task_info``. Their verifier
(``synth_ai_py.container_verify_paseto_header``) trusts the Ed25519 public
keys in ``SYNTH_CONTAINER_TRUSTED_PUBKEYS`` (base64 of the 32 raw bytes,
optionally ``kid:base64``, comma-separated) and checks ``aud ==
"synth-container"``, ``iss`` (``SYNTH_CONTAINER_AUTH_ISSUER``, default
``synth-backend``), the expiry, the ``kid`` in the footer when there is one,
and that the route's scope (``rollout`` or ``task_info``) is in ``scopes``.

:class:`ContainerTokenSigner` mints such tokens (one per request, short-lived)
from an Ed25519 private key. Configure it with ``SYNTH_CONTAINER_SIGNING_KEY``
(base64 of the 32-byte seed, optionally ``kid:base64``); give the container
:meth:`ContainerTokenSigner.public_key_b64` as its trusted key. Needs the
``paseto`` extra (``pyseto``).
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "AUDIENCE",
    "CONTAINER_AUTH_HEADER",
    "DEFAULT_ISSUER",
    "ENV_ISSUER",
    "ENV_SIGNING_KEY",
    "ContainerTokenSigner",
    "signer_from_env",
]

CONTAINER_AUTH_HEADER = "X-Synth-Container-Authorization"
AUDIENCE = "synth-container"
DEFAULT_ISSUER = "synth-backend"
ENV_SIGNING_KEY = "SYNTH_CONTAINER_SIGNING_KEY"
ENV_ISSUER = "SYNTH_CONTAINER_AUTH_ISSUER"
DEFAULT_SCOPES = ("rollout", "task_info")


def _b64decode(text: str) -> bytes:
    text = text.strip()
    pad = "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            return decode(text + pad)
        except ValueError:
            continue
    raise ValueError("not base64")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class ContainerTokenSigner:
    """Mints ``X-Synth-Container-Authorization`` values (PASETO v4.public, Ed25519).

    Args:
        seed: the 32-byte Ed25519 private key seed.
        kid: key id put in the token footer (the verifier then picks that trusted key).
        issuer: ``iss`` (default ``SYNTH_CONTAINER_AUTH_ISSUER``, else ``synth-backend``).
        ttl: seconds a token is valid.
        scopes: ``scopes`` claim (the vendor's routes need ``rollout`` / ``task_info``).
    """

    def __init__(
        self,
        seed: bytes,
        *,
        kid: str | None = None,
        issuer: str | None = None,
        ttl: float = 300.0,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
    ) -> None:
        try:
            import pyseto
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "container tokens need pyseto: pip install 'synth-middleware[paseto]'"
            ) from exc
        if len(seed) != 32:
            raise ValueError("an Ed25519 private key seed is 32 bytes")
        private = Ed25519PrivateKey.from_private_bytes(seed)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._pyseto = pyseto
        self._key = pyseto.Key.new(version=4, purpose="public", key=pem)
        self._public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.kid = kid
        self.issuer = issuer or os.environ.get(ENV_ISSUER) or DEFAULT_ISSUER
        self.ttl = float(ttl)
        self.scopes = tuple(scopes)

    def __repr__(self) -> str:  # never the key
        return f"ContainerTokenSigner(kid={self.kid!r}, issuer={self.issuer!r})"

    @classmethod
    def generate(cls, **kwargs: Any) -> ContainerTokenSigner:
        """A signer with a fresh random key."""
        return cls(os.urandom(32), **kwargs)

    @classmethod
    def from_string(cls, value: str, **kwargs: Any) -> ContainerTokenSigner:
        """From ``base64(seed)`` or ``kid:base64(seed)`` (the ``SYNTH_CONTAINER_SIGNING_KEY`` form)."""
        kid = None
        if ":" in value:
            kid, value = value.split(":", 1)
            kid = kid.strip() or None
        return cls(_b64decode(value), kid=kwargs.pop("kid", kid), **kwargs)

    def public_key_b64(self) -> str:
        """The public key as the container's ``SYNTH_CONTAINER_TRUSTED_PUBKEYS`` entry
        (``kid:base64`` when the signer has a kid)."""
        b64 = base64.b64encode(self._public).decode()
        return f"{self.kid}:{b64}" if self.kid else b64

    def token(self, *, scopes: tuple[str, ...] | None = None) -> str:
        """A fresh token (``v4.public...``)."""
        now = time.time()
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": _iso(now),
            "nbf": _iso(now - 5),
            "exp": _iso(now + self.ttl),
            "jti": str(uuid.uuid4()),
            "scopes": list(scopes or self.scopes),
        }
        footer = json.dumps({"kid": self.kid}).encode() if self.kid else b""
        out = self._pyseto.encode(self._key, payload=claims, footer=footer, serializer=json)
        return out.decode() if isinstance(out, bytes) else str(out)

    def header_value(self) -> str:
        """``Bearer <token>`` for ``X-Synth-Container-Authorization``."""
        return f"Bearer {self.token()}"


def signer_from_env() -> ContainerTokenSigner | None:
    """The signer ``SYNTH_CONTAINER_SIGNING_KEY`` configures, or ``None`` when unset."""
    raw = os.environ.get(ENV_SIGNING_KEY)
    if not raw or not raw.strip():
        return None
    return ContainerTokenSigner.from_string(raw.strip())
