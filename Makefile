# The two commands (CONTRACT §1): `make run` and `make test`. Only Python 3.11+ is needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Development defaults; production sets DEBUG off with a real SECRET_KEY and encryption keys.
export DEBUG ?= 1
PIP_INSTALL := -m pip install --disable-pip-version-check -q --require-hashes

.PHONY: run test install lock docs bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The locked, hashed set (`make lock` regenerates it from requirements-dev.txt).
$(VENV)/.installed: requirements-dev.lock | $(BIN)/python
	$(BIN)/python $(PIP_INSTALL) -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py gateway_demo --base-url http://$(HOST):$(PORT)
	$(BIN)/python -m uvicorn gateway.asgi:application --host $(HOST) --port $(PORT) --no-access-log --timeout-graceful-shutdown 30

test: install
	$(BIN)/python -m pytest

# Lock files: every package pinned with its hashes, resolved by pip-tools (in its own venv)
# against the package index alone: no pip config file and no PIP_FIND_LINKS, so a machine's local
# wheel folders or extra indexes never reach a lock. requirements-dev.txt and
# requirements-prod.txt are constrained to requirements.lock, so the dev and prod locks pin the
# same runtime versions and install together (.ci/run). Existing pins are kept where the inputs
# allow them; `make lock LOCK_ARGS=--upgrade` moves every unpinned dependency to its newest.
LOCK_ARGS ?=
TOOLS := $(VENV)/tools
COMPILE := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	$(TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras $(LOCK_ARGS)

$(TOOLS)/.installed: requirements-tools.lock
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python $(PIP_INSTALL) -r requirements-tools.lock
	touch $@

lock: $(TOOLS)/.installed
	$(COMPILE) --output-file requirements.lock requirements.txt
	$(COMPILE) --output-file requirements-dev.lock requirements-dev.txt
	$(COMPILE) --output-file requirements-prod.lock requirements-prod.txt
	$(COMPILE) --output-file requirements-docs.lock requirements-docs.txt
	$(COMPILE) --output-file requirements-tools.lock requirements-tools.txt

# The documentation site (docs/, mkdocs.yml), built strictly: a broken link, anchor or nav entry
# fails. Not --quiet: it hides the warnings that --strict counts.
DOCS := $(VENV)/docs
$(DOCS)/.installed: requirements-docs.lock
	$(PYTHON) -m venv $(DOCS)
	$(DOCS)/bin/python $(PIP_INSTALL) -r requirements-docs.lock
	touch $@

docs: $(DOCS)/.installed
	NO_MKDOCS_2_WARNING=1 $(DOCS)/bin/mkdocs build --strict

# Performance benchmark (issue 9; not part of `make test`): bench/README.md.
.PHONY: bench-clients bench-servers
$(VENV)/.bench-installed: bench/requirements.txt $(VENV)/.installed
	$(BIN)/python -m pip install --disable-pip-version-check -q -r bench/requirements.txt
	touch $@

bench: install $(VENV)/.bench-installed
	$(BIN)/python -m bench.run

bench-clients: install $(VENV)/.bench-installed
	$(BIN)/python -m bench.client_compare

bench-servers: install $(VENV)/.bench-installed
	$(BIN)/python -m bench.server_compare
