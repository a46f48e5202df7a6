# Each target first creates or reuses the virtualenv it needs, so it is the only command a fresh
# machine needs. `demo` and `test` run in .venv (the CPU serving stack, 3.5 GB); `lint` in
# .venv-lint (the package and its linters, no serving stack).
VENV ?= $(or $(LLMSLO_VENV),$(CURDIR)/.venv)
LINT_VENV ?= $(or $(LLMSLO_LINT_VENV),$(CURDIR)/.venv-lint)
export LLMSLO_VENV := $(VENV)
export LLMSLO_LINT_VENV := $(LINT_VENV)

.PHONY: demo test lint venv lint-venv
demo: venv
	$(VENV)/bin/pytest --slo slo_specs/demo.yaml

test: venv
	$(VENV)/bin/pytest tests

# every check runs, so one run names every problem; the target fails if any did
lint: lint-venv
	@status=0; \
	$(LINT_VENV)/bin/ruff check . || status=1; \
	$(LINT_VENV)/bin/ruff format --check . || status=1; \
	$(LINT_VENV)/bin/mypy || status=1; \
	exit $$status

venv:
	@scripts/bootstrap.sh >/dev/null

lint-venv:
	@scripts/bootstrap.sh lint >/dev/null
