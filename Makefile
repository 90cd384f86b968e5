# The README's two commands: `make run` (the app) and `make test` (the test suite). Both set up a
# virtual environment from the pinned requirements first, so they work on a fresh machine.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test bench chromium

$(VENV)/.app-installed: requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.app-installed requirements-dev.txt
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Debian's Chromium drives the browser test (Playwright cannot download its own browsers here).
chromium:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

run: $(VENV)/.app-installed
	$(PYTHON) app.py

test: $(VENV)/.dev-installed chromium
	$(PYTHON) -m pytest

bench: $(VENV)/.dev-installed
	bash bench/run_all.sh
