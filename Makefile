# stylegraph: every target installs what it needs into .venv (inside the checkout, ignored by git).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-installed
DATA ?= data
SAMPLE := $(DATA)/sample
RUN_DIR := $(DATA)/run
RUN_DATE ?= 2024-03-31
SEED ?= 7
export PYTHONHASHSEED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv sample run test bench lint dist clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): requirements/base.txt requirements/dev.txt setup.py
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP) ## create .venv and install the pinned stack

sample: $(STAMP) ## generate the deterministic sample dataset under data/sample
	$(PY) -m jobs.generate_sample --output $(SAMPLE) --seed $(SEED) --end-date $(RUN_DATE)

run: $(STAMP) ## the whole pipeline on the sample data, local Spark
	$(PY) -m jobs.pipeline --workdir $(RUN_DIR) --sample $(SAMPLE) --run-date $(RUN_DATE) --seed $(SEED)

test: $(STAMP) ## the test suite
	$(PY) -m pytest tests

bench: $(STAMP) ## every benchmark under bench/, one results table
	$(PY) -m bench.run_all

lint: $(STAMP) ## ruff
	$(PY) -m ruff check jobs udfs schemas emr glue dags bench tests

dist: $(STAMP) ## wheel, --py-files zip and entry scripts under dist/
	$(PY) -m jobs.build_dist --output dist

clean: ## remove generated data, builds and caches (keeps .venv)
	rm -rf $(DATA) build dist *.egg-info .pytest_cache .ruff_cache spark-warehouse
	find . -name __pycache__ -not -path './.venv*' -prune -exec rm -rf {} +
