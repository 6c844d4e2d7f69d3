# splitnn: `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test check numba-cache compose-test slurm-test lint format proto check-protos bench clean

# The virtualenv is (re)built when pyproject.toml changes. Its 13,000 Python files are compiled
# on every core (about 48 s on two) rather than one by one by pip (about 80 s): where
# PYTHONDONTWRITEBYTECODE is set, nothing would compile them later, and every process would
# compile torch again (about 3.5 s). A file only another Python can read (torch ships one for
# 3.12) fails to compile, as it does under pip: hence `|| true`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	$(MAKE) --no-print-directory numba-cache
	touch $(STAMP)

# dcor (the tests' reference for distance correlation) compiles numba code on its first import and
# caches it beside itself. Two test workers compiling at once can leave a torn cache that crashes
# every later import, so one process compiles it (about 30 s once, 8 s after) before pytest starts.
numba-cache:
	$(BIN)/python -c 'import dcor'

demo: $(STAMP)
	$(BIN)/splitnn-sim --noise 0.5 --epochs 10

# The whole suite (what CI runs), on two workers: most slow tests wait on processes they start.
# Work stealing: a worker that runs dry takes tests queued for the other, so the slow end-to-end
# tests do not finish on one worker while the other idles.
test: $(STAMP) numba-cache
	$(BIN)/python -m pytest -n 2 --dist worksteal

# The edit loop's fast tier: lint, then every test that starts no process and trains nothing
# beyond a step or two (tests marked `slow` are left to `make test`).
check: $(STAMP) numba-cache
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 -m 'not slow and not docker and not slurm'

# `docker compose up` for real (needs a Docker engine; set TORCH_INDEX_URL to build elsewhere).
compose-test: $(STAMP)
	$(BIN)/python -m pytest -m docker tests/e2e/test_compose.py

# splitnn-experiments --executor slurm for real: needs a Slurm cluster's sbatch, srun, squeue and
# sacct on PATH. Set SPLITNN_SLURM_TEST_DIR to a folder every node sees when they share no /tmp,
# and SPLITNN_SLURM_TEST_PARTITION for a partition other than the default.
slurm-test: $(STAMP)
	$(BIN)/python -m pytest -m slurm tests/e2e/test_slurm.py

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
	$(BIN)/python bench/guard.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
