# execmesh: one entry point for setting up, running and checking the project.
# `make setup && make services-up && make test` is the whole story on a fresh machine.

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
RUFF   := $(VENV)/bin/ruff
MYPY   := $(VENV)/bin/mypy

.DEFAULT_GOAL := help
.PHONY: help setup services-up services-down services-status test test-unit lint fmt \
        stage deploy lock schemas schemas-check run clean-data demo demo-stop openapi

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## install everything: venv, Redis, Kafka (KRaft), FerretDB; idempotent
	bash scripts/setup.sh

services-up: ## start Kafka, FerretDB and Redis in the background and wait until healthy
	$(PYTHON) -m execmesh.localservices up

services-down: ## stop the local services started by services-up
	$(PYTHON) -m execmesh.localservices down

services-status: ## show whether each service answers its health check
	$(PYTHON) -m execmesh.localservices status

# pytest exits 5 when it collects nothing: that is not a failure of the code under test.
test: ## every test: unit, integration against the real services, e2e
	$(PYTEST) -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

test-unit: ## only the tests that need no service and no sandbox
	$(PYTEST) -q -m "not services and not node"

lint: ## ruff (lint and format check) and mypy --strict, all clean
	$(RUFF) check .
	$(RUFF) format --check .
	$(MYPY)

fmt: ## format and auto-fix with ruff
	$(RUFF) format .
	$(RUFF) check --fix .

stage: ## stage each function with the library for `func deploy` (build/functions/)
	$(PYTHON) scripts/stage_functions.py

deploy: ## deploy to the current kubectl context with func and kubectl (REGISTRY=...)
	bash scripts/deploy.sh

lock: ## pin every installed Python package version into requirements.lock
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^#' > requirements.lock

schemas: ## regenerate eventing/schemas/ from the event catalogue
	$(PYTHON) -m execmesh.schemas

schemas-check: ## fail when eventing/schemas/ is stale
	$(PYTHON) -m execmesh.schemas --check

run: ## the whole local mesh in the foreground (needs services-up)
	$(VENV)/bin/execmesh up

demo: ## fresh machine to first run: setup, services, mesh in the background, a key, examples/hello.py via the API
	bash examples/demo.sh

demo-stop: ## stop the mesh `make demo` started in the background (services stay up)
	bash examples/demo-stop.sh

openapi: ## regenerate api/openapi.json from the API's models
	$(PYTHON) -m api.openapi

clean-data: services-down ## stop the services and delete their data (keeps installs)
	rm -rf .local/data .local/run .local/kafka/server.properties
