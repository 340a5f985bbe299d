# The README's two commands: `make run` (gateway on proxy.yaml, mock provider, no keys) and `make test`.
# Both create the virtualenv on first use and re-install when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench bench-translation bench-clients clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info[:2] == (3, 13), f"kaixu needs Python 3.13, the venv has {sys.version.split()[0]}: remove .venv and install 3.13"'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/kaixu run proxy.yaml --access-log --hint-key sk-kaixu-demo --hint-admin-key sk-kaixu-admin-demo

lint: $(STAMP)
	$(BIN)/ruff format --check kaixu tests bench
	$(BIN)/ruff check kaixu tests bench
	$(BIN)/mypy

# The suite on TEST_WORKERS xdist workers, each test file on one worker (its module fixtures start once), the
# files that took longest in the last run first (tests/conftest.py; xdist's own order, by number of tests, off);
# the tests mostly wait on subprocesses, so more workers than this machine's 2 cores pay. TEST_WORKERS=0: one process.
# Bytecode is written (to __pycache__, ignored by git) even where PYTHONDONTWRITEBYTECODE is set: else every
# worker and each of the ~180 kaixu processes the tests start compiles from source, a sixth of the suite's CPU.
TEST_WORKERS ?= 4

test: lint
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

bench-translation: $(STAMP)
	$(BIN)/python bench/translation.py

bench-clients: $(STAMP)  # real Claude Code and Gemini CLI from the npm registry (needs node >= 20)
	$(BIN)/python bench/real_clients.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
