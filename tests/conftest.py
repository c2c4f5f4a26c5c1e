"""Fixtures shared by the test modules: the ledger checks after each test, over HTTP or on every engine built."""

import os

import pytest

from actors.runtime import CLUSTER_VARIABLE

# A Ray runtime a test starts in this process is on loopback, as serve's is: set before any test module imports ray.
os.environ.setdefault(CLUSTER_VARIABLE, "0")

# Helpers' asserts are tests' asserts: rewritten by pytest like the test modules', so they run under python -O too.
pytest.register_assert_rewrite("browser_harness", "edge_harness", "engine_faults", "ledger_helpers", "shard_harness")

from edge_harness import assert_ledger_ok  # noqa: E402  (after the registration)
from ledger_helpers import ENGINES  # noqa: E402


@pytest.fixture
def double_entry_holds(server):
    """After each test that asks for it, the ledger still balances."""
    yield
    assert_ledger_ok(server)


@pytest.fixture
def verify_every_engine():
    """For the engine test modules (pytestmark): the full ledger check runs on every engine their tests built."""
    ENGINES.clear()
    yield
    for engine in ENGINES:
        engine.verify()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per page-test module (each test opens its own context). Not per session: playwright's
    sync API keeps an event loop running in this thread while it lives, and every later test's asyncio.run fails."""
    from browser_harness import launched

    with launched() as browser:
        yield browser
