# AutoFT Pipelines. `make run` and `make test` do all set-up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup run test lint format compile mlflow-ui bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision come from the machine's local wheels (pip only; see README)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned dependencies

run: setup  ## run the whole pipeline locally on the built-in benchmark (ARGS=... for more options)
	$(BIN)/autoft run $(ARGS)

test: setup  ## run the test suite
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(ARGS)

lint: setup  ## ruff
	$(BIN)/ruff check src components pipeline tests bench

format: setup  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src components pipeline tests bench
	$(BIN)/ruff format src components pipeline tests bench

clean:  ## remove the venv and caches (keeps runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- cluster side: manifests and images (see README "Deploy the cluster side") ----
