"""Fixtures shared by the test modules that start the whole gateway (each defines its own `server`)."""

import pytest

from edge_harness import assert_ledger_ok


@pytest.fixture
def double_entry_holds(server):
    """After each test that asks for it, the ledger still balances."""
    yield
    assert_ledger_ok(server)
