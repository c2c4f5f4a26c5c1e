"""The states of deposits and withdrawals, and the only transitions each may take: one table per object.

A deposit follows its own payment (card, QR or bank transfer): the payment's status names the deposit's.
A withdrawal follows the bank's word on it. Every change of status goes through `advance_status`, so a transition
the table lacks is a bug that an always-on check stops, never a state that silently appears.
"""

from typing import Literal

from engine.check import check

DepositStatus = Literal["processing", "requires_action", "succeeded", "failed"]
WithdrawalStatus = Literal["pending", "paid", "failed"]

DEPOSIT_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "processing": ("requires_action", "succeeded", "failed"),
    "requires_action": ("succeeded", "failed"),
    "succeeded": (),
    "failed": (),
}
WITHDRAWAL_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("paid", "failed"),
    "paid": (),
    "failed": (),
}
DEPOSIT_STATUSES = tuple(DEPOSIT_TRANSITIONS)
WITHDRAWAL_STATUSES = tuple(WITHDRAWAL_TRANSITIONS)
# A deposit's status by the status of the payment that funds it (a deposit's payment is captured automatically).
DEPOSIT_STATUS_OF_PAYMENT: dict[str, str] = {
    "processing": "processing",
    "requires_action": "requires_action",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "failed",
}


def is_final(transitions: dict[str, tuple[str, ...]], status: str) -> bool:
    return not transitions[status]


def advance_status(transitions: dict[str, tuple[str, ...]], record, status: str, timestamp: int) -> None:
    """Move `record` (a Deposit or a Withdrawal) to `status`, which its table must allow from where it is."""
    check(status in transitions.get(record.status, ()), "a transition its table does not allow")
    record.status = status
    record.updated_at = timestamp
