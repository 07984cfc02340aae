# The two README commands: `make train` (the main job) and `make test` (the suite). Both set up everything first
# (scripts/bootstrap.sh: system libraries, .venv, torch/torchvision, this package) and are safe to re-run.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test test-gpu bench lint
setup:
	@scripts/bootstrap.sh

train: setup
	$(VENV)/bin/deps train $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

bench: setup
	$(PY) -m pytest bench --benchmark-only $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
