"""Reads through memory and the cold store together (journal/cold.py over an engine, as a shard serves them): every
list page answers the same, in the same order, before and after archival, with records of one batch on both sides;
a refund of an archived payment brings it back, and the pages still list it once, where it was.

m1 (with a webhook, so events have deliveries) takes orders several to a batch: some stay pending for ever (in
memory), the others are paid from a wallet, refunded twice, paid out; a day later Archive takes the ended ones.
"""

import msgspec
import pytest

import engine.notifications
from engine import Engine
from engine.queries import (GetEvent, GetOrder, GetPaymentRecord, ListDeliveries, ListEvents, ListInvoices, ListOrders,
                            ListPayments, ListPayouts, ListRefunds, PendingDeliveries)
from engine.records import (
    AdjustWallet,
    Adjustment,
    Archive,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreatePayout,
    CreateRefund,
    Customer,
    DeliveryResult,
    Merchant,
    Order,
    PayOrderFromWallet,
    Payout,
    RecordDeliveryAttempts,
    Refund,
    payout_result,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from journal.cold import ColdStore
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S
DAY = 86_400


class Shelf(Driver):
    """An engine and its cold store, written after each batch and read through as a shard does."""

    def __init__(self, cold: ColdStore, engine: Engine | None = None, now: int = T0) -> None:
        super().__init__(engine, now)
        self.cold = cold

    def restored(self) -> "Shelf":
        return Shelf(self.cold, Engine.restore(self.engine.snapshot()), self.now)

    def run(self, *commands, at: int | None = None):
        result = super().run(*commands, at=at)
        if self.engine.archived:
            self.cold.keep(self.engine.archived)
        return result

    def read(self, query):
        return self.cold.complete(query, self.engine.query(query), self.engine)

    def archive_all(self) -> None:
        """A day on, Archive until nothing more has ended a day ago."""
        self.run(at=self.now + DAY * S)
        while self.do(Archive(DAY)).record.more:
            pass

    def deliver_all(self) -> None:
        pending = self.engine.query(PendingDeliveries()).records
        self.ok(RecordDeliveryAttempts([DeliveryResult(delivery_id=delivery.id, attempt=delivery.attempt_count + 1,
                                                       attempted_at=self.now, status_code=200, error="",
                                                       duration_ms=5, outcome="delivered")
                                        for delivery in pending]))

    def refund(self, refund_id: str, payment_id: str, amount: int):
        """A refund as the edge asks it: with the payment and its order as the cold store holds them, if archived."""
        found = self.read(GetPaymentRecord("m1", "payment", payment_id))
        archived = {}
        if found.archived:
            order = self.read(GetOrder("m1", found.record.order_id))
            archived = {"archived_payment": found.record, "archived_order": order.record if order.archived else None}
        return self.do(CreateRefund(refund=Refund(id=refund_id, merchant_id="m1", payment_id=payment_id,
                                                  amount=amount), transfer_id=f"m1:{refund_id}", **archived))


def order(oid: str) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id="m1", name=f"{'Tea' if hash(oid) % 2 else 'Cake'} {oid}",
                                   amount=100, currency="USD", payment_methods=["wallet"]), expires_in_s=None)


def pay(oid: str) -> PayOrderFromWallet:
    return PayOrderFromWallet(merchant_id="m1", order_id=oid, customer_id="c1", payment_id=f"pay_{oid}",
                              transfer_id=f"m1:pay_{oid}")


@pytest.fixture
def shelf(tmp_path) -> Shelf:
    shelf = Shelf(ColdStore(tmp_path))
    shelf.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com",
                                     webhook_url="https://m1.example/hook")),
             CreateCustomer(Customer(id="c1", merchant_id="m1", email="c1@example.com")))
    shelf.ok(AdjustWallet(adjustment=Adjustment(id="adj_1", merchant_id="m1", customer_id="c1", amount=10**6,
                                                currency="USD", reason="funds"), transfer_id="m1:funds"))
    # Ids out of their order in each batch: a batch's records page by id, wherever they are kept.
    for batch in range(4):
        oids = [f"o{batch}{letter}" for letter in "dbeac"]
        shelf.ok(*(order(oid) for oid in oids))
        shelf.ok(*(pay(oid) for oid in oids if oid[-1] != "e"))  # each batch's "e" stays pending, in memory
    for number, oid in enumerate(("o0d", "o0d", "o2b")):
        assert shelf.refund(f"re_{number}", f"pay_{oid}", 10).code == "ok"
    shelf.ok(*(CreatePayout(payout=Payout(id=f"po_{number}", merchant_id="m1", amount=5, currency="USD",
                                          hold_id=f"m1:po_{number}.hold")) for number in (3, 1, 2)))
    shelf.ok(*(payout_result("m1", f"po_{number}", f"bank_{number}", paid=True) for number in (1, 2, 3)))
    shelf.deliver_all()
    yield shelf
    shelf.cold.close()


def walk(shelf: Shelf, make, limit: int) -> list[str]:
    """The ids of every page of a list, `limit` at a time."""
    ids, after = [], ""
    while True:
        answer = shelf.read(make(after, limit))
        ids += [record.id for record in answer.records]
        if not answer.has_more:
            return ids
        after = answer.records[-1].id


LISTS = {
    "orders": lambda after, limit: ListOrders(merchant_id="m1", limit=limit, starting_after=after),
    "tea orders": lambda after, limit: ListOrders(merchant_id="m1", name_contains="tea", limit=limit,
                                                  starting_after=after),
    "orders of a window": lambda after, limit: ListOrders(merchant_id="m1", created_gte=T0 + 5 * S,
                                                          created_lt=T0 + 9 * S, limit=limit, starting_after=after),
    "pending orders": lambda after, limit: ListOrders(merchant_id="m1", status="pending", limit=limit,
                                                      starting_after=after),
    "payments": lambda after, limit: ListPayments(merchant_id="m1", limit=limit, starting_after=after),
    "an order's payments": lambda after, limit: ListPayments(merchant_id="m1", order_id="o0d", limit=limit,
                                                             starting_after=after),
    "a payment's refunds": lambda after, limit: ListRefunds(merchant_id="m1", payment_id="pay_o0d", limit=limit,
                                                            starting_after=after),
    "payouts": lambda after, limit: ListPayouts(merchant_id="m1", limit=limit, starting_after=after),
    "invoices": lambda after, limit: ListInvoices(merchant_id="m1", limit=limit, starting_after=after),
    "events": lambda after, limit: ListEvents(merchant_id="m1", limit=limit, starting_after=after),
    "an order's events": lambda after, limit: ListEvents(merchant_id="m1", object_id="o1a", limit=limit,
                                                         starting_after=after),
    "refund events": lambda after, limit: ListEvents(merchant_id="m1", kind="refund.succeeded", limit=limit,
                                                     starting_after=after),
    "deliveries": lambda after, limit: ListDeliveries(merchant_id="m1", limit=limit, starting_after=after),
    "every merchant's delivered": lambda after, limit: ListDeliveries(merchant_id="", status="delivered",
                                                                      limit=limit, starting_after=after),
}


def pages(shelf: Shelf) -> dict:
    return {(name, limit): walk(shelf, make, limit) for name, make in LISTS.items() for limit in (1, 3, 100)}


def test_every_list_pages_the_same_before_and_after_archival(shelf: Shelf):
    before = pages(shelf)
    assert before["orders", 100][:5] == ["o3e", "o3d", "o3c", "o3b", "o3a"]  # one batch's orders, by id
    assert before["orders of a window", 100] == ["o2e", "o2d", "o2c", "o2b", "o2a", "o1e", "o1d", "o1c", "o1b", "o1a"]
    shelf.archive_all()
    assert shelf.cold.count() > 100
    assert [order.id for order in shelf.engine.query(ListOrders(merchant_id="m1")).records] == [
        "o3e", "o2e", "o1e", "o0e"]  # in memory: the pending ones, each beside its batch's archived others
    assert pages(shelf) == before
    assert pages(shelf.restored()) == before


def test_a_refund_brings_an_archived_payment_back_and_it_pages_once_where_it_was(shelf: Shelf):
    shelf.archive_all()
    payments = pages(shelf)
    assert shelf.engine.query(GetPaymentRecord("m1", "payment", "pay_o1c")).record is None
    refund = shelf.refund("re_late", "pay_o1c", 30)
    assert refund.code == "ok" and refund.record.amount == 30
    payment = shelf.read(GetPaymentRecord("m1", "payment", "pay_o1c"))
    assert (payment.archived, payment.record.amount_refunded) == (False, 30)
    assert shelf.read(GetOrder("m1", "o1c")).record.status == "partially_refunded"
    after = pages(shelf)
    for name in ("orders", "payments", "an order's payments", "invoices"):
        assert after[name, 1] == payments[name, 1]  # listed once, in its place
    listed = {payment.id: payment for payment in shelf.read(ListPayments(merchant_id="m1", limit=100)).records}
    assert listed["pay_o1c"].amount_refunded == 30  # as memory holds it now
    refunds = shelf.read(ListRefunds(merchant_id="m1", payment_id="pay_o1c")).records
    assert [refund.id for refund in refunds] == ["re_late"]
    restored = shelf.restored()
    assert restored.engine.state_hash() == shelf.engine.state_hash()
    assert pages(restored) == after
    shelf.archive_all()  # back to the cold store, as it now stands
    assert shelf.engine.commerce.payments.unlisted == {} and shelf.engine.commerce.orders.unlisted == {}
    assert shelf.read(GetPaymentRecord("m1", "payment", "pay_o1c")).record.amount_refunded == 30
    assert shelf.read(GetOrder("m1", "o1c")).record.status == "partially_refunded"
    assert pages(shelf) == after


def test_a_refund_of_an_archived_payment_without_it_or_with_another_finds_nothing(shelf: Shelf):
    shelf.archive_all()
    other = shelf.read(GetPaymentRecord("m1", "payment", "pay_o2a")).record
    order = shelf.read(GetOrder("m1", "o1c")).record
    refund = Refund(id="re_x", merchant_id="m1", payment_id="pay_o1c", amount=10)
    shelf.refused(CreateRefund(refund=refund, transfer_id="m1:re_x"), "payment_not_found")
    shelf.refused(CreateRefund(refund=refund, transfer_id="m1:re_x", archived_payment=other, archived_order=order),
                  "payment_not_found")
    payment = shelf.read(GetPaymentRecord("m1", "payment", "pay_o1c")).record
    shelf.refused(CreateRefund(refund=refund, transfer_id="m1:re_x", archived_payment=payment), "payment_not_found")
    too_much = msgspec.structs.replace(refund, amount=1_000)
    shelf.refused(CreateRefund(refund=too_much, transfer_id="m1:re_x", archived_payment=payment,
                               archived_order=order), "amount_too_large")


def test_events_pruned_past_their_cap_are_read_from_the_cold_store(shelf: Shelf, monkeypatch):
    monkeypatch.setattr(engine.notifications, "MAX_EVENTS", 8)
    monkeypatch.setattr(engine.notifications, "PRUNE_BATCH", 1)
    before = pages(shelf)
    oldest = shelf.read(ListEvents(merchant_id="m1", limit=100)).records[-1]
    shelf.ok(order("o9a"))
    shelf.ok(pay("o9a"))
    assert shelf.engine.query(GetEvent("m1", oldest.id)).record is None
    assert shelf.read(GetEvent("m1", oldest.id)).record == oldest
    after = pages(shelf)
    assert after["events", 100][2:] == before["events", 100]
    assert after["events", 1] == after["events", 100]
