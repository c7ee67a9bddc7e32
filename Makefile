# Thin wrapper: every target calls the package or a standard tool.
# `make pipeline` and `make test` create/update .venv from requirements.lock on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.8
PROFILE ?= quick
ARGS ?=

WHEELHOUSE ?= wheelhouse

.PHONY: setup pipeline test test-fast lab notebooks workbooks monitor lock sample lint clean help wheelhouse setup-offline
help:
	@echo "make pipeline   run every chapter notebook in order (papermill) into runs/<run-id>/"
	@echo "make test       unit + integration tests, nbval on the notebooks, a quick pipeline run"
	@echo "make lab        open JupyterLab on notebooks/"
	@echo "make notebooks  re-execute the committed notebooks in place (refresh their outputs)"
	@echo "make workbooks  write workbooks/<chapter>.ipynb (exercises without solutions) and the autograders, masters checked"
	@echo "make monitor    start Prometheus and Alertmanager on 127.0.0.1 for chapter 6 (ARGS='--speed 30')"
	@echo "make lock       re-resolve requirements.lock from pyproject.toml"
	@echo "make sample     regenerate data/sample/ from the committed calibration"
	@echo "make clean      remove runs/ and the data caches (keeps .venv)"
	@echo "make wheelhouse     download every wheel of requirements.lock and of checkov's tool env into wheelhouse/ (online)"
	@echo "make setup-offline  build .venv from wheelhouse/ with no index and no network"

setup: $(VENV)/.synced

$(VENV)/.synced: requirements.lock pyproject.toml hdb_mlops/resources/jupyterlab/overrides.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp hdb_mlops/resources/jupyterlab/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $@

pipeline: setup
	$(BIN)/hdb-mlops pipeline run --profile $(PROFILE) $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not browser" tests $(ARGS)

lab: setup
	$(BIN)/jupyter lab notebooks/

notebooks: setup
	$(BIN)/hdb-mlops notebooks refresh

monitor: setup
	$(BIN)/hdb-mlops monitor up $(ARGS)

lock:
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 -o requirements.lock

workbooks: setup
	$(BIN)/hdb-mlops workbook build --check --jobs 2 $(ARGS)

sample: setup
	$(BIN)/hdb-mlops data sample --out data/sample

lint: setup
	$(BIN)/ruff check hdb_mlops tests benchmarks notebooks

clean:
	rm -rf runs data/raw data/interim data/processed .pytest_cache .venv-checkov

wheelhouse:
	PYTHON=$(PYTHON) scripts/wheelhouse.sh build $(WHEELHOUSE)

setup-offline:
	PYTHON=$(PYTHON) scripts/wheelhouse.sh install $(WHEELHOUSE) $(VENV)
