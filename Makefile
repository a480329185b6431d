# The two commands a newcomer needs: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv and installs the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test lint lint-only tests-only clean

# The venv's pip installs uv, and uv installs the project: it downloads and byte-compiles in
# parallel (the test extras in ~9 s here, where pip took ~25 s). -q: errors only.
INSTALL := $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python

$(BIN)/python:
	@echo "creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)

$(BIN)/uv: $(BIN)/python
	@$(BIN)/python -m pip --disable-pip-version-check -qq install uv

install: $(BIN)/uv
	@echo "installing jcnn into $(VENV) (a few minutes the first time)"
	@$(INSTALL) -e '.[plots]'

install-test: $(BIN)/uv
	@echo "installing jcnn and its test tools into $(VENV) (a few minutes the first time)"
	@$(INSTALL) -e '.[test]'

# DATA_DIR: a folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz (default: $$JCNN_DATA_DIR,
# else ~/.cache/jcnn, where the official archive is downloaded and checked if missing).
# Running it again resumes the run in runs/vgg_seed from its last checkpoint.
run: install
	JCNN_MAKE_RUN=1 $(BIN)/python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_seed.cfg --workdir=runs/vgg_seed $(if $(DATA_DIR),--data_dir=$(DATA_DIR))

lint: install-test
	@$(MAKE) --no-print-directory lint-only

lint-only:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@echo "building the API reference (mkdocs --strict: a docstring warning fails)"
	@$(BIN)/mkdocs build --strict --site-dir site > site.log 2>&1 || { grep -v '^INFO' site.log; exit 1; }

# The project's own modules byte-compiled once: uv compiles what it installs, but an editable
# install's sources are read in place, and where PYTHONDONTWRITEBYTECODE is set every process a
# test starts would compile them again (~0.07 s of CPU each).
tests-only:
	@$(BIN)/python -m compileall -q -j 2 jcnn experiments tests > /dev/null
	$(BIN)/pytest -n 2 --dist loadfile

# The lint beside the tests: it is one core for ~10 s; either failing fails `make test`.
test: install-test
	@$(MAKE) --no-print-directory -j2 lint-only tests-only

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
