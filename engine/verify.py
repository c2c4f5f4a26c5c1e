"""The full consistency check of a ledger, for `paygate verify` and the tests.

It walks every account and pending transfer, so it is for checks, never the hot path.
"""

from collections import defaultdict

from engine.ledger import Ledger
from engine.types import AMOUNT_MAX, AccountFlag, PendingState


class LedgerInconsistent(AssertionError):
    """A broken invariant: the message names the account or currency."""


def verify_ledger(ledger: Ledger) -> None:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for account in ledger.accounts.values():
        _check_account(account)
        total = totals[account.currency]
        total[0] += account.debits_pending
        total[1] += account.debits_posted
        total[2] += account.credits_pending
        total[3] += account.credits_posted
    for currency, (debits_pending, debits_posted, credits_pending, credits_posted) in totals.items():
        _require(debits_pending == credits_pending, f"{currency}: pending debits {debits_pending} != credits {credits_pending}")
        _require(debits_posted == credits_posted, f"{currency}: posted debits {debits_posted} != credits {credits_posted}")
    _check_pending(ledger)


def _check_account(account) -> None:
    balances = (account.debits_pending, account.debits_posted, account.credits_pending, account.credits_posted)
    _require(all(0 <= value <= AMOUNT_MAX for value in balances), f"account {account.id}: balance out of range {balances}")
    if account.flags & AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS:
        _require(
            account.debits_pending + account.debits_posted <= account.credits_posted,
            f"account {account.id}: debits exceed credits",
        )
    if account.flags & AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS:
        _require(
            account.credits_pending + account.credits_posted <= account.debits_posted,
            f"account {account.id}: credits exceed debits",
        )


def _check_pending(ledger: Ledger) -> None:
    """Each account's pending balances are exactly its still-pending transfers."""
    debits: dict[str, int] = defaultdict(int)
    credits: dict[str, int] = defaultdict(int)
    for transfer_id, state in ledger.pending_states.items():
        if state == PendingState.PENDING:
            pending = ledger.pending_transfer(transfer_id)
            debits[pending.debit_account_id] += pending.amount
            credits[pending.credit_account_id] += pending.amount
    for account in ledger.accounts.values():
        _require(account.debits_pending == debits[account.id], f"account {account.id}: debits_pending mismatch")
        _require(account.credits_pending == credits[account.id], f"account {account.id}: credits_pending mismatch")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise LedgerInconsistent(message)
