# Each target first creates or reuses the virtualenv, so it is the only command a fresh machine needs.
VENV ?= $(or $(LLMSLO_VENV),$(CURDIR)/.venv)
export LLMSLO_VENV := $(VENV)

.PHONY: demo test lint venv
demo: venv
	$(VENV)/bin/pytest --slo slo_specs/demo.yaml

test: venv
	$(VENV)/bin/pytest tests

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

venv:
	@scripts/bootstrap.sh >/dev/null
