"""The ledger: accounts and double-entry transfers held in memory.

Single writer, no I/O, no clock: each call carries the batch's timestamp. Checks
run in the order of the tables in `engine.codes`. A failed linked chain is
rolled back, so a chain moves money as one or not at all; so is a whole command
that raises (`undo_command`). Both undo from the ledger's own insertion order:
the transfers and accounts stored since a mark are the last ones in their dicts,
and each transfer says how to reverse it, so the hot loop records nothing more.
"""

import heapq
import sys
from bisect import bisect_left, bisect_right
from itertools import islice

import msgspec

from engine.check import check
from engine.codes import TRANSIENT_TRANSFER_NUMBERS, AccountCode, TransferCode
from engine.types import (
    AMOUNT_MAX,
    CODE_MAX,
    ID_MAX_LENGTH,
    NANOSECONDS_PER_SECOND,
    TIMESTAMP_MAX,
    Account,
    AccountFlag,
    Balance,
    Event,
    PendingState,
    Transfer,
    TransferFlag,
)

T = TransferCode
A = AccountCode
F = TransferFlag

LINKED = F.LINKED
# Any bit but LINKED (negative flags included) leaves the plain path.
NOT_PLAIN = ~F.LINKED
PENDING = F.PENDING
DEBITS_LIMIT = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS
CREDITS_LIMIT = AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS
CLOSED = AccountFlag.CLOSED
HISTORY = AccountFlag.HISTORY
WATCHED = DEBITS_LIMIT | CREDITS_LIMIT | CLOSED | HISTORY
# A failed id is spent as long as a client's retries of it may come (an idempotency key's day), and at most this
# many are kept: past either, the oldest may be used again.
FAILED_ID_RETENTION_NS = 24 * 3600 * NANOSECONDS_PER_SECOND
MAX_FAILED_IDS = 1_000_000
MIN_SWEEP_EXPIRIES = 1024  # below this many heap entries a sweep of the stale ones is not worth its walk


class Ledger:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.transfers: dict[str, Transfer] = {}
        # Ids whose first attempt failed on the ledger's state -> when, oldest first: spent for a retention.
        self.failed_ids: dict[str, int] = {}
        # State of every pending transfer, by its id.
        self.pending_states: dict[str, int] = {}
        # Min-heap of (expires_at, pending transfer id): an entry whose transfer was undone, posted or voided stays
        # behind, stale, until it comes up or a sweep drops it.
        self.expiries: list[tuple[int, str]] = []
        self.expiries_sweep_at = MIN_SWEEP_EXPIRIES
        # The command being applied: sizes of the dicts when it began, ids it spent and forgot, expiries it ran.
        self.transfers_mark = 0
        self.accounts_mark = 0
        self.failed_in_command: list[str] = []
        self.forgotten_in_command: list[tuple[str, int]] = []
        self.expired_in_command: list[tuple[int, str, bool]] = []
        self.archived_in_command: list[ArchivedTransfers] = []
        # Pending transfers archived while still open (engine/archival.py), by id, until archival after they end.
        self.held: dict[str, Transfer] = {}

    # All or nothing per command

    def begin_command(self) -> None:
        self.transfers_mark = len(self.transfers)
        self.accounts_mark = len(self.accounts)
        self.failed_in_command.clear()
        self.forgotten_in_command.clear()
        self.expired_in_command.clear()
        self.archived_in_command.clear()
        if len(self.expiries) >= self.expiries_sweep_at:  # between commands: nothing an undo could make live again
            self._sweep_expiries()

    def undo_command(self) -> None:
        """Undo everything since `begin_command`, newest first."""
        for archived in reversed(self.archived_in_command):  # out of the front: back in front, first
            self._unarchive(archived)
        self._unstore_since(self.transfers_mark)
        self._remove_accounts_since(self.accounts_mark)
        for transfer_id in self.failed_in_command:
            self.failed_ids.pop(transfer_id, None)
        if self.forgotten_in_command:  # back in front, where they were (undo is rare: a rebuild will do)
            self.failed_ids = dict(self.forgotten_in_command + list(self.failed_ids.items()))
        self._unexpire()
        self.begin_command()

    # Archival (engine/archival.py)

    def archive_transfers(self, before: int, limit: int) -> "ArchivedTransfers":
        """Up to `limit` of the oldest transfers, made before `before`, out of memory (and off their accounts'
        statements, with the balances history they ended). Their ids may be taken again after this (a client's
        retry of one applies anew). A pending transfer still open goes too, but stays `held`, where its post, void or
        expiry still finds it; a held one resolved since is forgotten (its resolution is a transfer of its own)."""
        gone = []
        counts: dict[str, int] = {}
        for t in self.transfers.values():
            if len(gone) == limit or t.timestamp >= before:
                break
            gone.append(t)
            for account_id in (t.debit_account_id, t.credit_account_id):
                counts[account_id] = counts.get(account_id, 0) + 1
        states = self.pending_states
        held = {transfer_id: t for transfer_id, t in self.held.items() if states[transfer_id] == PendingState.PENDING}
        released = [(transfer_id, states.pop(transfer_id)) for transfer_id in self.held if transfer_id not in held]
        archived = ArchivedTransfers(gone, released, [], self.held)
        for t in gone:
            del self.transfers[t.id]
            if t.flags & PENDING and states[t.id] == PendingState.PENDING:
                held[t.id] = t
            elif t.flags & PENDING:
                archived.pending_states.append((t.id, states.pop(t.id)))
        self.held = held
        for account_id, count in counts.items():
            account = self.accounts[account_id]
            check(account.transfers[count - 1].timestamp < before, f"account {account_id}: statement out of order")
            statement = account.transfers[:count]
            del account.transfers[:count]
            # The balance as of the cut-off stays: the one before it, not the ones it replaced.
            cut = bisect_left(account.history, before, key=_timestamp_of) - 1 if account.history else 0
            history = account.history[:cut] if cut > 0 else []
            if history:
                del account.history[:cut]
            archived.accounts.append((account, statement, history))
        self.archived_in_command.append(archived)
        return archived

    def _unarchive(self, archived: "ArchivedTransfers") -> None:
        self.transfers = {**{t.id: t for t in archived.transfers}, **self.transfers}
        self.pending_states.update(archived.pending_states)
        self.held = archived.held_before
        for account, statement, history in archived.accounts:
            account.transfers[:0] = statement
            if history:
                account.history[:0] = history

    def pending_transfer(self, transfer_id: str) -> Transfer | None:
        """A pending transfer by id (or any other transfer of that id), held ones first."""
        held = self.held.get(transfer_id) if self.held else None
        return held if held is not None else self.transfers.get(transfer_id)

    # Accounts

    def create_accounts(self, accounts: list[Account], timestamp: int) -> list[int]:
        chains = _Chains(len(accounts), AccountFlag.LINKED, A, self._create_account, self.accounts,
                         self._remove_accounts_since, timestamp)
        for index, account in enumerate(accounts):
            chains.add(index, account)
        return chains.results

    def _create_account(self, account: Account, timestamp: int) -> int:
        code = _validate_account(account)
        if code:
            return code
        existing = self.accounts.get(account.id)
        if existing is not None:
            return _account_exists_code(account, existing)
        account.currency = sys.intern(account.currency)  # one string per currency: compared by identity, stored once
        account.timestamp = timestamp
        account.transfers = []
        account.history = [] if account.flags & HISTORY else None
        self.accounts[account.id] = account
        return 0

    def _remove_accounts_since(self, mark: int) -> None:
        """Remove the accounts created since the dict held `mark` of them (their transfers are gone already)."""
        for account_id in list(islice(reversed(self.accounts), len(self.accounts) - mark)):
            del self.accounts[account_id]

    # Transfers

    def create_transfers(self, transfers: list[Transfer], timestamp: int) -> list[int]:
        """Apply transfers in order, one code each.

        The loop inlines the common case, a plain transfer between two
        unrestricted accounts that passes every check; anything else (flags,
        chains, limits, history, any failure) takes `_create_transfer`, which
        runs the checks in the table's order.
        """
        chains = _Chains(len(transfers), LINKED, T, self._create_transfer, self.transfers, self._unstore_since,
                         timestamp)
        accounts = self.accounts
        stored = self.transfers
        failed_ids = self.failed_ids
        in_chain = False
        for index, t in enumerate(transfers):
            if t.flags or in_chain:
                chains.add(index, t)
                in_chain = chains.chain_start >= 0
                continue
            amount = t.amount
            tid = t.id
            try:
                debit = accounts[t.debit_account_id]
                credit = accounts[t.credit_account_id]
            except KeyError:
                chains.add(index, t)
                continue
            if (
                debit is credit
                or (debit.flags | credit.flags) & WATCHED
                or not 0 < amount <= AMOUNT_MAX
                or t.currency != debit.currency
                or credit.currency != debit.currency
                or t.pending_id
                or t.timeout_s
                or t.timestamp
                or not 0 <= t.code <= CODE_MAX
                or not tid
                or len(tid) > ID_MAX_LENGTH
                or debit.debits_pending + debit.debits_posted + amount > AMOUNT_MAX
                or credit.credits_pending + credit.credits_posted + amount > AMOUNT_MAX
                or tid in stored
                or tid in failed_ids
            ):
                chains.add(index, t)
                continue
            stored[tid] = t
            debit.debits_posted += amount
            credit.credits_posted += amount
            t.debit_account_id = debit.id
            t.credit_account_id = credit.id
            t.currency = debit.currency
            t.timestamp = timestamp
            debit.transfers.append(t)
            credit.transfers.append(t)
        return chains.results

    def _create_transfer(self, t: Transfer, timestamp: int) -> int:
        code = self._refusal_by_itself(t)
        if code:
            return code
        if t.flags & F.RESOLVE:
            code = self._resolve_pending(t, timestamp)
        else:
            code = self._move(t, timestamp)
        if code and code in TRANSIENT_TRANSFER_NUMBERS:
            self._spend(t.id, timestamp)
        return code

    def _refusal_by_itself(self, t: Transfer) -> int:
        """The code of a transfer refused before any account is looked at (0: none): invalid, or its id taken or
        spent already."""
        code = _validate_transfer(t)
        if code:
            return code
        existing = self.transfers.get(t.id)
        if existing is None and t.flags & PENDING and self.held:
            existing = self.held.get(t.id)  # its pending state is a held one's while that is open
        if existing is not None:
            return _transfer_exists_code(t, existing)
        return T.id_already_failed if t.id in self.failed_ids else 0

    def _spend(self, transfer_id: str, timestamp: int) -> None:
        failed_ids = self.failed_ids
        failed_ids[transfer_id] = timestamp
        self.failed_in_command.append(transfer_id)
        if len(failed_ids) > MAX_FAILED_IDS:
            self._forget_oldest_failed()

    def forget_failed_before(self, timestamp: int) -> None:
        """Forget the failed ids spent longer than the retention ago."""
        failed_ids = self.failed_ids
        while failed_ids and failed_ids[next(iter(failed_ids))] + FAILED_ID_RETENTION_NS <= timestamp:
            self._forget_oldest_failed()

    def _forget_oldest_failed(self) -> None:
        oldest = next(iter(self.failed_ids))
        self.forgotten_in_command.append((oldest, self.failed_ids.pop(oldest)))

    def _move(self, t: Transfer, timestamp: int) -> int:
        """A single-phase or pending transfer between two accounts."""
        accounts = self.accounts
        debit = accounts.get(t.debit_account_id)
        if debit is None:
            return T.debit_account_not_found
        credit = accounts.get(t.credit_account_id)
        if credit is None:
            return T.credit_account_not_found
        currency = debit.currency
        if credit.currency != currency:
            return T.accounts_must_have_the_same_currency
        if t.currency != currency:
            return T.transfer_must_have_the_same_currency_as_accounts
        flags = t.flags
        if (debit.flags | credit.flags) & CLOSED:
            return T.debit_account_already_closed if debit.flags & CLOSED else T.credit_account_already_closed
        amount = t.amount
        if flags & F.BALANCING:
            amount = _balanced_amount(flags, amount, debit, credit)
        if flags & PENDING:
            code = _pending_overflow_code(debit, credit, amount, t.timeout_s, timestamp)
        else:
            code = _posted_overflow_code(debit, credit, amount)
        if code:
            return code
        if (debit.flags | credit.flags) & (DEBITS_LIMIT | CREDITS_LIMIT):
            code = _limit_code(debit, credit, amount)
            if code:
                return code
        if flags & PENDING:
            debit.debits_pending += amount
            credit.credits_pending += amount
            self._open_pending(t, debit, credit, timestamp)
        else:
            debit.debits_posted += amount
            credit.credits_posted += amount
        t.amount = amount
        t.currency = currency
        self._store(t, debit, credit, timestamp)
        return 0

    def _resolve_pending(self, t: Transfer, timestamp: int) -> int:
        """Post (in full or in part) or void a pending transfer."""
        pending = self.pending_transfer(t.pending_id)
        if pending is None:
            return T.pending_transfer_not_found
        code = _pending_mismatch_code(t, pending)
        if code:
            return code
        state = self.pending_states[pending.id]
        if state != PendingState.PENDING:
            return _RESOLVED_CODES[state]
        debit = self.accounts[pending.debit_account_id]
        credit = self.accounts[pending.credit_account_id]
        posting = t.flags & F.POST_PENDING
        amount = (t.amount or pending.amount) if posting else pending.amount
        if posting:
            # Only the account this very transfer closed may still take its post.
            if debit.flags & CLOSED and not pending.flags & F.CLOSING_DEBIT:
                return T.debit_account_already_closed
            if credit.flags & CLOSED and not pending.flags & F.CLOSING_CREDIT:
                return T.credit_account_already_closed
            code = _posted_overflow_code(debit, credit, amount, pending.amount)
            if code:
                return code
        debit.debits_pending -= pending.amount
        credit.credits_pending -= pending.amount
        if posting:
            debit.debits_posted += amount
            credit.credits_posted += amount
            self.pending_states[pending.id] = PendingState.POSTED
        else:
            self.pending_states[pending.id] = PendingState.VOIDED
            _reopen(pending, debit, credit)
        t.debit_account_id = pending.debit_account_id
        t.credit_account_id = pending.credit_account_id
        t.currency = pending.currency
        t.amount = amount
        self._store(t, debit, credit, timestamp)
        return 0

    def _open_pending(self, t: Transfer, debit: Account, credit: Account, timestamp: int) -> None:
        self.pending_states[t.id] = PendingState.PENDING
        if t.timeout_s:
            heapq.heappush(self.expiries, (timestamp + t.timeout_s * NANOSECONDS_PER_SECOND, t.id))
        if t.flags & F.CLOSING_DEBIT:
            debit.flags |= CLOSED
        if t.flags & F.CLOSING_CREDIT:
            credit.flags |= CLOSED

    def _store(self, t: Transfer, debit: Account, credit: Account, timestamp: int) -> None:
        # Share the accounts' id strings: a stored transfer costs no copy of them.
        t.debit_account_id = debit.id
        t.credit_account_id = credit.id
        t.timestamp = timestamp
        self.transfers[t.id] = t
        for account in (debit, credit):
            account.transfers.append(t)
            if account.flags & HISTORY:
                account.history.append(_balance_of(account, timestamp))
        if (debit.flags | credit.flags) & (DEBITS_LIMIT | CREDITS_LIMIT):
            _check_limits(debit)
            _check_limits(credit)

    def _unstore_since(self, mark: int) -> None:
        """Reverse the transfers stored since the dict held `mark` of them, newest first (a pending one's expiry
        entry stays behind, stale)."""
        for t in list(islice(reversed(self.transfers.values()), len(self.transfers) - mark)):
            self._unstore(t)

    def _unstore(self, t: Transfer) -> None:
        """Undo one stored transfer, the last on both its accounts; its expiry entry is the caller's."""
        debit = self.accounts[t.debit_account_id]
        credit = self.accounts[t.credit_account_id]
        amount = t.amount
        if t.flags & PENDING:
            debit.debits_pending -= amount
            credit.credits_pending -= amount
            del self.pending_states[t.id]
            _reopen(t, debit, credit)  # a closing transfer found its account open
        elif t.flags & F.RESOLVE:
            pending = self.pending_transfer(t.pending_id)
            debit.debits_pending += pending.amount
            credit.credits_pending += pending.amount
            if t.flags & F.POST_PENDING:
                debit.debits_posted -= amount
                credit.credits_posted -= amount
            else:
                _reclose(pending, debit, credit)
            self.pending_states[pending.id] = PendingState.PENDING
        else:
            debit.debits_posted -= amount
            credit.credits_posted -= amount
        for account in (credit, debit):
            check(account.transfers[-1] is t, "undo: a transfer is not the last on its account")
            account.transfers.pop()
            if account.flags & HISTORY:
                account.history.pop()
        del self.transfers[t.id]

    # Helpers for the state machines built on the ledger

    def move(self, transfer: Transfer, timestamp: int) -> int:
        """One transfer on its own; its result code."""
        return self.create_transfers([transfer], timestamp)[0]

    def ensure_account(self, account_id: str, currency: str, flags: int, timestamp: int) -> str:
        if account_id not in self.accounts:
            codes = self.create_accounts([Account(account_id, currency, flags=flags)], timestamp)
            check(codes == [0], f"account {account_id} not created: {codes}")
        return account_id

    def available(self, account_id: str) -> int:
        """What a debit-limited account can still give: credits less debits, posted or held."""
        account = self.accounts.get(account_id)
        if account is None:
            return 0
        return account.credits_posted - account.debits_posted - account.debits_pending

    def move_refusal(self, transfer: Transfer) -> int:
        """The code `move` would answer the plain posted `transfer` now (0: none), changing nothing. An account not
        made yet counts as empty, with no limit (as a new holder credited or a new inflow mirror debited is): asked
        before making them, so that a refused move leaves none behind."""
        return self.moves_refusal([transfer])

    def moves_refusal(self, transfers: list[Transfer]) -> int:
        """The code `move` would answer the first of the plain posted `transfers` it refuses, each moved after the
        ones before it (0: none), changing nothing; accounts not made yet count as in `move_refusal`."""
        after: dict[str, Account] = {}  # copies of the accounts, as the transfers checked so far leave them
        for transfer in transfers:
            code = self._refusal_by_itself(transfer)
            if code:
                return code
            debit, credit = (after.get(account_id) or msgspec.structs.replace(
                self.accounts.get(account_id) or Account("", transfer.currency))
                for account_id in (transfer.debit_account_id, transfer.credit_account_id))
            code = _posted_overflow_code(debit, credit, transfer.amount) or _limit_code(debit, credit, transfer.amount)
            if code:
                return code
            debit.debits_posted += transfer.amount
            credit.credits_posted += transfer.amount
            after[transfer.debit_account_id], after[transfer.credit_account_id] = debit, credit
        return 0

    # Time

    def expire(self, timestamp: int) -> list[Event]:
        """Release every pending transfer whose timeout has passed by `timestamp`."""
        events = []
        expiries = self.expiries
        while expiries and expiries[0][0] <= timestamp:
            expires_at, transfer_id = heapq.heappop(expiries)
            released = self._live_expiry(expires_at, transfer_id)
            self.expired_in_command.append((expires_at, transfer_id, released))
            if not released:
                continue
            pending = self.pending_transfer(transfer_id)
            debit = self.accounts[pending.debit_account_id]
            credit = self.accounts[pending.credit_account_id]
            debit.debits_pending -= pending.amount
            credit.credits_pending -= pending.amount
            self.pending_states[transfer_id] = PendingState.EXPIRED
            _reopen(pending, debit, credit)
            for account in (debit, credit):
                if account.flags & HISTORY:
                    account.history.append(_balance_of(account, timestamp))
            events.append(Event("transfer.expired", transfer_id, timestamp))
        return events

    def _live_expiry(self, expires_at: int, transfer_id: str) -> bool:
        """Whether the heap entry still stands for a pending transfer (not one undone, posted, voided or made anew)."""
        if self.pending_states.get(transfer_id) != PendingState.PENDING:
            return False
        pending = self.pending_transfer(transfer_id)
        return pending.timestamp + pending.timeout_s * NANOSECONDS_PER_SECOND == expires_at

    def live_expiries(self) -> list[tuple[int, str]]:
        """The heap's live entries, sorted: what a snapshot keeps."""
        return sorted(entry for entry in self.expiries if self._live_expiry(*entry))

    def _sweep_expiries(self) -> None:
        self.expiries = self.live_expiries()  # sorted: a heap already
        self.expiries_sweep_at = max(MIN_SWEEP_EXPIRIES, 2 * len(self.expiries))

    def _unexpire(self) -> None:
        """Hold again what `expire` released in this step, and put back every entry it took from the heap."""
        for expires_at, transfer_id, released in reversed(self.expired_in_command):
            if released:
                pending = self.pending_transfer(transfer_id)
                debit = self.accounts[pending.debit_account_id]
                credit = self.accounts[pending.credit_account_id]
                for account in (credit, debit):
                    if account.flags & HISTORY:
                        account.history.pop()
                debit.debits_pending += pending.amount
                credit.credits_pending += pending.amount
                self.pending_states[transfer_id] = PendingState.PENDING
                _reclose(pending, debit, credit)
            heapq.heappush(self.expiries, (expires_at, transfer_id))

    # Queries (read-only)

    def account_transfers(
        self,
        account_id: str,
        timestamp_min: int = 0,
        timestamp_max: int = TIMESTAMP_MAX,
        limit: int = 20,
        after_id: str = "",
        newest_first: bool = False,
    ) -> list[Transfer]:
        """An account's transfers in time order within [min, max], `limit` of them after `after_id`."""
        check(limit > 0, "a page of transfers needs a limit above zero")
        account = self.accounts.get(account_id)
        if account is None or not account.transfers:
            return []
        log = account.transfers
        start = bisect_left(log, timestamp_min, key=_timestamp_of)
        end = bisect_right(log, timestamp_max, key=_timestamp_of)
        if newest_first:
            indexes = range(end - 1, start - 1, -1)
        else:
            indexes = range(start, end)
        if after_id:
            indexes = _after(log, indexes, self.transfers.get(after_id))
        return [log[index] for index in indexes[:limit]]

    def balance_at(self, account_id: str, timestamp: int) -> Balance | None:
        """The balances of a HISTORY account as they stood at `timestamp`."""
        account = self.accounts.get(account_id)
        if account is None or account.history is None:
            return None
        index = bisect_right(account.history, timestamp, key=_timestamp_of)
        if index == 0:
            return Balance(timestamp, 0, 0, 0, 0)
        return account.history[index - 1]


class ArchivedTransfers(msgspec.Struct):
    """What one archive_transfers took out: the transfers, the states of the pending ones among them that ended,
    and each account's statement and history prefix; with the held transfers as they were (kept to undo the command
    that took them)."""

    transfers: list[Transfer]
    pending_states: list[tuple[str, int]]
    accounts: list[tuple[Account, list[Transfer], list[Balance]]]
    held_before: dict[str, Transfer]


_RESOLVED_CODES = {
    PendingState.POSTED: T.pending_transfer_already_posted,
    PendingState.VOIDED: T.pending_transfer_already_voided,
    PendingState.EXPIRED: T.pending_transfer_expired,
}


class _Chains:
    """Applies items in order; a run of linked items succeeds or fails as one."""

    def __init__(self, count: int, linked_flag: int, codes, create, stored: dict, roll_back_to, timestamp: int) -> None:
        self.linked_flag = linked_flag
        self.codes = codes
        self.create = create
        # Items a chain stored are the last in `stored`: `roll_back_to(size)` removes those past `size`.
        self.stored = stored
        self.roll_back_to = roll_back_to
        self.timestamp = timestamp
        self.results = [0] * count
        self.chain_start = -1
        self.chain_mark = 0
        self.chain_failed = False

    def add(self, index: int, item) -> None:
        results = self.results
        linked = item.flags & self.linked_flag
        if linked and index == len(results) - 1:
            self._fail_open_chain(index)
            return
        if self.chain_start < 0:
            if not linked:
                results[index] = self.create(item, self.timestamp)
                return
            self.chain_start = index
            self.chain_mark = len(self.stored)
            self.chain_failed = False
        if self.chain_failed:
            results[index] = self.codes.linked_event_failed
        else:
            code = self.create(item, self.timestamp)
            results[index] = code
            if code:
                self.chain_failed = True
                self.roll_back_to(self.chain_mark)
        if not linked:
            _close_chain(results, self.chain_start, index + 1, self.chain_failed, self.codes)
            self.chain_start = -1

    def _fail_open_chain(self, index: int) -> None:
        """The batch ends inside a chain: its last item is not run, and the whole chain fails."""
        start = index if self.chain_start < 0 else self.chain_start
        if self.chain_start >= 0 and not self.chain_failed:
            self.roll_back_to(self.chain_mark)
        _close_chain(self.results, start, index, True, self.codes)
        self.results[index] = self.codes.linked_event_chain_open
        self.chain_start = -1


def _close_chain(results: list[int], start: int, end: int, failed: bool, codes) -> None:
    if not failed:
        return
    for index in range(start, end):
        if results[index] == 0:
            results[index] = codes.linked_event_failed


def _validate_account(a: Account) -> int:
    if not a.id:
        return A.id_must_not_be_empty
    if len(a.id) > ID_MAX_LENGTH:
        return A.id_too_long
    if a.flags & ~AccountFlag.ALL or a.flags < 0:
        return A.reserved_flag
    if a.flags & AccountFlag.LIMITS == AccountFlag.LIMITS:
        return A.flags_are_mutually_exclusive
    if not a.currency:
        return A.currency_must_not_be_empty
    if not 0 <= a.code <= CODE_MAX:
        return A.code_out_of_range
    if a.debits_pending or a.debits_posted or a.credits_pending or a.credits_posted:
        return A.balances_must_be_zero
    if a.timestamp:
        return A.timestamp_must_be_zero
    return 0


def _account_exists_code(a: Account, e: Account) -> int:
    # CLOSED is state a transfer may have set since: compare the creation flags.
    if (a.flags ^ e.flags) & ~(AccountFlag.CLOSED | AccountFlag.LINKED):
        return A.exists_with_different_flags
    if a.currency != e.currency:
        return A.exists_with_different_currency
    if a.code != e.code:
        return A.exists_with_different_code
    return A.exists


def _validate_transfer(t: Transfer) -> int:
    tid = t.id
    if not tid:
        return T.id_must_not_be_empty
    if len(tid) > ID_MAX_LENGTH:
        return T.id_too_long
    flags = t.flags
    if flags & NOT_PLAIN:
        return _validate_special_transfer(t)
    if not t.debit_account_id:
        return T.debit_account_id_must_not_be_empty
    if not t.credit_account_id:
        return T.credit_account_id_must_not_be_empty
    if t.debit_account_id == t.credit_account_id:
        return T.accounts_must_be_different
    if t.pending_id:
        return T.pending_id_must_be_empty
    if t.timeout_s:
        return T.timeout_reserved_for_pending_transfer
    amount = t.amount
    if amount <= 0:
        return T.amount_must_not_be_negative if amount < 0 else T.amount_must_not_be_zero
    if amount > AMOUNT_MAX:
        return T.amount_exceeds_maximum
    if not t.currency:
        return T.currency_must_not_be_empty
    if not 0 <= t.code <= CODE_MAX:
        return T.code_out_of_range
    if t.timestamp:
        return T.timestamp_must_be_zero
    return 0


def _validate_special_transfer(t: Transfer) -> int:
    """The same checks as the plain path, in the same order, for flagged transfers."""
    flags = t.flags
    if flags & ~F.ALL or flags < 0:
        return T.reserved_flag
    if _flags_conflict(flags):
        return T.flags_are_mutually_exclusive
    resolving = flags & F.RESOLVE
    if not resolving:
        if not t.debit_account_id:
            return T.debit_account_id_must_not_be_empty
        if not t.credit_account_id:
            return T.credit_account_id_must_not_be_empty
    if t.debit_account_id and t.debit_account_id == t.credit_account_id:
        return T.accounts_must_be_different
    if not resolving and t.pending_id:
        return T.pending_id_must_be_empty
    if resolving and not t.pending_id:
        return T.pending_id_must_not_be_empty
    if t.pending_id == t.id:
        return T.pending_id_must_be_different
    if t.timeout_s and not flags & PENDING:
        return T.timeout_reserved_for_pending_transfer
    if t.timeout_s < 0:
        return T.timeout_must_not_be_negative
    if flags & F.CLOSING and not flags & PENDING:
        return T.closing_transfer_must_be_pending
    if t.amount < 0:
        return T.amount_must_not_be_negative
    # Zero means "all of it" when posting, voiding or balancing.
    if t.amount == 0 and not flags & (F.RESOLVE | F.BALANCING):
        return T.amount_must_not_be_zero
    if t.amount > AMOUNT_MAX:
        return T.amount_exceeds_maximum
    if not resolving and not t.currency:
        return T.currency_must_not_be_empty
    if not 0 <= t.code <= CODE_MAX:
        return T.code_out_of_range
    if t.timestamp:
        return T.timestamp_must_be_zero
    return 0


def _flags_conflict(flags: int) -> bool:
    phases = flags & (PENDING | F.RESOLVE)
    if phases & (phases - 1):
        return True
    return bool(flags & F.RESOLVE and flags & (F.BALANCING | F.CLOSING))


def _transfer_exists_code(t: Transfer, e: Transfer) -> int:
    if t.flags != e.flags:
        return T.exists_with_different_flags
    if t.pending_id != e.pending_id:
        return T.exists_with_different_pending_id
    if t.timeout_s != e.timeout_s:
        return T.exists_with_different_timeout
    # A post or void may leave accounts, currency and amount to the pending transfer.
    inherits = t.flags & F.RESOLVE
    if t.debit_account_id != e.debit_account_id and not (inherits and not t.debit_account_id):
        return T.exists_with_different_debit_account_id
    if t.credit_account_id != e.credit_account_id and not (inherits and not t.credit_account_id):
        return T.exists_with_different_credit_account_id
    if not _same_amount(t, e):
        return T.exists_with_different_amount
    if t.currency != e.currency and not (inherits and not t.currency):
        return T.exists_with_different_currency
    if t.code != e.code:
        return T.exists_with_different_code
    return T.exists


def _same_amount(t: Transfer, e: Transfer) -> bool:
    if t.amount == e.amount:
        return True
    if t.flags & F.BALANCING:
        # The stored amount is what the limit allowed, at most the one asked for.
        return t.amount == 0 or t.amount >= e.amount
    return t.amount == 0 and bool(t.flags & F.RESOLVE)


def _pending_mismatch_code(t: Transfer, pending: Transfer) -> int:
    if not pending.flags & PENDING:
        return T.pending_transfer_not_pending
    if t.debit_account_id and t.debit_account_id != pending.debit_account_id:
        return T.pending_transfer_has_different_debit_account_id
    if t.credit_account_id and t.credit_account_id != pending.credit_account_id:
        return T.pending_transfer_has_different_credit_account_id
    if t.currency and t.currency != pending.currency:
        return T.pending_transfer_has_different_currency
    if t.flags & F.POST_PENDING and t.amount > pending.amount:
        return T.exceeds_pending_transfer_amount
    if t.flags & F.VOID_PENDING and t.amount not in (0, pending.amount):
        return T.pending_transfer_has_different_amount
    return 0


def _balanced_amount(flags: int, amount: int, debit: Account, credit: Account) -> int:
    amount = amount or AMOUNT_MAX
    if flags & F.BALANCING_DEBIT:
        room = debit.credits_posted - debit.debits_pending - debit.debits_posted
        amount = min(amount, max(room, 0))
    if flags & F.BALANCING_CREDIT:
        room = credit.debits_posted - credit.credits_pending - credit.credits_posted
        amount = min(amount, max(room, 0))
    return amount


def _pending_overflow_code(debit: Account, credit: Account, amount: int, timeout_s: int, timestamp: int) -> int:
    if debit.debits_pending + amount > AMOUNT_MAX:
        return T.overflows_debits_pending
    if credit.credits_pending + amount > AMOUNT_MAX:
        return T.overflows_credits_pending
    if debit.debits_pending + debit.debits_posted + amount > AMOUNT_MAX:
        return T.overflows_debits
    if credit.credits_pending + credit.credits_posted + amount > AMOUNT_MAX:
        return T.overflows_credits
    if timestamp + timeout_s * NANOSECONDS_PER_SECOND > TIMESTAMP_MAX:
        return T.overflows_timeout
    return 0


def _posted_overflow_code(debit: Account, credit: Account, amount: int, released: int = 0) -> int:
    """`released`: the pending amount that a post gives up as it posts `amount` of it."""
    if debit.debits_posted + amount > AMOUNT_MAX:
        return T.overflows_debits_posted
    if credit.credits_posted + amount > AMOUNT_MAX:
        return T.overflows_credits_posted
    if debit.debits_pending - released + debit.debits_posted + amount > AMOUNT_MAX:
        return T.overflows_debits
    if credit.credits_pending - released + credit.credits_posted + amount > AMOUNT_MAX:
        return T.overflows_credits
    return 0


def _limit_code(debit: Account, credit: Account, amount: int) -> int:
    if debit.flags & DEBITS_LIMIT and debit.debits_pending + debit.debits_posted + amount > debit.credits_posted:
        return T.exceeds_credits
    if credit.flags & CREDITS_LIMIT and credit.credits_pending + credit.credits_posted + amount > credit.debits_posted:
        return T.exceeds_debits
    return 0


def _check_limits(account: Account) -> None:
    if account.flags & DEBITS_LIMIT:
        check(account.debits_pending + account.debits_posted <= account.credits_posted, "debits past credits")
    if account.flags & CREDITS_LIMIT:
        check(account.credits_pending + account.credits_posted <= account.debits_posted, "credits past debits")


def _reopen(pending: Transfer, debit: Account, credit: Account) -> None:
    """A closing transfer that is voided or expires opens its account again."""
    if pending.flags & F.CLOSING_DEBIT:
        debit.flags &= ~CLOSED
    if pending.flags & F.CLOSING_CREDIT:
        credit.flags &= ~CLOSED


def _reclose(pending: Transfer, debit: Account, credit: Account) -> None:
    """Undoing that void or expiry closes it again."""
    if pending.flags & F.CLOSING_DEBIT:
        debit.flags |= CLOSED
    if pending.flags & F.CLOSING_CREDIT:
        credit.flags |= CLOSED


def _balance_of(a: Account, timestamp: int) -> Balance:
    return Balance(timestamp, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)


def _timestamp_of(item) -> int:
    return item.timestamp


def _after(log: list[Transfer], indexes: range, cursor: Transfer | None) -> range:
    """The part of `indexes` that comes after the cursor transfer, in the range's direction."""
    if cursor is None:
        return indexes[:0]
    # Transfers of one batch share a timestamp: search only among those.
    low = bisect_left(log, cursor.timestamp, key=_timestamp_of)
    high = bisect_right(log, cursor.timestamp, key=_timestamp_of)
    for index in range(low, high):
        if log[index] is cursor:
            if indexes.step > 0:
                return range(max(index + 1, indexes.start), indexes.stop)
            return range(min(index - 1, indexes.start), indexes.stop, -1)
    return indexes[:0]
