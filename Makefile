# loyalty: `make run` serves the API, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
WORKERS ?= 4
# The sandbox partner's port; LOYALTY_PARTNERS must point there when it is not the default 8090.
SANDBOX_PORT ?= 8090
# The voucher code key: the environment's LOYALTY_SECRET_KEY, else the one `make run` keeps in var/secret-key.
SECRET := export LOYALTY_SECRET_KEY="$${LOYALTY_SECRET_KEY:-$$(cat var/secret-key)}";

.PHONY: help run test lint bench docs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,docs]'
	touch $(STAMP)

run: $(STAMP) ## migrate the database, start the scheduler and the sandbox partner, serve the API on http://$(HOST):$(PORT) and the admin UI at /admin
	@mkdir -p var
# Voucher codes are sealed under LOYALTY_SECRET_KEY: without one in the environment, a key is made once and kept.
	@if [ -z "$$LOYALTY_SECRET_KEY" ] && [ ! -s var/secret-key ]; then \
		(umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > var/secret-key) && \
		chmod 600 var/secret-key && echo "made LOYALTY_SECRET_KEY in var/secret-key"; fi
	$(BIN)/loyalty db upgrade
	$(BIN)/loyalty rules install-default
	$(BIN)/loyalty catalogue install-default
	@$(SECRET) for benefit in $$($(BIN)/loyalty catalogue list --fulfilment pool --status active --quiet); do \
		$(BIN)/loyalty catalogue demo-codes --if-empty $$benefit 200 || exit 1; done
	@echo "demo API key (all scopes): $$($(BIN)/loyalty api-keys demo)"
	@echo "admin UI: http://$(HOST):$(PORT)/admin  user: admin  password: $$($(BIN)/loyalty admin-users demo)"
# The scheduler and the sandbox partner (on 127.0.0.1:8090, where LOYALTY_PARTNERS points by
# default) run in the background for as long as gunicorn does.
	$(BIN)/loyalty sandbox-partner --port $(SANDBOX_PORT) --callback-url 'http://$(HOST):$(PORT)/v1/partners/{partner}/callbacks' & sandbox=$$!; \
	$(SECRET) $(BIN)/loyalty scheduler & scheduler=$$!; \
	trap 'kill $$scheduler $$sandbox 2>/dev/null; wait $$scheduler $$sandbox' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	$(BIN)/gunicorn --config gunicorn.conf.py --bind $(HOST):$(PORT) --workers $(WORKERS)

# Test workers (pytest-xdist): each has its own PostgreSQL database; races run on one worker at a time.
TEST_WORKERS ?= auto

test: $(STAMP) ## run every test on SQLite and PostgreSQL
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP) ## ruff, mypy and the import contracts (layers point down, no cycles)
	$(BIN)/ruff check loyalty rules admin tests bench migrations gunicorn.conf.py
	$(BIN)/mypy loyalty rules admin
	$(BIN)/lint-imports --no-cache

bench: $(STAMP) ## run the benchmarks on PostgreSQL (see bench/README.md)
	PYTHONPATH=. $(BIN)/python bench/rules.py
	PYTHONPATH=. $(BIN)/python bench/backtest.py
	PYTHONPATH=. $(BIN)/python bench/tier_review.py
	$(BIN)/python bench/accrual.py
	PYTHONPATH=. $(BIN)/python bench/inprocess.py
	PYTHONPATH=. $(BIN)/python bench/redemption.py
	PYTHONPATH=. $(BIN)/python bench/finance.py

docs: $(STAMP) ## build the documentation site into site/, strictly: a broken link or a missing page fails it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean: ## remove the virtualenv, the local database and the built site
	rm -rf $(VENV) var site
