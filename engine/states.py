"""The statuses of orders, payments, refunds and payouts, and the moves between them: one table per object.

Every status change goes through `transition`, which refuses a move its table does not list: such a move is a bug
of ours (input is checked before), so it raises through the always-on `check`.
"""

from typing import Literal, get_args

from engine.check import check

OrderStatus = Literal["pending", "paid", "failed", "expired", "cancelled", "partially_refunded", "refunded", "exception"]
PaymentStatus = Literal["processing", "requires_action", "requires_capture", "succeeded", "failed", "cancelled"]
RefundStatus = Literal["succeeded"]
PayoutStatus = Literal["pending", "paid", "failed"]

ORDER_STATUSES: tuple[str, ...] = get_args(OrderStatus)
PAYMENT_STATUSES: tuple[str, ...] = get_args(PaymentStatus)
REFUND_STATUSES: tuple[str, ...] = get_args(RefundStatus)
PAYOUT_STATUSES: tuple[str, ...] = get_args(PayoutStatus)

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
TRANSITIONS: dict[str, dict[str, frozenset[str]]] = {
    "Order": ORDER_TRANSITIONS,
    "Payment": PAYMENT_TRANSITIONS,
    "Refund": REFUND_TRANSITIONS,
    "Payout": PAYOUT_TRANSITIONS,
}


def _check_tables() -> None:
    """Each table has a row for every status of its type and moves only to statuses of its type."""
    for table, statuses in ((ORDER_TRANSITIONS, ORDER_STATUSES), (PAYMENT_TRANSITIONS, PAYMENT_STATUSES),
                            (REFUND_TRANSITIONS, REFUND_STATUSES), (PAYOUT_TRANSITIONS, PAYOUT_STATUSES)):
        check(set(table) == set(statuses) and all(moves <= set(statuses) for moves in table.values()),
              "a transition table names a status its type lacks")


_check_tables()


def transition(record, new_status: str) -> None:
    """Move an order, payment, refund or payout to `new_status`, if its table allows the move from where it is."""
    kind = type(record).__name__
    if new_status not in TRANSITIONS[kind][record.status]:
        check(False, f"{kind} {record.id}: {record.status} -> {new_status} is no transition")  # built only for a bug
    record.status = new_status
