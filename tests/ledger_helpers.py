"""Helpers for engine tests: build an engine, apply batches, read result codes by name."""

from collections.abc import Iterable

import msgspec

from engine import Account, AccountCode, Batch, BatchResult, Command, CreateAccounts, CreateTransfers, Engine, Transfer, TransferCode
from engine.machine import Snapshot
from engine.records import Outcome
from engine.types import NANOSECONDS_PER_SECOND


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


def state_without_failed_ids(engine: Engine) -> bytes:
    """The state as the state hash sees it, less the transfer ids the ledger has spent on failures."""
    snapshot = msgspec.msgpack.decode(engine.snapshot(), type=Snapshot)
    snapshot.sequence = snapshot.timestamp = 0
    snapshot.failed_ids = snapshot.failed_ids_at = []
    return msgspec.msgpack.encode(snapshot)


def build_engine(timestamp: int, accounts: Iterable[Account]) -> Engine:
    """A new engine whose first batch, at `timestamp`, created all of `accounts`."""
    engine = Engine()
    names = create_accounts(engine, timestamp, accounts)
    assert set(names) <= {"ok"}, names
    return engine


# Commerce tests drive an engine with a clock, and verify every engine they made (conftest's verify_every_engine).

ENGINES: list[Engine] = []


class Driver:
    """An engine whose clock moves one second per batch unless told otherwise."""

    def __init__(self, engine: Engine | None = None, now: int = 0) -> None:
        self.engine = engine or Engine()
        self.now = now
        ENGINES.append(self.engine)

    def run(self, *commands, at: int | None = None) -> BatchResult:
        """One batch at `at`, else one second after the last."""
        self.now = self.now + NANOSECONDS_PER_SECOND if at is None else at
        return apply_batch(self.engine, self.now, commands)

    def do(self, command, at: int | None = None) -> Outcome:
        return self.run(command, at=at).results[0]

    def ok(self, *commands, at: int | None = None) -> BatchResult:
        result = self.run(*commands, at=at)
        assert [outcome.code for outcome in result.results] == ["ok"] * len(commands), result.results
        return result

    def refused(self, command, code: str) -> Outcome:
        """`command` answers `code`, says nothing happened and leaves the state exactly as it was."""
        before = self.engine.state_hash()
        result = self.run(command)
        assert result.results[0].code == code, result.results[0]
        assert result.events == []
        assert self.engine.state_hash() == before
        return result.results[0]

    def query(self, query):
        return self.engine.query(query)

    def restored(self):
        return type(self)(Engine.restore(self.engine.snapshot()), self.now)
