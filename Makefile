# The two commands a newcomer needs: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv and installs the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test lint clean

# -qq: pip prints errors only (no progress, no build-backend warnings to read past).
PIP := $(BIN)/python -m pip --disable-pip-version-check -qq

$(BIN)/python:
	@echo "creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip

install: $(BIN)/python
	@echo "installing jcnn into $(VENV) (a few minutes the first time)"
	@$(PIP) install -e '.[plots]'

install-test: $(BIN)/python
	@echo "installing jcnn and its test tools into $(VENV) (a few minutes the first time)"
	@$(PIP) install -e '.[test]'

# DATA_DIR: a folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz (default: $$JCNN_DATA_DIR,
# else ~/.cache/jcnn, where the official archive is downloaded and checked if missing).
# Running it again resumes the run in runs/vgg_seed from its last checkpoint.
run: install
	JCNN_MAKE_RUN=1 $(BIN)/python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_seed.cfg --workdir=runs/vgg_seed $(if $(DATA_DIR),--data_dir=$(DATA_DIR))

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@echo "building the API reference (mkdocs --strict: a docstring warning fails)"
	@$(BIN)/mkdocs build --strict --site-dir site > site.log 2>&1 || { grep -v '^INFO' site.log; exit 1; }

test: lint
	$(BIN)/pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
