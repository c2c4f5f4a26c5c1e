"""End-of-day archival: records that reached their end and are older than a cut-off leave engine memory.

An `Archive` command (journaled, so replay and the replica archive the same records at the same point) takes, oldest
first and at most MAX_ARCHIVED of each kind per command, the records that can change no more:

    an order      paid, partially or wholly refunded, expired or cancelled (not an exception, which waits for a
                  person), untouched since the cut-off
    a payment     failed or cancelled; or its money came and settles through no file (a wallet, QR or bank payment),
                  or its acquirer's file settled it (settled, disputed) and no refund of it waits for settlement;
                  untouched since the cut-off, and its order (if any) archived already
    a refund      settled, or of a payment that settles through no file; made before the cut-off, its payment
                  archived already
    an invoice    its order archived already

and the ledger's transfers made before the cut-off, oldest first, up to the first pending transfer still open (which
holds back those after it until it is posted, voided or expires), with the balances history before the cut-off
(ledger.archive_transfers): a transfer id archived may be taken again, so a client's retry of a transfer is
exactly-once within the cut-off (a day by default), as its idempotency keys are. The command answers all of them
(`Archived`): the shard process writes them to its cold store (journal/cold.py), from which reads of them are
answered from then on. A record met at the front of its kind's list that is old but cannot go yet moves to the
back, so the next command does not meet it first again. Balances, merchants, customers, deposits, payouts and
withdrawals stay in memory.
"""

from engine.changes import Changes
from engine.invoices import Invoices
from engine.ledger import Ledger
from engine.orders import Orders
from engine.payments import Payments
from engine.reconciliations import Reconciliations, settles_by_file
from engine.records import Archive, Archived, Invoice, Order, Outcome, Payment, Refund
from engine.types import NANOSECONDS_PER_SECOND, TIMESTAMP_MAX

MAX_ARCHIVED = 2_000  # of each kind per command: its answer is journaled as the batch's result
MAX_ARCHIVED_TRANSFERS = 8_000
MAX_LOOKED_AT = 8_000  # records looked at per kind and command, archived or moved to the back
ARCHIVABLE_ORDER_STATUSES = ("paid", "partially_refunded", "refunded", "expired", "cancelled")
ENDED_PAYMENT_STATUSES = ("failed", "cancelled", "settled", "disputed")


class Archival:
    def __init__(self, ledger: Ledger, changes: Changes, orders: Orders, payments: Payments, invoices: Invoices,
                 reconciliations: Reconciliations) -> None:
        self.ledger = ledger
        self.changes = changes
        self.orders = orders
        self.payments = payments
        self.invoices = invoices
        self.reconciliations = reconciliations

    def archive(self, command: Archive, timestamp: int) -> Outcome:
        if not 0 <= command.age_s <= TIMESTAMP_MAX // NANOSECONDS_PER_SECOND:
            return Outcome("age_invalid")
        before = timestamp - command.age_s * NANOSECONDS_PER_SECOND
        archived = Archived(before=before)
        archived.orders = self._sweep(self.orders.by_id, before, self._order_may_go, self._drop_order)
        archived.payments = self._sweep(self.payments.payments, before, self._payment_may_go, self._drop_payment)
        archived.refunds = self._sweep(self.payments.refunds, before, self._refund_may_go, self._drop_refund)
        archived.invoices = self._sweep(self.invoices.by_id, before, self._invoice_may_go, self._drop_invoice)
        ledger = self.ledger.archive_transfers(before, MAX_ARCHIVED_TRANSFERS)
        archived.transfers = ledger.transfers
        archived.histories = [(account.id, history) for account, _, history in ledger.accounts if history]
        archived.more = (MAX_ARCHIVED in (len(archived.orders), len(archived.payments), len(archived.refunds),
                                          len(archived.invoices)) or len(archived.transfers) == MAX_ARCHIVED_TRANSFERS)
        return Outcome(record=archived)

    def _sweep(self, records: dict, before: int, may_go, drop) -> list:
        """Up to MAX_ARCHIVED records from the front of `records` (oldest first), made before `before`, that may
        go: out of `records` and of the indexes `drop` keeps. One that may not go yet moves to the back."""
        gone = []
        for _ in range(MAX_LOOKED_AT):
            record_id = next(iter(records), None)
            if record_id is None or len(gone) == MAX_ARCHIVED:
                break
            record = records[record_id]
            if record.created_at >= before:
                break
            del records[record_id]
            if may_go(record, before):
                drop(record)
                gone.append(record)
            else:
                records[record_id] = record  # at the back: the next command meets the others first
        return gone

    # What may go

    def _order_may_go(self, order: Order, before: int) -> bool:
        return order.status in ARCHIVABLE_ORDER_STATUSES and order.updated_at < before

    def _payment_may_go(self, payment: Payment, before: int) -> bool:
        if payment.updated_at >= before or payment.order_id in self.orders.by_id:
            return False
        if payment.deposit_id:
            return False  # its deposit stays in memory, and follows it
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
        self.orders.by_merchant.remove(order.merchant_id, order.id)
        self.orders.expiries.drop(order.id)

    def _drop_payment(self, payment: Payment) -> None:
        self.payments.by_merchant.remove(payment.merchant_id, payment.id)
        if payment.order_id:
            self.payments.by_order.remove(payment.order_id, payment.id)
        self.payments.deadlines.drop(payment.id)

    def _drop_refund(self, refund: Refund) -> None:
        self.payments.refunds_by_payment.remove(refund.payment_id, refund.id)

    def _drop_invoice(self, invoice: Invoice) -> None:
        self.invoices.by_merchant.remove(invoice.merchant_id, invoice.id)
        self.invoices.by_order.pop(invoice.order_id, None)

