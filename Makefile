PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow run bench-engine bench-durable bench-http bench-ceiling clean

venv: $(STAMP)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest

test-slow: venv
	$(BIN)/python -m pytest -m slow

run: venv
	$(BIN)/paygate serve

bench-engine: venv
	$(BIN)/python -m bench.engine

bench-durable: venv
	$(BIN)/python -m bench.durable

bench-http: venv
	$(BIN)/python -m bench.http

bench-ceiling: venv
	$(BIN)/python -m bench.ceiling

clean:
	rm -rf $(VENV) data bench/out
