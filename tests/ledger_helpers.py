"""Helpers for engine tests: build an engine, apply batches, read result codes by name."""

from collections.abc import Iterable

from engine import Account, AccountCode, Batch, BatchResult, Command, CreateAccounts, CreateTransfers, Engine, Transfer, TransferCode


def apply_batch(engine: Engine, timestamp: int, commands: Iterable[Command]) -> BatchResult:
    """Apply `commands` as the engine's next batch (sequence = last + 1) at `timestamp` nanoseconds."""
    return engine.apply(Batch(engine.sequence + 1, timestamp, list(commands)))


def create_accounts(engine: Engine, timestamp: int, accounts: Iterable[Account]) -> list[str]:
    """Create `accounts` in one batch; the result code of each, by name."""
    result = apply_batch(engine, timestamp, [CreateAccounts(list(accounts))])
    return [AccountCode.name(code) for code in result.results[0]]


def create_transfers(engine: Engine, timestamp: int, transfers: Iterable[Transfer]) -> list[str]:
    """Create `transfers` in one batch; the result code of each, by name."""
    result = apply_batch(engine, timestamp, [CreateTransfers(list(transfers))])
    return [TransferCode.name(code) for code in result.results[0]]


def build_engine(timestamp: int, accounts: Iterable[Account]) -> Engine:
    """A new engine whose first batch, at `timestamp`, created all of `accounts`."""
    engine = Engine()
    names = create_accounts(engine, timestamp, accounts)
    assert set(names) <= {"ok"}, names
    return engine
