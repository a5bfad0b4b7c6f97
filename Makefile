# The two commands: `make demo` (set up, then run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
ARGS ?=

.PHONY: demo test lint conformance bench setup clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/lm_demo.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check torchtpu tests examples benchmarks scripts
	$(BIN)/ruff format --check torchtpu tests examples benchmarks scripts

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

conformance: $(STAMP)
	$(BIN)/python scripts/conformance.py --limit 3 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
