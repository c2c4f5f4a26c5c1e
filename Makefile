PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements.lock
# `make lock` alone needs uv, kept apart from the project's environment at a fixed version
UV_VERSION := 0.13.9
UV := .lock-tools/bin/uv
PYPI := https://pypi.org/simple

.PHONY: venv lock lock-check chromium test test-slow run screenshots bench-engine bench-durable bench-http bench-ceiling \
	bench-notify bench-soak clean

venv: $(STAMP)

# Every package (the test and bench extras and the build backend too) comes pinned and hashed from the lock;
# the project itself is installed on top, editable, adding nothing.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) tools/lockcheck.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

lock-check:
	$(PYTHON) tools/lockcheck.py

# Re-resolve after pyproject.toml changes, keeping the current pins where they still fit
# (`make lock LOCK_FLAGS=--upgrade` moves everything to the newest releases).
lock:
	test -x $(UV) || $(PYTHON) -m pip install --quiet --target .lock-tools uv==$(UV_VERSION)
	$(PYTHON) tools/lockcheck.py --build-requires | $(UV) pip compile --quiet pyproject.toml - \
		--extra test --extra bench --universal --python-version 3.11 --generate-hashes \
		--index-url $(PYPI) --custom-compile-command 'make lock' $(LOCK_FLAGS) -o $(LOCK)
	$(PYTHON) tools/lockcheck.py --stamp

# Run again with asserts stripped (PYTHONOPTIMIZE, as python -O; the shard processes the tests start inherit it):
# a check or piece of work that hid in an assert vanishes here. The tests' own asserts still run, since pytest
# rewrites them into plain raises (conftest.py registers the helper modules too). Exit code 5 (no test collected)
# fails the target like any other: a run that checked nothing is no proof.
OPTIMIZED_TESTS := tests/test_engine_*.py tests/test_journal_store.py tests/test_shard_faults.py \
	tests/test_replication.py tests/test_shard_crash.py tests/test_shard_service.py tests/test_sending.py

# The page tests drive Debian's chromium (playwright's own browser download cannot work here): installed when
# missing and we are root; otherwise those tests say what to install.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || test "$$(id -u)" != 0 || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; }; }

test: lock-check venv chromium
	$(BIN)/python -m pytest
	PYTHONOPTIMIZE=1 $(BIN)/python -m pytest $(OPTIMIZED_TESTS)

test-slow: venv chromium
	$(BIN)/python -m pytest -m slow

run: venv
	$(BIN)/paygate serve

# Every page at desktop and phone sizes, as PNG under bench/out/screenshots/ (a real serve in a temporary folder).
screenshots: venv chromium
	$(BIN)/python -m bench.screenshots

bench-engine: venv
	$(BIN)/python -m bench.engine

bench-durable: venv
	$(BIN)/python -m bench.durable

bench-http: venv
	$(BIN)/python -m bench.http

bench-ceiling: venv
	$(BIN)/python -m bench.ceiling

# Millions of orders through one engine with end-of-day archival: RSS and apply rate per tenth (SOAK_FLAGS=--orders N).
bench-soak: venv
	$(BIN)/python -m bench.soak $(SOAK_FLAGS)

bench-notify: venv
	$(BIN)/python -m bench.notify

clean:
	rm -rf $(VENV) .lock-tools data bench/out
