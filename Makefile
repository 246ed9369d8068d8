# Two commands do all the set-up: `make run` (the app on the offline default models) and
# `make test` (the test suite). Each creates .venv and installs what is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: setup browser run test test-all fetch bench lint

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Debian's chromium drives the browser tests; without root or apt they are skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: browser tests will be skipped"

run: setup
	$(BIN)/python app.py --preload

test: setup browser
	$(BIN)/python -m pytest

test-all: setup browser
	$(BIN)/python -m pytest -m ""

fetch: setup
	$(BIN)/python -m explain fetch

bench: setup
	$(BIN)/python bench/attribution.py

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
