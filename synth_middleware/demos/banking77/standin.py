"""The offline stand-in model (**not an LLM**); it now lives in
:mod:`synth_middleware.demos.standin` (generic over label sets). This module
re-exports it so existing imports keep working."""

from synth_middleware.demos.standin.parsing import (
    extract_query,
    label_of,
    normalize_label,
    parse_examples,
)
from synth_middleware.demos.standin.server import (
    FINGERPRINT,
    MODEL_NAME,
    STANDIN_NOTE,
    StandInModel,
    create_standin_app,
    standin_completion,
)

__all__ = [
    "FINGERPRINT",
    "MODEL_NAME",
    "STANDIN_NOTE",
    "StandInModel",
    "create_standin_app",
    "extract_query",
    "label_of",
    "normalize_label",
    "parse_examples",
    "standin_completion",
]
