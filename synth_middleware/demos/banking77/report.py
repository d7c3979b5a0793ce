"""Numbers and pictures for the demos (moved to :mod:`synth_middleware.demos.classify.report`;
re-exported here)."""

from synth_middleware.demos.classify.report import (
    PairedDiff,
    format_table,
    paired_diff,
    plot_rollouts,
    wilson,
)

__all__ = ["PairedDiff", "format_table", "paired_diff", "plot_rollouts", "wilson"]
