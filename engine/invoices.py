"""Invoices: one per paid order, made in the command that pays it, numbered per merchant from 1 without gaps (the
number and the invoice are written in one command, so an undone command takes both back)."""

from itertools import islice

from engine.changes import Changes, peek
from engine.listing import Listing, list_cursor, made_in_order
from engine.paging import page
from engine.records import Invoice, Merchant, Order, Payment


class Invoices:
    def __init__(self, changes: Changes, merchants: dict[str, Merchant], payments: dict[str, Payment]) -> None:
        # State lives in tracked containers (engine/changes.py): a command that raises is undone whole.
        self.merchants = merchants
        self.payments = payments
        self.by_id: dict[str, Invoice] = changes.dict()
        self.last_numbers: dict[str, int] = changes.dict()  # merchant id -> the number of its latest invoice
        # Derived (restore rebuilds them): each merchant's invoice ids; order id -> its invoice id.
        self.by_merchant = Listing(changes)
        self.by_order: dict[str, str] = changes.dict(ordered=False)

    def create(self, invoice_id: str, order: Order, timestamp: int) -> Invoice:
        """The invoice of `order`, just paid; the order names it."""
        merchant = peek(self.merchants, order.merchant_id)
        payment = peek(self.payments, order.payment_id)
        card = payment.card if payment is not None else None
        number = (peek(self.last_numbers, order.merchant_id) or 0) + 1  # written below, which tracks it
        invoice = Invoice(
            id=invoice_id, merchant_id=order.merchant_id, number=number, merchant_name=merchant.name,
            order_id=order.id, order_name=order.name, amount=order.amount, currency=order.currency,
            payment_id=order.payment_id, payment_method=payment.method if payment is not None else "",
            card_brand=card.brand if card is not None else "", card_last4=card.last4 if card is not None else "",
            created_at=timestamp)
        self.last_numbers[order.merchant_id] = number
        self._add(invoice)
        order.invoice_id = invoice.id
        return invoice

    def _add(self, invoice: Invoice) -> None:
        self.by_id[invoice.id] = invoice
        self.by_merchant.add(invoice.merchant_id, invoice.id)
        self.by_order[invoice.order_id] = invoice.id

    # Reads

    def invoice_of(self, merchant_id: str, invoice_id: str) -> Invoice | None:
        invoice = self.by_id.get(invoice_id)
        return invoice if invoice is not None and invoice.merchant_id == merchant_id else None

    def list_invoices(self, merchant_id: str, order_id: str, limit: int, starting_after: str,
                      starting_after_created_at: int = -1) -> tuple[list[Invoice], bool]:
        """A merchant's invoices newest first (only the order's, if `order_id`), and whether more follow."""
        if order_id:
            ids = [self.by_order[order_id]] if order_id in self.by_order else []
            return page(ids, lambda invoice_id: self.invoice_of(merchant_id, invoice_id), limit, starting_after)
        cursor = list_cursor(self.by_id, merchant_id, starting_after, starting_after_created_at)
        if cursor is False:
            return [], False
        found = list(islice(self.by_merchant.by_key(merchant_id, self.by_id, cursor), limit + 1))
        return found[:limit], len(found) > limit

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"invoices": list(self.by_id.values()), "invoice_numbers": list(self.last_numbers.items())}

    def restore(self, snapshot) -> None:
        self.by_id.load((invoice.id, invoice) for invoice in snapshot.invoices)
        for invoice in made_in_order(snapshot.invoices, ()):
            self.by_merchant.add(invoice.merchant_id, invoice.id)
            self.by_order[invoice.order_id] = invoice.id
        self.last_numbers.load(snapshot.invoice_numbers)
