"""The balance engine: a pure, deterministic, single-writer ledger in memory.

Owns accounts, double-entry transfers (single, linked, two-phase, balancing,
closing) and their result codes; merchants, orders, customers, wallets and
idempotency keys as state machines whose money moves are transfers; the risk
block list, and payments refused by the edge's risk verdict; the events
merchants hear of, their deliveries and invoices; reads; and snapshot /
restore / state hash.
Must not import anything but the standard library and msgspec: no I/O, no
clock, no randomness, no threads. Time and ids arrive inside each batch.
"""

from engine.batch import Batch, BatchResult, Command
from engine.codes import AccountCode, TransferCode
from engine.machine import Engine
from engine.types import Account, AccountFlag, CreateAccounts, CreateTransfers, Transfer, TransferFlag

__all__ = [
    "Account",
    "AccountCode",
    "AccountFlag",
    "Batch",
    "BatchResult",
    "Command",
    "CreateAccounts",
    "CreateTransfers",
    "Engine",
    "Transfer",
    "TransferCode",
    "TransferFlag",
]
