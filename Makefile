# CityOS — `make help` lists the targets. Everything runs through uv from the committed uv.lock;
# uv itself is bootstrapped into .tools/ when it is not on PATH (a fresh machine needs only python3).
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(CURDIR)/.tools/bin/uv
endif
RUN := $(UV) run --frozen
PYPROJECTS := $(wildcard pyproject.toml platform/pyproject.toml proto/gen/python/pyproject.toml services/*/pyproject.toml)
PYTEST_ARGS ?=

.PHONY: help install run test test-fast lint proto proto-check vendor-protos bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(CURDIR)/.tools/bin/uv:
	@echo "uv not found: installing uv $(UV_VERSION) into .tools/"
	python3 -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: $(UV) uv.lock $(PYPROJECTS)
	$(UV) sync --frozen --all-packages
	@touch $@

install: .venv/.synced ## install every workspace member and the dev tools from uv.lock

run: install ## bring up the city on embedded defaults (every installed service); Ctrl-C stops it
	$(RUN) cityos dev

test: install ## the whole suite (what CI runs), slow tests included
	$(RUN) pytest $(PYTEST_ARGS)

test-fast: install ## the suite without the tests marked slow
	$(RUN) pytest -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff, buf lint, buf breaking (against the previous commit), mypy on the platform and services
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) buf lint
	BUF="$(RUN) buf" bash scripts/buf_breaking.sh
	$(RUN) mypy

proto: install ## regenerate the committed stubs in proto/gen/python from proto/
	$(RUN) python scripts/gen_protos.py

proto-check: install ## fail if the committed stubs differ from a fresh generation (CI's drift gate)
	$(RUN) python scripts/gen_protos.py --check

vendor-protos: install ## re-copy the google/rpc protos we import from the googleapis-common-protos wheel
	$(RUN) python scripts/vendor_protos.py

bench: install ## run the benchmarks; each prints ratios against a baseline measured in the same run
	@for b in bench/*.py; do echo "== $$b"; $(RUN) python $$b || exit 1; done

# The chart checks run in their own environment: helm-python-sdk (Helm's engine, no helm binary) needs
# Python 3.12, which pyenv provides; the workspace stays on 3.11. Pinned in tests/helm/requirements.txt.
HELM_PYTHON ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12.*/bin/python3.12 $(HOME)/.pyenv/versions/3.12.*/bin/python3.12) $(shell command -v python3.12 2>/dev/null))
HELM_VENV := .tools/helm-venv

$(HELM_VENV)/.installed: tests/helm/requirements.txt | $(UV)
	@test -n "$(HELM_PYTHON)" || { echo "helm-lint needs Python 3.12 (pyenv install 3.12)"; exit 1; }
	$(UV) venv --clear --quiet --python $(HELM_PYTHON) $(HELM_VENV)
	$(UV) pip install --quiet --python $(HELM_VENV)/bin/python -r tests/helm/requirements.txt
	@touch $@

.PHONY: helm-lint
helm-lint: install $(HELM_VENV)/.installed ## lint + render helm/cityos (every ci/ scenario), validate objects, hadolint, tests/helm
	$(HELM_VENV)/bin/python scripts/helm_check.py
	UV=$(UV) $(HELM_VENV)/bin/python -m pytest -c tests/helm/pytest-helm.ini --rootdir tests/helm tests/helm $(PYTEST_ARGS)

clean: ## remove local state (var/), caches and the virtualenv
	rm -rf var .venv .tools .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
