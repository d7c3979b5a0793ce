"""Our OpenTelemetry tracer for a provider, cached per provider.

Below both :mod:`~synth_middleware.client._otel` (call spans) and
:mod:`~synth_middleware.client._evaluation` (reward spans), which each need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["tracer_for"]

_VERSION = "0.1.0"

_tracers: dict[int, tuple[object, Tracer]] = {}


def tracer_for(provider: TracerProvider | None) -> Tracer | None:
    """Our tracer, or ``None`` when no SDK provider is configured (skip spans)."""
    p = provider if provider is not None else trace.get_tracer_provider()
    if isinstance(p, ProxyTracerProvider | NoOpTracerProvider):
        return None
    hit = _tracers.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    tracer = p.get_tracer("synth_middleware", _VERSION)  # costly in the SDK: once per provider
    _tracers[id(p)] = (p, tracer)
    return tracer
