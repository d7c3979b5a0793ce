"""``python -m synth_middleware.demos.banking77``: the Banking77 demo, with the same flags
as ``synth-middleware demo banking77``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from synth_middleware.demos._cli import configure_banking77, run_banking77
from synth_middleware.demos.banking77 import demo


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` as ``synth-middleware demo banking77`` does and run the demo."""
    parser = argparse.ArgumentParser(prog="banking77-demo", description=demo.__doc__)
    configure_banking77(parser)
    return run_banking77(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
