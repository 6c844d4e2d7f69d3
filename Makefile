# splitnn: `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test compose-test lint format proto check-protos bench clean

# The virtualenv is (re)built when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/splitnn-sim --noise 0.5 --epochs 10

test: $(STAMP)
	$(BIN)/python -m pytest

# `docker compose up` for real (needs a Docker engine; set TORCH_INDEX_URL to build elsewhere).
compose-test: $(STAMP)
	$(BIN)/python -m pytest -m docker tests/e2e/test_compose.py

lint: $(STAMP) check-protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: $(STAMP)
	dev/protos.sh

check-protos: $(STAMP)
	dev/protos.sh --check

bench: $(STAMP)
	$(BIN)/python bench/split_overhead.py
	$(BIN)/python bench/nopeek.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/groups.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
