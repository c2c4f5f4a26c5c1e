"""The statuses of orders, payments, refunds, payouts, deposits, withdrawals and notification deliveries, and the
moves between them: one table per object.

Every status change goes through `transition`, which refuses a move its table does not list: such a move is a bug
of ours (input is checked before), so it raises through the always-on `check`.
"""

from typing import Literal, get_args

from engine.check import check

OrderStatus = Literal["pending", "paid", "failed", "expired", "cancelled", "partially_refunded", "refunded", "exception"]
PaymentStatus = Literal["processing", "requires_action", "requires_capture", "succeeded", "failed", "cancelled"]
RefundStatus = Literal["succeeded"]
PayoutStatus = Literal["pending", "paid", "failed"]
DepositStatus = Literal["processing", "requires_action", "succeeded", "failed"]
WithdrawalStatus = Literal["pending", "paid", "failed"]
DeliveryStatus = Literal["pending", "delivered", "dead"]

ORDER_STATUSES: tuple[str, ...] = get_args(OrderStatus)
PAYMENT_STATUSES: tuple[str, ...] = get_args(PaymentStatus)
REFUND_STATUSES: tuple[str, ...] = get_args(RefundStatus)
PAYOUT_STATUSES: tuple[str, ...] = get_args(PayoutStatus)
DEPOSIT_STATUSES: tuple[str, ...] = get_args(DepositStatus)
WITHDRAWAL_STATUSES: tuple[str, ...] = get_args(WithdrawalStatus)
DELIVERY_STATUSES: tuple[str, ...] = get_args(DeliveryStatus)

# Money that comes for an order no longer pending, or for another amount than asked, makes it `exception` (kept,
# refundable, never split); a refund changes the status only of an order its paying payment paid.
ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"paid", "exception", "expired", "cancelled"}),
    "paid": frozenset({"partially_refunded", "refunded", "exception"}),
    "partially_refunded": frozenset({"partially_refunded", "refunded", "exception"}),
    "refunded": frozenset({"exception"}),
    "expired": frozenset({"exception"}),
    "cancelled": frozenset({"exception"}),
    "exception": frozenset({"exception"}),
    "failed": frozenset(),  # named by the API; the engine never fails an order (its payments fail)
}
PAYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "processing": frozenset({"requires_action", "requires_capture", "succeeded", "failed", "cancelled"}),
    "requires_action": frozenset({"requires_action", "requires_capture", "succeeded", "failed", "cancelled"}),
    "requires_capture": frozenset({"succeeded", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
REFUND_TRANSITIONS: dict[str, frozenset[str]] = {"succeeded": frozenset()}
PAYOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"paid", "failed"}),
    "paid": frozenset(),
    "failed": frozenset(),
}
# A deposit follows its own payment (card, QR or bank transfer); a withdrawal follows the bank's word on it.
DEPOSIT_TRANSITIONS: dict[str, frozenset[str]] = {
    "processing": frozenset({"requires_action", "succeeded", "failed"}),
    "requires_action": frozenset({"succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
}
WITHDRAWAL_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"paid", "failed"}),
    "paid": frozenset(),
    "failed": frozenset(),
}
# A delivery waits (pending: its next attempt is due at next_attempt_at) until an attempt succeeds or its retry schedule
# ends; a dead one may be queued again (replay). A retry leaves it pending: no move.
DELIVERY_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"delivered", "dead"}),
    "delivered": frozenset(),
    "dead": frozenset({"pending"}),
}
# Keyed by record type name: engine/records.py types its status fields with the Literals above.
TRANSITIONS: dict[str, dict[str, frozenset[str]]] = {
    "Order": ORDER_TRANSITIONS,
    "Payment": PAYMENT_TRANSITIONS,
    "Refund": REFUND_TRANSITIONS,
    "Payout": PAYOUT_TRANSITIONS,
    "Deposit": DEPOSIT_TRANSITIONS,
    "Withdrawal": WITHDRAWAL_TRANSITIONS,
    "Delivery": DELIVERY_TRANSITIONS,
}
# A deposit's status by the status of the payment that funds it (a deposit's payment is captured automatically).
DEPOSIT_STATUS_OF_PAYMENT: dict[str, str] = {
    "processing": "processing",
    "requires_action": "requires_action",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "failed",
}


def _check_tables() -> None:
    """Each table has a row for every status of its type and moves only to statuses of its type."""
    for table, statuses in ((ORDER_TRANSITIONS, ORDER_STATUSES), (PAYMENT_TRANSITIONS, PAYMENT_STATUSES),
                            (REFUND_TRANSITIONS, REFUND_STATUSES), (PAYOUT_TRANSITIONS, PAYOUT_STATUSES),
                            (DEPOSIT_TRANSITIONS, DEPOSIT_STATUSES), (WITHDRAWAL_TRANSITIONS, WITHDRAWAL_STATUSES),
                            (DELIVERY_TRANSITIONS, DELIVERY_STATUSES)):
        check(set(table) == set(statuses) and all(moves <= set(statuses) for moves in table.values()),
              "a transition table names a status its type lacks")


_check_tables()


def transition(record, new_status: str) -> None:
    """Move a record of a type TRANSITIONS lists to `new_status`, if its table allows the move from where it is."""
    kind = type(record).__name__
    if new_status not in TRANSITIONS[kind][record.status]:
        check(False, f"{kind} {record.id}: {record.status} -> {new_status} is no transition")  # built only for a bug
    record.status = new_status


def is_final(record) -> bool:
    """Whether `record` has reached a status its table lets it leave for no other."""
    return not TRANSITIONS[type(record).__name__][record.status]
