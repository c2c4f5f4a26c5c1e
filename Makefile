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

# The locked wheels, kept outside the clone and only those of the current lock: pip's own HTTP cache keeps nothing when
# a proxy drops the registry's cache headers, so every fresh venv downloaded them all again. A venv installs
# from them offline, and downloads them afresh only when one is missing (a new lock). Wheels only, hashes checked at
# every install: nothing is built from source.
WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/paygate/wheels
PIP_LOCKED := --require-hashes --only-binary :all: -r $(LOCK)

# Every package (the test and bench extras and the build backend too) comes pinned and hashed from the lock;
# the project itself is installed on top, editable, adding nothing.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) tools/lockcheck.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-index --find-links $(WHEELS) $(PIP_LOCKED) 2>/dev/null || { \
		rm -rf $(WHEELS).new && $(BIN)/python -m pip download --quiet --dest $(WHEELS).new $(PIP_LOCKED) && \
		rm -rf $(WHEELS) && mv $(WHEELS).new $(WHEELS) && \
		$(BIN)/python -m pip install --quiet --no-index --find-links $(WHEELS) $(PIP_LOCKED); }
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

# Every process the tests start (serve, shards, edge workers, the CLI, Ray's workers) imports these sources: compiled
# once here, since with PYTHONDONTWRITEBYTECODE set each of those processes would compile them anew (-o 1: for -O).
COMPILE := $(BIN)/python -m compileall -q -o 0 -o 1 engine journal edge actors bench tests

# Product code holds no assert (tests/test_no_asserts.py scans engine/ journal/ edge/ actors/), so python -O strips
# nothing of ours. The second run proves the rest with asserts stripped (PYTHONOPTIMIZE, as python -O; the shard
# processes and commands the tests start inherit it): the tests' own asserts still run (pytest rewrites them into
# plain raises; conftest.py registers the helper modules too), and the engine's unit tests, nng sends, and a shard
# process with its replica and replay/verify give the same answers (the engine's property tests, thousands of examples
# through the same code, are left to the first run). Exit code 5 (no test collected) fails the target like any other:
# a run that checked nothing is no proof.
OPTIMIZED_TESTS := tests/test_engine_*.py tests/test_sending.py tests/test_shard_faults.py \
	--ignore=tests/test_engine_properties.py

# The page tests drive Debian's chromium (playwright's own browser download cannot work here): installed when
# missing and we are root; otherwise those tests say what to install.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || test "$$(id -u)" != 0 || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; }; }

test: lock-check venv chromium
	$(COMPILE)
	$(BIN)/python -m pytest
	PYTHONOPTIMIZE=1 $(BIN)/python -m pytest $(OPTIMIZED_TESTS)

test-slow: venv chromium
	$(COMPILE)
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
