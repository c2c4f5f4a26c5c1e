"""End-of-day archival: records that reached their end and are older than a cut-off leave engine memory.

An `Archive` command (journaled, so replay and the replica archive the same records at the same point) takes, oldest
first and at most MAX_ARCHIVED of each kind per command, the records that can change no more:

    an order      paid, partially or wholly refunded, expired or cancelled (not an exception, which waits for a
                  person), untouched since the cut-off
    a deposit     succeeded or failed, untouched since the cut-off
    a payment     failed or cancelled; or its money came and settles through no file (a wallet, QR or bank payment),
                  or its acquirer's file settled it (settled, disputed) and no refund of it waits for settlement;
                  untouched since the cut-off, and its order or deposit (if any) archived already
    a refund      settled, or of a payment that settles through no file; made before the cut-off, its payment
                  archived already
    an invoice    its order archived already
    a payout, a withdrawal   paid or failed, untouched since the cut-off
    an adjustment made before the cut-off
    an event      made before the cut-off, none of its deliveries pending; with its deliveries

and the ledger's transfers made before the cut-off, oldest first, with the balances history before the cut-off
(ledger.archive_transfers). A pending transfer still open goes too but stays held, where its post, void or expiry
finds it, so that nothing waits behind a hold that may never end (a payout the bank never answers). A transfer id
archived may be taken again, so a client's retry of a transfer is exactly-once within the cut-off (a day by
default), as its idempotency keys are. The command answers all of them (`Archived`): the shard process writes them
to its cold store (journal/cold.py), from which reads of them are answered from then on. A record met at the front
of its kind's list that is old but cannot go yet moves to the back, so the next command does not meet it first
again. Balances, merchants and customers (the owners of wallets) stay in memory.

A payment refunded after it was archived comes back into memory with its order (CreateRefund carries them, as the
cold store holds them), as does one charged back (Reconcile carries them), and an event redelivered after it was
archived comes back (RedeliverEvent carries it): unlisted, since the cold store lists them already, until archival
takes them again.
"""

from engine.changes import Changes
from engine.deposits import Deposits
from engine.invoices import Invoices
from engine.ledger import Ledger
from engine.notifications import Notifications
from engine.orders import Orders
from engine.payments import Payments
from engine.reconciliations import Reconciliations, settles_by_file
from engine.records import Archive, Archived, Invoice, Order, Outcome, Payment, Refund
from engine.states import is_final
from engine.types import NANOSECONDS_PER_SECOND, TIMESTAMP_MAX

MAX_ARCHIVED = 2_000  # of each kind per command: its answer is journaled as the batch's result
MAX_ARCHIVED_TRANSFERS = 8_000
MAX_LOOKED_AT = 8_000  # records looked at per kind and command, archived or moved to the back
ARCHIVABLE_ORDER_STATUSES = ("paid", "partially_refunded", "refunded", "expired", "cancelled")
ENDED_PAYMENT_STATUSES = ("failed", "cancelled", "settled", "disputed")


class Archival:
    def __init__(self, ledger: Ledger, changes: Changes, orders: Orders, payments: Payments, deposits: Deposits,
                 invoices: Invoices, notifications: Notifications, reconciliations: Reconciliations) -> None:
        self.ledger = ledger
        self.changes = changes
        self.orders = orders
        self.payments = payments
        self.deposits = deposits
        self.invoices = invoices
        self.notifications = notifications
        self.reconciliations = reconciliations

    def archive(self, command: Archive, timestamp: int) -> Outcome:
        if not 0 <= command.age_s <= TIMESTAMP_MAX // NANOSECONDS_PER_SECOND:
            return Outcome("age_invalid")
        before = timestamp - command.age_s * NANOSECONDS_PER_SECOND
        archived = Archived(before=before, deliveries=[])
        # An order before its payments, a deposit before its payment, a payment before its refunds.
        archived.orders = self._sweep(self.orders.by_id, before, self._order_may_go, self._drop_order)
        archived.deposits = self._sweep(self.deposits.deposits, before, _ended, self._drop_deposit)
        archived.payments = self._sweep(self.payments.payments, before, self._payment_may_go, self._drop_payment)
        archived.refunds = self._sweep(self.payments.refunds, before, self._refund_may_go, self._drop_refund)
        archived.invoices = self._sweep(self.invoices.by_id, before, self._invoice_may_go, self._drop_invoice)
        archived.payouts = self._sweep(self.payments.payouts, before, _ended, self._drop_payout)
        archived.withdrawals = self._sweep(self.deposits.withdrawals, before, _ended, _nothing_to_drop)
        archived.adjustments = self._sweep(self.deposits.adjustments, before, _made, _nothing_to_drop)
        notifications = self.notifications
        archived.events = self._sweep(notifications.records, before, notifications.may_leave,
                                      lambda event: archived.deliveries.extend(notifications.drop_event(event)))
        ledger = self.ledger.archive_transfers(before, MAX_ARCHIVED_TRANSFERS)
        archived.transfers = ledger.transfers
        archived.histories = [(account.id, history) for account, _, history in ledger.accounts if history]
        kinds = (archived.orders, archived.deposits, archived.payments, archived.refunds, archived.invoices,
                 archived.payouts, archived.withdrawals, archived.adjustments, archived.events)
        archived.more = (any(len(records) == MAX_ARCHIVED for records in kinds)
                         or len(archived.transfers) == MAX_ARCHIVED_TRANSFERS)
        return Outcome(record=archived)

    def _sweep(self, records: dict, before: int, may_go, drop) -> list:
        """Up to MAX_ARCHIVED records from the front of `records` (oldest first), made before `before`, that may
        go: out of `records` and of the indexes `drop` keeps. One that may not go yet moves to the back."""
        gone, kept = [], []
        looked_at = 0
        for _, record in records.first_items(MAX_LOOKED_AT):
            if len(gone) == MAX_ARCHIVED or record.created_at >= before:
                break
            looked_at += 1
            (gone if may_go(record, before) else kept).append(record)
        records.take_first(looked_at)
        for record in gone:
            drop(record)
        for record in kept:
            records[record.id] = record  # at the back: the next command meets the others first
        return gone

    # What may go

    def _order_may_go(self, order: Order, before: int) -> bool:
        return order.status in ARCHIVABLE_ORDER_STATUSES and order.updated_at < before

    def _payment_may_go(self, payment: Payment, before: int) -> bool:
        if payment.updated_at >= before or payment.order_id in self.orders.by_id:
            return False
        if payment.deposit_id in self.deposits.deposits:
            return False  # its deposit follows it
        if payment.status in ENDED_PAYMENT_STATUSES:
            return payment.id not in self.reconciliations.refunds_waiting
        return payment.status == "succeeded" and not settles_by_file(payment)

    def _refund_may_go(self, refund: Refund, before: int) -> bool:
        # Its payment goes first, and only once no refund of it waits for a settlement file.
        return refund.payment_id not in self.payments.payments

    def _invoice_may_go(self, invoice: Invoice, before: int) -> bool:
        return invoice.order_id not in self.orders.by_id

    # Out of memory, with what indexes them

    def _drop_order(self, order: Order) -> None:
        self.orders.unlist(order)
        self.orders.expiries.drop(order.id)

    def _drop_deposit(self, deposit) -> None:
        self.deposits.expiries.drop(deposit.id)

    def _drop_payment(self, payment: Payment) -> None:
        self.payments.unlist(payment)
        self.payments.deadlines.drop(payment.id)
        self.reconciliations.unlist_payment(payment)

    def _drop_refund(self, refund: Refund) -> None:
        self.payments.refunds_by_payment.remove(refund.payment_id, refund.id)

    def _drop_invoice(self, invoice: Invoice) -> None:
        self.invoices.by_merchant.remove(invoice.merchant_id, invoice.id)
        self.invoices.by_order.pop(invoice.order_id, None)

    def _drop_payout(self, payout) -> None:
        self.payments.payouts_by_merchant.remove(payout.merchant_id, payout.id)


def _ended(record, before: int) -> bool:
    """A payout, deposit or withdrawal that can change no more, untouched since the cut-off."""
    return is_final(record) and record.updated_at < before


def _made(record, before: int) -> bool:
    return True  # an adjustment never changes: made before the cut-off, as the sweep checks, it may go


def _nothing_to_drop(record) -> None:
    return None  # no index lists it
