# The two commands (CONTRACT §1): `make run` and `make test`. Only Python 3.11+ is needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Development defaults; production sets DEBUG off with a real SECRET_KEY and encryption keys.
export DEBUG ?= 1

.PHONY: run test install bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py gateway_demo --base-url http://$(HOST):$(PORT)
	$(BIN)/python -m uvicorn gateway.asgi:application --host $(HOST) --port $(PORT) --no-access-log --timeout-graceful-shutdown 30

test: install
	$(BIN)/python -m pytest

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
