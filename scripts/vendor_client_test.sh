#!/usr/bin/env bash
# The hosted API's own published client (synth-ai 0.9.11) and the vendor's
# containers (synth-containers 0.4.6), unmodified, against this package.
# They pin dependencies of their own (click<8.2, numpy, datasets, ...), so
# they get a venv of their own: $VENDOR_VENV (default .venv-vendor).
# SYNTH_VENDOR_CLIENT_TEST=1 makes a missing vendor package fail the tests
# instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENDOR_VENV:-.venv-vendor}"
STAMP="$VENV/.installed"

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$0" -nt "$STAMP" ]; then
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q \
    "synth-ai==0.9.11" "synth-containers==0.4.6" \
    -e ".[server,paseto]" \
    "pytest>=8" "pytest-timeout>=2.3" "pytest-asyncio>=0.23"
  touch "$STAMP"
fi

SYNTH_VENDOR_CLIENT_TEST=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_vendor_client.py tests/test_vendor_containers.py "$@"
