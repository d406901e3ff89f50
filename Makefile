# loyalty: `make run` serves the API, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
WORKERS ?= 4

.PHONY: help run test lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP) ## migrate the database and serve the API on http://$(HOST):$(PORT)
	@mkdir -p var
	$(BIN)/loyalty db upgrade
	$(BIN)/loyalty rules install-default
	@echo "demo API key (all scopes): $$($(BIN)/loyalty api-keys demo)"
	$(BIN)/gunicorn --bind $(HOST):$(PORT) --workers $(WORKERS) --access-logfile - wsgi:app

test: $(STAMP) ## run every test on SQLite and PostgreSQL
	$(BIN)/pytest

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check loyalty rules tests bench migrations
	$(BIN)/mypy loyalty rules

bench: $(STAMP) ## run the benchmarks on PostgreSQL (see bench/README.md)
	PYTHONPATH=. $(BIN)/python bench/rules.py
	PYTHONPATH=. $(BIN)/python bench/backtest.py
	PYTHONPATH=. $(BIN)/python bench/tier_review.py
	$(BIN)/python bench/accrual.py

clean: ## remove the virtualenv and the local database
	rm -rf $(VENV) var
