# stylegraph: every target installs what it needs into .venv (inside the checkout, ignored by git).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-installed
# The DAG tests' own environment: Airflow 3 does not fit beside the jobs' pins (requirements/airflow.txt).
AIRFLOW_VENV := .venv-airflow
AIRFLOW_PY := $(AIRFLOW_VENV)/bin/python
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.stamp-installed
DATA ?= data
SAMPLE := $(DATA)/sample
RUN_DIR := $(DATA)/run
RUN_DATE ?= 2024-03-31
SEED ?= 7
QUICK ?=
export PYTHONHASHSEED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv jvm-archive airflow-venv sample run test browser bench lint dist clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements/base.txt requirements/dev.txt setup.py
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP) ## create .venv and install the pinned stack

jvm-archive: $(STAMP) ## the local Spark JVM's class-data archive (built once per Java and Spark install, ~35 s)
	$(PY) -m jobs.common.jvm_archive

$(AIRFLOW_STAMP): requirements/airflow.txt requirements/airflow-constraints.txt
	test -x $(AIRFLOW_PY) || $(PYTHON_BOOT) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install -q --upgrade pip
	$(AIRFLOW_PY) -m pip install -q -r requirements/airflow.txt -c requirements/airflow-constraints.txt
	touch $@

airflow-venv: $(AIRFLOW_STAMP) ## create .venv-airflow (Airflow 3 + amazon provider) for the DAG tests

sample: $(STAMP) ## generate the deterministic sample dataset under data/sample
	$(PY) -m jobs.generate_sample --output $(SAMPLE) --seed $(SEED) --end-date $(RUN_DATE)

run: $(STAMP) jvm-archive ## the whole pipeline on the sample data, local Spark
	$(PY) -m jobs.pipeline --workdir $(RUN_DIR) --sample $(SAMPLE) --run-date $(RUN_DATE) --seed $(SEED)

test: $(STAMP) jvm-archive $(AIRFLOW_STAMP) browser ## the test suite: jobs (.venv) and the DAG (.venv-airflow); fails if either fails
	status=0; \
	$(PY) -m pytest tests || status=1; \
	$(AIRFLOW_PY) -m pytest tests/dags || status=1; \
	exit $$status

browser: ## Debian's Chromium for the HTML report's browser test (installed when missing)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

bench: $(STAMP) jvm-archive ## every benchmark under bench/, current tables in bench/RESULTS.md (QUICK=1: smoke run to bench/results/quick.md)
	$(PY) -m bench.run_all $(if $(QUICK),--quick,)

lint: $(STAMP) ## ruff on everything, mypy on the packages (configured in pyproject.toml); fails if either fails
	status=0; \
	$(PY) -m ruff check jobs udfs schemas readers emr glue dags bench tests || status=1; \
	$(PY) -m mypy || status=1; \
	exit $$status

dist: $(STAMP) ## wheel, --py-files zip, entry scripts and the EMR wheelhouse (GBs) under dist/
	$(PY) -m emr.dist --output dist --wheelhouse

clean: ## remove generated data, builds and caches (keeps .venv)
	rm -rf $(DATA) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache spark-warehouse
	find . -name __pycache__ -not -path './.venv*' -prune -exec rm -rf {} +
