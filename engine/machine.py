"""The engine: applies sequenced batches of commands, deterministically, and answers reads.

Each command type has one handler. Ledger commands answer a code per item;
commerce commands (merchants, orders, customers, wallets, idempotency keys)
answer an Outcome, and their money moves are ledger transfers.

A command applies whole or not at all. One that raises (a bug: input is checked
before anything changes) is undone, answered `internal_error`, listed in
`failures` for the caller to log, and the batch goes on; being deterministic,
the rule gives replay and replicas the same answers and the same state.
"""

import hashlib
import sys

import msgspec

from engine.batch import Batch, BatchResult
from engine.changes import Changes, untracked_containers
from engine.check import check
from engine.codes import AccountCode, TransferCode
from engine.commerce import Commerce
from engine.idempotency import IdempotencyRecord
from engine.ledger import Ledger
from engine.listing import Listing
from engine.queries import Answer, Query, answer
from engine.records import (
    COMMAND_RETIRED,
    RETIRED_COMMANDS,
    Adjustment,
    Archive,
    Archived,
    BlocklistEntry,
    Customer,
    Delivery,
    Deposit,
    EventRecord,
    Idempotent,
    Invoice,
    Merchant,
    Order,
    Outcome,
    Payment,
    Payout,
    Reconciliation,
    Refund,
    VaultedCard,
    Withdrawal,
    inner_command,
)
from engine.submits import SubmitRecord, SubmitWindow, spans_cover
from engine.types import Account, AccountFlag, Balance, CreateAccounts, CreateTransfers, Transfer
from engine.verify import verify_ledger

# Commerce state undone by a log of its own, not by tracked containers (engine/changes.py).
UNDONE_BY_OWN_LOG = (Ledger, Listing)


class Snapshot(msgspec.Struct, array_like=True, gc=False):
    """The whole engine state, in a canonical order, for restore and for the state hash."""

    sequence: int
    timestamp: int
    accounts: list[Account]
    transfers: list[Transfer]
    failed_ids: list[str]
    pending_states: list[tuple[str, int]]
    expiries: list[tuple[int, str]]
    histories: list[tuple[str, list[Balance]]]
    merchants: list[Merchant]
    orders: list[Order]
    order_expiries: list[tuple[int, str]]
    customers: list[Customer]
    idempotency: list[tuple[str, str, IdempotencyRecord]]
    order_times_by_ip: list[tuple[str, list[int]]]
    payments: list[Payment]
    refunds: list[Refund]
    payouts: list[Payout]
    cards: list[tuple[str, VaultedCard]]
    blocklist: list[BlocklistEntry] = []
    callback_signatures: list[tuple[str, int]] = []
    submits: list[SubmitRecord] = []
    deposits: list[Deposit] = []
    withdrawals: list[Withdrawal] = []
    adjustments: list[Adjustment] = []
    signatures: list[tuple[str, str, int]] = []
    events: list[EventRecord] = []
    deliveries: list[Delivery] = []
    invoices: list[Invoice] = []
    invoice_numbers: list[tuple[str, int]] = []
    # Failed transfer ids with when they failed, oldest first (`failed_ids`, without times, is older snapshots').
    failed_ids_at: list[tuple[str, int]] = []
    reconciliations: list[Reconciliation] = []
    # Pending transfers archived while still open, which statements no longer list (engine/ledger.py `held`).
    held_transfers: list[Transfer] = []
    # Archived orders and payments a refund brought back, and events a redelivery brought back, which only the cold
    # store lists (engine/archival.py).
    unlisted_orders: list[str] = []
    unlisted_payments: list[str] = []
    unlisted_events: list[str] = []


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
# Not the command's doing, and not the same on every machine: the process stops rather than diverge from its replica.
PROCESS_FAULTS = (MemoryError, RecursionError)
ADVANCE = "advance"  # the step of a batch that moves time on, before its commands (index -1)
ERROR_MAX_CHARS = 1000  # of a failure's description: enough to find the bug, bounded whatever the error holds


class CommandFailure(msgspec.Struct, frozen=True):
    """A command (or a batch's advance of time) that raised and was undone: for the shard's log, never journaled."""

    sequence: int
    index: int
    command: str
    error: str


class Engine:
    def __init__(self) -> None:
        self.changes = Changes()
        self.ledger = Ledger()
        self.commerce = Commerce(self.ledger, self.changes)
        self.submits = SubmitWindow()
        self.sequence = 0
        self.timestamp = 0
        # What the last batch undid, for the caller to log; what its Archive commands took out of memory, for the
        # shard's cold store.
        self.failures: list[CommandFailure] = []
        self.archived: list[Archived] = []
        _check_tracked(self.commerce)

    def apply(self, batch: Batch) -> BatchResult:
        """Apply one batch; sequence numbers follow one another and time never runs back."""
        check(batch.sequence == self.sequence + 1, f"batch {batch.sequence} after {self.sequence}")
        # Time zero means "not yet stamped" on a transfer, so a batch's time is never zero.
        check(0 < batch.timestamp and self.timestamp <= batch.timestamp,
              f"batch time {batch.timestamp} after {self.timestamp}")
        check(not batch.submits or spans_cover(batch.submits, len(batch.commands)), "submits must cover the commands")
        self.sequence = batch.sequence
        self.timestamp = timestamp = batch.timestamp
        self.failures = []
        self.archived = []
        self.commerce.notifications.sequence = batch.sequence
        events = self.commerce.events
        events.clear()
        self.commerce.leaving.clear()
        self._step(-1, ADVANCE, timestamp)
        if batch.submits:
            results, duplicates = self._apply_submits(batch, timestamp)
        else:
            results, duplicates = [self._step(index, command, timestamp)
                                   for index, command in enumerate(batch.commands)], []
        result = BatchResult(batch.sequence, results, list(events), duplicates)
        events.clear()
        if self.commerce.leaving:
            self.archived.append(_leaving(self.commerce.leaving, timestamp))
        return result

    def _apply_submits(self, batch: Batch, timestamp: int) -> tuple[list, list[int]]:
        """Each Submit's commands at most once: a Submit id still in the window answers its first results again."""
        commands = batch.commands
        window = self.submits
        window.forget_before(timestamp)
        results: list = []
        duplicates: list[int] = []
        for span in batch.submits:
            start = len(results)
            end = start + span.command_count
            first = window.first_results(span)
            if first is None:
                first = [self._submitted(index, commands[index], timestamp) for index in range(start, end)]
                window.remember(span.submit_id, first, timestamp)
            else:
                duplicates += range(start, end)
            results += first
        return results, duplicates

    def _submitted(self, index: int, command, timestamp: int):
        """A command that came in a Submit; a retired kind, which only journals older than Submit ids hold, is
        refused and changes nothing."""
        if type(inner_command(command)) in RETIRED_COMMANDS:
            return Outcome(COMMAND_RETIRED)
        return self._step(index, command, timestamp)

    def _step(self, index: int, command, timestamp: int):
        """Apply one command (or advance time) whole, or undo all it did and answer internal_error."""
        ledger = self.ledger
        ledger.begin_command()
        if type(command) is CreateTransfers:  # the hot path changes ledger state only: no commerce tracking
            try:
                return ledger.create_transfers(command.transfers, timestamp)
            except PROCESS_FAULTS:
                raise
            except Exception as error:
                return self._undo(index, command, error)
        changes = self.changes
        changes.begin()
        try:
            result = self._apply_command(command, timestamp)
        except PROCESS_FAULTS:
            raise
        except Exception as error:
            return self._undo(index, command, error)
        changes.commit()
        return result

    def _undo(self, index: int, command, error: Exception) -> list[int] | Outcome:
        self.ledger.undo_command()
        if self.changes.active:
            self.changes.undo()
        name = command if command is ADVANCE else type(command).__name__
        self.failures.append(CommandFailure(self.sequence, index, name, repr(error)[:ERROR_MAX_CHARS]))
        return _internal_error(command)

    def _apply_command(self, command, timestamp: int):
        kind = type(command)
        if kind is CreateAccounts:
            return self.ledger.create_accounts(command.accounts, timestamp)
        if command is ADVANCE:
            self.ledger.forget_failed_before(timestamp)
            events = self.ledger.expire(timestamp)
            events += self.commerce.advance(timestamp, [event.object_id for event in events])
            self.commerce.events[:0] = events  # ahead of those the advance logged itself, as batches list them
            self.commerce.notifications.record(0, timestamp)
            return None
        outcome = self.commerce.apply(command, timestamp)
        if kind is Archive and outcome.code == "ok":
            self.archived.append(outcome.record)
        return outcome

    def next_deadline(self) -> int | None:
        """The earliest time at which something expires (a pending transfer, an order), if any."""
        commerce = self.commerce
        heads = [self.ledger.expiries[0][0]] if self.ledger.expiries else []
        for schedule in (commerce.orders.expiries, commerce.payments.deadlines, commerce.deposits.expiries):
            head = schedule.next_time()
            if head is not None:
                heads.append(head)
        return min(heads) if heads else None

    def query(self, query: Query) -> Answer:
        return answer(query, self.ledger, self.commerce)

    # State

    def snapshot(self) -> bytes:
        return _snapshot_encoder.encode(self._snapshot())

    def _snapshot(self) -> Snapshot:
        ledger = self.ledger
        accounts = list(ledger.accounts.values())
        return Snapshot(
            sequence=self.sequence,
            timestamp=self.timestamp,
            accounts=[_bare(account) for account in accounts],
            transfers=list(ledger.transfers.values()),
            failed_ids=[],
            failed_ids_at=list(ledger.failed_ids.items()),
            pending_states=list(ledger.pending_states.items()),
            expiries=ledger.live_expiries(),
            histories=[(account.id, account.history) for account in accounts if account.history],
            held_transfers=list(ledger.held.values()),
            submits=self.submits.snapshot(),
            **self.commerce.snapshot(),
        )

    @classmethod
    def restore(cls, data: bytes) -> "Engine":
        snapshot = _snapshot_decoder.decode(data)
        engine = cls()
        engine.sequence = snapshot.sequence
        engine.timestamp = snapshot.timestamp
        ledger = engine.ledger
        ledger.accounts = {account.id: account for account in snapshot.accounts}
        for account in snapshot.accounts:
            account.currency = sys.intern(account.currency)  # as create_accounts leaves it
        # An older snapshot's failed ids count as spent when it was taken.
        ledger.failed_ids = {transfer_id: snapshot.timestamp for transfer_id in snapshot.failed_ids}
        ledger.failed_ids.update(snapshot.failed_ids_at)
        ledger.pending_states = dict(snapshot.pending_states)
        ledger.expiries = sorted(snapshot.expiries)
        _restore_histories(ledger, snapshot.histories)
        _restore_transfers(ledger, snapshot.transfers)
        ledger.held = {t.id: _interned(ledger, t) for t in snapshot.held_transfers}
        engine.commerce.restore(snapshot)
        engine.submits.restore(snapshot.submits)
        _check_tracked(engine.commerce)
        return engine

    def state_hash(self) -> str:
        """A digest of the state, the same for any two engines fed the same commands.

        Leaves out the batch counter and clock, so re-sending old commands to a
        later batch is seen to change nothing.
        """
        snapshot = self._snapshot()
        snapshot.sequence = 0
        snapshot.timestamp = 0
        return hashlib.blake2b(_snapshot_encoder.encode(snapshot), digest_size=32).hexdigest()

    def verify(self) -> None:
        """The full check: double entry per currency, limits, and pending amounts match pending balances."""
        verify_ledger(self.ledger)


def _leaving(records: list, timestamp: int) -> Archived:
    """The records that left memory in a batch outside its Archive commands, for the cold store as any archived."""
    return Archived(before=timestamp, events=[record for record in records if type(record) is EventRecord],
                    deliveries=[record for record in records if type(record) is Delivery])


def _internal_error(command) -> list[int] | Outcome:
    """The answer to a command that was undone, in its command type's shape."""
    kind = type(command)
    if kind is CreateTransfers:
        return [TransferCode.internal_error] * len(command.transfers)
    if kind is CreateAccounts:
        return [AccountCode.internal_error] * len(command.accounts)
    if kind is Idempotent and type(command.command) in (CreateTransfers, CreateAccounts):
        return Outcome("internal_error", codes=_internal_error(command.command))
    return Outcome("internal_error")


def _check_tracked(commerce: Commerce) -> None:
    """Commerce state held anywhere but in tracked containers would survive an undo: refuse to run with it."""
    untracked = untracked_containers(commerce, skip=UNDONE_BY_OWN_LOG)
    check(not untracked, f"untracked commerce state: {', '.join(untracked)}")


def _bare(account: Account) -> Account:
    """The account without its engine-owned indexes, which restore rebuilds."""
    return msgspec.structs.replace(account, transfers=None, history=None)


def _restore_histories(ledger: Ledger, histories: list[tuple[str, list[Balance]]]) -> None:
    for account in ledger.accounts.values():
        if account.flags & AccountFlag.HISTORY:
            account.history = []
    for account_id, history in histories:
        ledger.accounts[account_id].history = history


def _restore_transfers(ledger: Ledger, transfers: list[Transfer]) -> None:
    accounts = ledger.accounts
    stored = ledger.transfers
    for account in accounts.values():
        account.transfers = []
    for t in transfers:
        stored[t.id] = _interned(ledger, t)
        accounts[t.debit_account_id].transfers.append(t)
        accounts[t.credit_account_id].transfers.append(t)


def _interned(ledger: Ledger, t: Transfer) -> Transfer:
    """`t` sharing its accounts' id and currency strings, as the ledger stores transfers."""
    debit = ledger.accounts[t.debit_account_id]
    t.debit_account_id = debit.id
    t.credit_account_id = ledger.accounts[t.credit_account_id].id
    t.currency = debit.currency
    return t
