"""Reading answers and labelled examples; it now lives in
:mod:`synth_middleware.demos.standin.parsing` (generic over label sets). This
module re-exports it so existing imports keep working."""

from synth_middleware.demos.standin.parsing import (
    LabelSet,
    example_blocks,
    extract_query,
    json_label_values,
    label_of,
    label_words,
    normalize_label,
    parse_examples,
)

__all__ = [
    "LabelSet",
    "example_blocks",
    "extract_query",
    "json_label_values",
    "label_of",
    "label_words",
    "normalize_label",
    "parse_examples",
]
