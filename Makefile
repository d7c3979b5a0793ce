# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo demo-classify evidence quickstart lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider

# The Banking77 online demo on the embedded backend, offline (stand-in model): baseline
# vs the named best on the held-out test set; outputs in results/runs/<run>/.
BANKING77_DIR ?= $(wildcard ../shared/data/banking77)
demo: $(STAMP)
	BANKING77_DIR=$(BANKING77_DIR) $(PY) -m synth_middleware.cli demo banking77 $(DEMO_ARGS)

# The same demo on any labelled data: make demo-classify TRAIN=train.csv TEST=test.csv
TRAIN ?= ../shared/data/hwu64/train.csv
TEST ?= ../shared/data/hwu64/test.csv
demo-classify: $(STAMP)
	$(PY) -m synth_middleware.cli demo classify --train $(TRAIN) --test $(TEST) $(DEMO_ARGS)

# The demo's evidence matrix (datasets x seeds x budgets, plus the copy-baseline control).
evidence: $(STAMP)
	$(PY) benchmarks/demo_evidence.py --out results/evidence $(EVIDENCE_ARGS)

quickstart: $(STAMP)
	$(PY) examples/quickstart.py

lint: $(STAMP)
	$(PY) -m ruff check .

# The package and the integrations, as [tool.mypy] in pyproject.toml says (incremental:
# about 13 s of CPU from a cold .mypy_cache, under 2 s after that).
typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) .synth build *.egg-info .mypy_cache
