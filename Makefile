# Two commands do all set-up (see README): `make demo` and `make test`.
# Each creates .venv with the pinned dependencies if it is missing or out of date, then runs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint clean-venv

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,onnx,tensorboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/classicnets demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check classicnets tests benchmarks
	$(VENV)/bin/mypy

clean-venv:
	rm -rf $(VENV)
