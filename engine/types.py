"""The engine's data: accounts, transfers, commands, batches and results.

All are msgspec Structs encoded as arrays (`array_like`) on internal wires. The
engine takes ownership of the command objects it is given: a stored transfer
is the very object that was submitted, completed with its timestamp.
"""

import msgspec

# Room for ids namespaced by their owner: "<merchant id>:<client id>", wallets "...:<customer>.wallet.<currency>".
ID_MAX_LENGTH = 128
# Amounts and every balance field are in minor units, at most the API's int64: one range end to end.
AMOUNT_MAX = 2**63 - 1
CODE_MAX = 2**16 - 1
TIMESTAMP_MAX = 2**63 - 1
NANOSECONDS_PER_SECOND = 1_000_000_000


class AccountFlag:
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3
    CLOSED = 1 << 4
    ALL = (1 << 5) - 1
    LIMITS = DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS


class TransferFlag:
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING = 1 << 2
    VOID_PENDING = 1 << 3
    BALANCING_DEBIT = 1 << 4
    BALANCING_CREDIT = 1 << 5
    CLOSING_DEBIT = 1 << 6
    CLOSING_CREDIT = 1 << 7
    ALL = (1 << 8) - 1
    RESOLVE = POST_PENDING | VOID_PENDING
    BALANCING = BALANCING_DEBIT | BALANCING_CREDIT
    CLOSING = CLOSING_DEBIT | CLOSING_CREDIT
    # Any flag but LINKED leaves the plain single-phase path.
    SPECIAL = ALL & ~LINKED

    NAMES = {
        "linked": LINKED,
        "pending": PENDING,
        "post_pending": POST_PENDING,
        "void_pending": VOID_PENDING,
        "balancing_debit": BALANCING_DEBIT,
        "balancing_credit": BALANCING_CREDIT,
        "closing_debit": CLOSING_DEBIT,
        "closing_credit": CLOSING_CREDIT,
    }


class PendingState:
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


class Account(msgspec.Struct, array_like=True, gc=False):
    id: str
    currency: str
    code: int = 0
    flags: int = 0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    timestamp: int = 0
    # Owned by the engine: the account's transfers in time order, and for
    # HISTORY accounts its balances after each change. Never sent by clients.
    transfers: list | None = None
    history: list | None = None
    # The client's own labels (bounded by the edge); the ledger never reads them.
    metadata: dict[str, str] | None = None


class Transfer(msgspec.Struct, array_like=True, gc=False):
    id: str
    debit_account_id: str = ""
    credit_account_id: str = ""
    amount: int = 0
    currency: str = ""
    pending_id: str = ""
    timeout_s: int = 0
    code: int = 0
    flags: int = 0
    # Set by the engine: the time of the batch that created the transfer.
    timestamp: int = 0


class Balance(msgspec.Struct, array_like=True, gc=False):
    """An account's balances as of `timestamp` (HISTORY accounts)."""

    timestamp: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


class CreateAccounts(msgspec.Struct, tag="create_accounts", array_like=True):
    accounts: list[Account]


class CreateTransfers(msgspec.Struct, tag="create_transfers", array_like=True):
    transfers: list[Transfer]


class Event(msgspec.Struct, array_like=True):
    """Something the engine did on its own or that readers off the hot path must hear of."""

    kind: str
    object_id: str
    timestamp: int
