# Thin targets: exactly what people and CI run. Logic lives in `tenfold` (src/tenfold) and scripts/.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
TENFOLD := $(BIN)/tenfold
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo up down status test test-fast lint bench synth clean

setup: ## create .venv and install everything (idempotent)
	@bash scripts/setup.sh

demo: setup ## bring the local platform up and run the lifecycle on the embedded default
	@$(TENFOLD) demo

up: setup ## start the local services (Airflow, Pub/Sub and GCS emulators)
	@$(TENFOLD) up

down: ## stop what `make up` started
	@if [ -x $(TENFOLD) ]; then $(TENFOLD) down; else echo "nothing to stop: $(TENFOLD) is not installed (make setup)"; fi

status:
	@[ -x $(TENFOLD) ] || { echo "error: $(TENFOLD) is not installed: run make setup (or make up)" >&2; exit 1; }
	@$(TENFOLD) status

# Test processes (pytest-xdist), each given whole test files (--dist loadfile: a module's fixtures are set up once).
# Two on a 2-core machine: most tests wait on a service or a subprocess, so two workers take about two thirds of the
# time one does (bench/RESULTS.md, the suite's time). TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test: setup lint ## the whole suite, as CI runs it
	@$(PYTEST)

test-fast: setup ## the suite without the slow and integration tests (the platform, the lifecycle, fleets, browser)
	@$(PYTEST) -m "not slow and not integration"

lint: setup
	@$(BIN)/ruff check src dags spark_jobs infra tests bench scripts
	@$(BIN)/mypy
	@$(BIN)/lint-imports
	@$(BIN)/python scripts/check_imports.py
	@$(BIN)/hadolint serving_image/Dockerfile

synth: setup ## synthesize every stack of dev and prod (no cloud needed)
	@$(BIN)/python -m infra.main

bench: setup ## run the benchmarks; each writes bench/results/<name>.md (headlines are copied to bench/RESULTS.md)
	@$(BIN)/python bench/features.py --repeat 2
	@$(BIN)/python bench/training.py
	@$(BIN)/python bench/synth.py
	@$(BIN)/python bench/serving.py
	@$(BIN)/python bench/offline.py --rows 200000 --rows-per-message 10000 --repeat 3
	@$(BIN)/python bench/drift.py
	@$(BIN)/python bench/feedback_window.py

# The home the settings name (TENFOLD_HOME), the one `tenfold down` stopped: `rm -rf .tenfold` deleted the default
# home's lake, registry and Airflow database, and left TENFOLD_HOME's. Without a .venv: TENFOLD_HOME, else .tenfold, as
# the settings default. An empty answer, /, or a folder holding $HOME or the checkout (.., /work) is refused, never
# removed. cdktf.out in the root: what infra/main.py wrote there before it resolved the CLIs' relative output folder
# against infra/.
clean: down
	@if [ -x $(TENFOLD) ]; then home=$$($(TENFOLD) config get local.home) || exit 1; else home=$${TENFOLD_HOME:-.tenfold}; fi; \
	full=$$(realpath -m -- "$$home" 2>/dev/null); \
	case "$$full" in ""|/) full=;; esac; \
	case "$$(realpath -m -- "$$HOME")/" in "$$full"/*) full=;; esac; \
	case "$$(realpath -m .)/" in "$$full"/*) full=;; esac; \
	if [ -z "$$full" ]; then \
	  echo "error: not removing the local home '$$home': it holds your home folder or this checkout; set TENFOLD_HOME to the folder Tenfold keeps its data in" >&2; \
	  exit 1; \
	fi; \
	echo "rm -rf $$home infra/cdktf.out cdktf.out"; rm -rf -- "$$home" infra/cdktf.out cdktf.out
