# Flotilla — see README.md. `make demo` and `make test` are the two commands.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: setup system proto demo test test-fast bench images consul lint services-start services-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## system: as root, install the real parts the suite runs against (docker.io, Consul)
system:
	bash deploy/scripts/install-system.sh

proto: $(STAMP)
	bash deploy/scripts/gen-proto.sh $(PY)

consul:
	bash deploy/scripts/build-consul.sh

## images: the pause, example-http and example-grpc images, built locally (no registry)
images: $(STAMP)
	FLOTILLA_PYTHON=$(PY) bash deploy/images/build.sh

services-start:
	bash deploy/scripts/services.sh start

services-stop:
	bash deploy/scripts/services.sh stop

demo: $(STAMP)
	bash deploy/scripts/demo.sh $(VENV)

test: $(STAMP) system lint
	bash deploy/scripts/services.sh start
	status=0; { ! docker info >/dev/null 2>&1 || FLOTILLA_PYTHON=$(PY) bash deploy/images/build.sh; } && \
	  $(PY) -m pytest -q $(PYTEST_ARGS) || status=$$?; \
	  bash deploy/scripts/services.sh stop; exit $$status

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

## bench: every tests/bench/bench_*.py, each a script that prints its figures
bench: $(STAMP)
	@for f in tests/bench/bench_*.py; do \
	  echo "== $$f"; $(PY) -m tests.bench.$$(basename $$f .py) || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .run
