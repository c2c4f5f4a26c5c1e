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

# Run again with asserts stripped (PYTHONOPTIMIZE, as python -O; the shard processes the tests start inherit it):
# a check or piece of work that hid in an assert vanishes here. The tests' own asserts still run, since pytest
# rewrites them into plain raises (conftest.py registers the helper modules too). Exit code 5 (no test collected)
# fails the target like any other: a run that checked nothing is no proof.
OPTIMIZED_TESTS := tests/test_engine_*.py tests/test_journal_store.py tests/test_shard_faults.py \
	tests/test_replication.py tests/test_shard_crash.py tests/test_shard_service.py tests/test_sending.py

test: venv
	$(BIN)/python -m pytest
	PYTHONOPTIMIZE=1 $(BIN)/python -m pytest $(OPTIMIZED_TESTS)

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
