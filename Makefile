# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs what it needs: torch 2.13.0 (the CPU build) first, so that nothing pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bastion-installed
PEERS := .venv-bench/.peers-installed
ML_PEERS := $(VENV)/.ml-peers-installed

.PHONY: demo test lint bench-scan bench-sign bench-audit bench-privacy bench-evasion \
	bench-serve bench-extraction bench-poison bench-diff

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,torch]'
	touch $(STAMP)

$(PEERS): bench/setup-peers.sh
	bash bench/setup-peers.sh
	touch $(PEERS)

demo: $(STAMP)
	$(BIN)/bastion demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: $(STAMP) $(PEERS) lint
	$(BIN)/python -m pytest -n 2 -q -m "not serial"
	$(BIN)/python -m pytest -q -m serial

$(ML_PEERS): bench/setup-ml-peers.sh $(STAMP)
	bash bench/setup-ml-peers.sh
	touch $(ML_PEERS)

bench-scan: $(STAMP) $(PEERS)
	$(BIN)/python bench/scan/run.py

bench-sign: $(STAMP) $(PEERS)
	$(BIN)/python bench/sign/run.py

bench-audit: $(STAMP)
	nice -n 10 $(BIN)/python bench/audit/run.py

bench-privacy: $(STAMP) $(ML_PEERS)
	$(BIN)/python bench/privacy/run.py

bench-evasion: $(STAMP) $(ML_PEERS)
	nice -n 10 $(BIN)/python bench/evasion/run.py

bench-serve: $(STAMP)
	nice -n 10 $(BIN)/python bench/serve/run.py

bench-extraction: $(STAMP) $(ML_PEERS)
	nice -n 10 $(BIN)/python bench/extraction/run.py

bench-poison: $(STAMP) $(ML_PEERS)
	$(BIN)/python bench/poison/run.py

bench-diff: $(STAMP)
	$(BIN)/python bench/diff/run.py
