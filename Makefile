# Two commands do all the set-up on a fresh machine (Python 3.11+ with venv):
#   make demo   installs Tocsin in .venv and runs the demo on the embedded broker
#   make test   installs Tocsin with its dev tools in .venv and runs lint, types and tests
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo run test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tocsin demo

run: $(VENV)/.installed
	$(BIN)/tocsin run

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# mypy cannot follow an editable install that maps folders into a namespace, so it checks
# a tree of symlinks laid out as the installed `tocsin` package.
typecheck: $(VENV)/.installed
	rm -rf .typecheck && mkdir -p .typecheck/tocsin
	for d in processors schemas streams sinks; do ln -s ../../$$d .typecheck/tocsin/$$d; done
	ln -s ../../tocsin/clients .typecheck/tocsin/clients
	cp tocsin/__init__.py tocsin/cli.py tocsin/testing.py .typecheck/tocsin/
	cd .typecheck && MYPYPATH=. ../$(BIN)/mypy --config-file ../pyproject.toml \
		-p tocsin.processors -p tocsin.schemas -p tocsin.streams -p tocsin.sinks \
		-p tocsin.clients -m tocsin.cli -m tocsin.testing

# The page tests drive Debian's Chromium (Playwright cannot download a browser here).
CHROMIUM ?= /usr/bin/chromium
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "the page tests need Chromium at $(CHROMIUM)"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: lint typecheck $(CHROMIUM)
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache
