"""``synth-middleware demo banking77``: MIPRO online on Banking77, end to end, offline by default.

The generic classification demo (:mod:`synth_middleware.demos.classify.demo`)
on Banking77's verified files with Banking77's own prompt::

    synth-middleware demo banking77 [--rollouts N] [--seed N] [--model gpt-4.1-nano] [--pattern a|b]

1. loads Banking77 (``--data-dir``, ``$BANKING77_DIR`` or a verified download;
   every file checked against its published SHA-256);
2. runs :func:`synth_middleware.demos.classify.demo.run`: the stand-in model
   (not an LLM) unless ``--model`` names a real one, the container, the
   backend, the rollouts with proposals printed as they appear, the held-out
   comparison of the baseline and the named best with its paired 95% CI, and
   ``results.json`` + ``plot.png`` in a new directory under ``<out>/runs/``.

The command line lives in :mod:`synth_middleware.demos._cli` (also
``python -m synth_middleware.demos.banking77``): this module only runs the demo,
so the CLI imports it and not the other way round.
"""

from __future__ import annotations

from dataclasses import replace
from typing import IO, Any

from synth_middleware.demos.banking77 import data as dataset
from synth_middleware.demos.banking77.task import SYSTEM_PROMPT, Banking77Task
from synth_middleware.demos.classify import demo as _generic
from synth_middleware.demos.classify.demo import STANDIN, DemoError, DemoOptions

__all__ = ["STANDIN", "DemoError", "DemoOptions", "describe_candidate", "run"]


def describe_candidate(
    text: str | None, payload: Any, *, baseline: str = SYSTEM_PROMPT
) -> dict[str, Any]:
    """``{instruction, examples, new_instruction}`` of a candidate against Banking77's
    baseline instruction (see :func:`synth_middleware.demos.classify.demo.describe_candidate`)."""
    return _generic.describe_candidate(text, payload, baseline=baseline)


def run(opts: DemoOptions, *, stream: IO[str] | None = None) -> dict[str, Any]:
    """Load (and verify) Banking77, then run the classification demo on it; return the
    results (also written as ``results.json`` in the run directory)."""
    ds = dataset.load(opts.data_dir, progress=opts.progress)
    # record the folder used, also when $BANKING77_DIR or the cache named it
    return _generic.run(
        replace(opts, data_dir=str(ds.source.resolve())),
        ds.as_labelled(),
        Banking77Task(ds.labels),
        title="Banking77",
        stream=stream,
    )
