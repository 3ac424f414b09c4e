# Two commands on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := redis-server docker-compose wordnet-base

.PHONY: serve test test-fast lint bench system-deps install clean

serve: install system-deps  ## Redis (if none answers) + a worker + the API on 127.0.0.1:8000
	$(BIN)/soundedit serve

test: lint system-deps  ## lint, then the whole suite: what CI runs
	$(BIN)/python -m pytest

test-fast: install  ## skip the slow suites
	$(BIN)/python -m pytest -m "not slow"

bench: install  ## step time + memory vs the official path, batched edits, the service under load
	$(BIN)/python benchmarks/run.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[worker,dev]'
	touch $@

system-deps:  ## Debian packages the service and tests use (skipped when present)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
