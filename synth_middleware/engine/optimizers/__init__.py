"""Online optimizers: MIPRO online and GEPA online.

Each implements :class:`~synth_middleware.engine.optimizers.base.Optimizer`;
the engine's background runner
(:mod:`synth_middleware.engine._optimizer_runner`) decides when a round runs
and writes what it proposes.
"""

from synth_middleware.engine.optimizers.base import (
    Optimizer,
    Proposal,
    RoundContext,
    RoundResult,
    Trace,
    traces_from_records,
    trigger,
)
from synth_middleware.engine.optimizers.gepa import GepaOptimizer
from synth_middleware.engine.optimizers.mipro import MiproOptimizer

OPTIMIZERS: dict[str, type[Optimizer]] = {
    MiproOptimizer.kind: MiproOptimizer,
    GepaOptimizer.kind: GepaOptimizer,
}
"""Optimizer class by session kind."""

__all__ = [
    "OPTIMIZERS",
    "GepaOptimizer",
    "MiproOptimizer",
    "Optimizer",
    "Proposal",
    "RoundContext",
    "RoundResult",
    "Trace",
    "traces_from_records",
    "trigger",
]
