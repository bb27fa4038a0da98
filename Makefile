# rasterfn: `make install`, `make demo`, `make test`, `make bench`. Everything runs from the local .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CHECKOV_VENV ?= .venv-checkov
# PyTorch's CPU wheels: PyPI's Linux torch is a multi-GB CUDA build. Empty it to use only your pip config.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.DEFAULT_GOAL := help
.PHONY: help install demo test lint static pytest bench predict train-demo serve

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install rasterfn with its test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --retries 0 --timeout 15 $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) 'torch==2.13.0'
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install  ## the main job: embedded S3 + SQS, upload data/test-1.tif, get its .npy beside it
	$(VENV)/bin/rasterfn demo

test: install lint pytest  ## lint, static checks and the whole test suite

lint: install  ## ruff (lint + format check)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: install  ## the test suite alone (pytest's "no tests collected", exit 5, fails the run)
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; fi; exit $$rc

bench: install  ## speed and memory ratios, measured side by side in one run
	$(PY) scripts/bench.py

predict: install  ## segment data/test-1.tif into output.npy
	$(VENV)/bin/rasterfn predict data/test-1.tif -o output.npy

train-demo: install  ## retrain the demo weights (about 10 minutes on 2 CPU cores)
	$(VENV)/bin/rasterfn train-demo

serve: install  ## run the Knative function locally on 127.0.0.1:8080
	$(VENV)/bin/rasterfn serve
