# Keel's two commands: `make dev` starts the platform, `make test` runs every check.
# Both install what they need into .venv first (bootstrapping uv when it is missing).

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV_STAMP := .venv/.keel-installed

.PHONY: dev test install lint

dev: install
	.venv/bin/keel dev

test: install lint
	.venv/bin/pytest

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

install: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv
