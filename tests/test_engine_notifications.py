"""Events a merchant hears of, their deliveries and invoices, as the engine keeps them (engine/notifications.py,
engine/invoices.py): made in the command that causes them, deterministic, undone with it, and bounded."""

import msgspec
import pytest

from engine import Engine, notifications
from engine.notifications import BACKLOG_FULL, MAX_ATTEMPTS_KEPT, NO_WEBHOOK_URL, QUEUED, WEBHOOK_MOVED
from engine.queries import (
    GetDeliveryJobs,
    GetEvent,
    GetInvoice,
    GetOrder,
    ListDeliveries,
    ListEvents,
    ListInvoices,
    PendingDeliveries,
)
from engine.records import (
    Archive,
    CancelOrder,
    CardDetails,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    CreateRefund,
    DeliveryResult,
    EventRecord,
    Merchant,
    Order,
    Payment,
    RecordDeliveryAttempts,
    RecordPspResult,
    RedeliverEvent,
    Refund,
    ReplayDeliveries,
    UpdateMerchant,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S
HOOK = "https://shop.example/hook"
IPN = "https://shop.example/ipn"
EMAIL = "buyer@example.com"


def order(oid: str, mid: str = "m1", *, ipn_url: str = IPN, customer_email: str = EMAIL) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id=mid, name=f"Order {oid}", amount=1500, currency="usd",
                                   payment_methods=["card"], ipn_url=ipn_url, customer_email=customer_email),
                       expires_in_s=3600)


def pay(pid: str, oid: str, mid: str = "m1") -> list:
    """A card payment of the order and the acquirer's authorization: two batches' commands."""
    card = CardDetails("visa", "4242", 12, 2030)
    return [[CreatePayment(payment=Payment(id=pid, merchant_id=mid, amount=0, currency="", order_id=oid,
                                           card=card, token_id=f"tok_{pid}"), sealed_card=b"sealed")],
            [RecordPspResult(merchant_id=mid, payment_id=pid, callback_id=f"cb_{pid}", result="authorized",
                             transfer_id=f"{mid}:{pid}.authorization")]]


def result(delivery_id: str, attempt: int, outcome: str, status_code: int = 500, at: int = T0) -> DeliveryResult:
    return DeliveryResult(delivery_id=delivery_id, attempt=attempt, attempted_at=at, status_code=status_code,
                          error="" if status_code else "connection refused", duration_ms=12, outcome=outcome,
                          next_attempt_at=at + 2 * S if outcome == "retry" else 0)


class Shop(Driver):
    def events(self, mid: str = "m1", **filters) -> list[EventRecord]:
        return self.engine.query(ListEvents(merchant_id=mid, limit=100, **filters)).records

    def deliveries(self, mid: str = "m1", **filters):
        return self.engine.query(ListDeliveries(merchant_id=mid, limit=100, **filters)).records

    def paid_order(self, pid: str, oid: str, mid: str = "m1"):
        self.ok(order(oid, mid))
        for commands in pay(pid, oid, mid):
            self.ok(*commands)


def shop() -> Shop:
    driver = Shop(now=T0)
    driver.ok(CreateMerchant(Merchant(id="m1", name="Shop One", email="m1@example.com", webhook_url=HOOK)),
              CreateMerchant(Merchant(id="m2", name="Shop Two", email="m2@example.com")))
    return driver


def test_a_paid_order_stores_its_events_with_their_objects_as_they_were_and_queues_their_deliveries():
    driver = shop()
    driver.ok(order("o1"))
    driver.ok(*pay("p1", "o1")[0])
    paying = driver.ok(*pay("p1", "o1")[1])
    kinds = [event.kind for event in paying.events]
    assert kinds == ["payment.succeeded", "order.paid", QUEUED, QUEUED, QUEUED, QUEUED]
    succeeded, paid = driver.events()[1], driver.events()[0]
    assert (succeeded.kind, succeeded.object_type, paid.kind, paid.object_type) == (
        "payment.succeeded", "payment", "order.paid", "order")
    assert succeeded.id == f"evt_{paying.sequence:012x}{0:06x}" and paid.id == f"evt_{paying.sequence:012x}{1:06x}"
    invoice_id = driver.engine.query(GetOrder("m1", "o1")).record.invoice_id
    assert invoice_id == f"inv_{paying.sequence:012x}{1:06x}"
    assert msgspec.msgpack.decode(paid.data, type=Order).invoice_id == invoice_id  # the event shows its invoice
    # Webhook for both events, IPN and the receipt for the order's: each queued by a delivery.queued event.
    deliveries = {(d.event_id, d.channel, d.kind, d.target) for d in driver.deliveries()}
    assert deliveries == {(succeeded.id, "webhook", "event", HOOK), (paid.id, "webhook", "event", HOOK),
                          (paid.id, "ipn", "event", IPN), (paid.id, "email", "receipt", EMAIL)}
    assert {event.object_id for event in paying.events if event.kind == QUEUED} == {
        d.id for d in driver.deliveries()}
    assert all(d.status == "pending" and d.next_attempt_at == driver.now for d in driver.deliveries())
    # A later change of the object changes no event.
    driver.ok(CreateRefund(refund=Refund(id="re_1", merchant_id="m1", payment_id="p1", amount=500),
                           transfer_id="m1:re_1"))
    assert msgspec.msgpack.decode(driver.events(kind="order.paid")[0].data, type=Order).amount_refunded == 0
    assert [event.kind for event in driver.events()[:2]] == ["order.partially_refunded", "refund.succeeded"]
    refund_deliveries = driver.deliveries(event_id=driver.events(kind="refund.succeeded")[0].id)
    assert {(d.channel, d.kind) for d in refund_deliveries} == {("webhook", "event"), ("email", "refund_receipt")}


def test_internal_events_and_merchants_without_targets_make_no_deliveries():
    driver = shop()
    driver.paid_order("p2", "o2", mid="m2")  # m2 has no webhook; the order has an IPN URL and an e-mail
    assert [event.kind for event in driver.events("m2")] == ["order.paid", "payment.succeeded"]
    assert {d.channel for d in driver.deliveries("m2")} == {"ipn", "email"}
    assert driver.events("m1") == [] and driver.deliveries("m1") == []
    driver.ok(order("o3", ipn_url="", customer_email=""))
    driver.ok(CancelOrder("m1", "o3"))
    [cancelled] = driver.events(kind="order.cancelled")
    assert [(d.channel, d.event_id) for d in driver.deliveries()] == [("webhook", cancelled.id)]


def test_invoices_are_numbered_per_merchant_without_gaps():
    driver = shop()
    for index in range(5):
        driver.paid_order(f"p{index}", f"o{index}", mid="m1" if index % 2 == 0 else "m2")
    numbers = {mid: [invoice.number for invoice in driver.engine.query(ListInvoices(merchant_id=mid)).records]
               for mid in ("m1", "m2")}
    assert numbers == {"m1": [3, 2, 1], "m2": [2, 1]}
    invoice = driver.engine.query(ListInvoices(merchant_id="m1", order_id="o4")).records[0]
    assert (invoice.merchant_name, invoice.order_name, invoice.amount, invoice.currency, invoice.payment_id,
            invoice.payment_method, invoice.card_brand, invoice.card_last4) == (
        "Shop One", "Order o4", 1500, "usd", "p4", "card", "visa", "4242")
    assert driver.engine.query(GetInvoice("m2", invoice.id)).record is None  # another merchant's
    assert driver.engine.query(GetInvoice("m1", invoice.id)).record == invoice


def test_attempts_are_recorded_once_each_and_end_delivered_or_dead():
    driver = shop()
    driver.paid_order("p1", "o1")
    first, second = [d.id for d in driver.deliveries()][:2]
    recorded = driver.ok(RecordDeliveryAttempts([result(first, 1, "retry"), result(first, 1, "retry"),
                                                 result(second, 1, "delivered", status_code=200),
                                                 result("whd_unknown", 1, "delivered")]))
    assert recorded.results[0].count == 2  # the result sent again and the unknown delivery change nothing
    retried = driver.engine.query(GetDeliveryJobs([first])).jobs[0].delivery
    assert (retried.status, retried.attempt_count, retried.next_attempt_at) == ("pending", 1, T0 + 2 * S)
    assert (retried.attempts[0].status_code, retried.attempts[0].duration_ms) == (500, 12)
    driver.ok(RecordDeliveryAttempts([result(first, 2, "dead")]))
    assert [d.id for d in driver.deliveries(status="dead")] == [first]
    assert [d.id for d in driver.deliveries(status="delivered")] == [second]
    assert first not in {d.id for d in driver.engine.query(PendingDeliveries()).records}
    assert driver.do(RecordDeliveryAttempts([result(first, 3, "delivered")])).count == 0  # dead: no more attempts
    assert driver.do(RecordDeliveryAttempts([result(first, 3, "maybe")])).code == "result_invalid"


def test_a_delivery_keeps_its_latest_attempts_only():
    driver = shop()
    driver.paid_order("p1", "o1")
    delivery_id = driver.deliveries()[0].id
    total = MAX_ATTEMPTS_KEPT + 5
    driver.ok(RecordDeliveryAttempts([result(delivery_id, attempt, "retry", at=T0 + attempt)
                                      for attempt in range(1, total + 1)]))
    delivery = driver.engine.query(GetDeliveryJobs([delivery_id])).jobs[0].delivery
    assert delivery.attempt_count == total
    assert [attempt.attempted_at for attempt in delivery.attempts] == [T0 + n for n in range(6, total + 1)]


def test_redelivery_makes_new_deliveries_for_the_merchant_only():
    driver = shop()
    driver.paid_order("p1", "o1")
    paid = driver.events(kind="order.paid")[0]
    assert driver.do(RedeliverEvent("m2", paid.id)).code == "event_not_found"
    driver.ok(UpdateMerchant(merchant_id="m1", webhook_url="https://shop.example/new"))
    redelivered = driver.ok(RedeliverEvent("m1", paid.id))
    assert redelivered.results[0].count == 2
    new = [d for d in driver.deliveries(event_id=paid.id) if d.created_at == driver.now]
    assert {(d.channel, d.target) for d in new} == {("webhook", "https://shop.example/new"), ("ipn", IPN)}
    assert [event.object_id for event in redelivered.events] == [d.id for d in reversed(new)]
    for _ in range(notifications.MAX_REDELIVERIES - 1):
        driver.ok(RedeliverEvent("m1", paid.id))
    assert driver.do(RedeliverEvent("m1", paid.id)).code == "redelivery_limit_reached"


def test_replay_queues_dead_deliveries_again_by_merchant_and_time():
    driver = shop()
    driver.paid_order("p1", "o1")
    driver.paid_order("p2", "o2", mid="m2")
    dead = [d.id for d in driver.deliveries()] + [d.id for d in driver.deliveries("m2")]
    driver.ok(RecordDeliveryAttempts([result(delivery_id, 1, "dead") for delivery_id in dead]))
    made = {d.id: d.created_at for d in driver.deliveries() + driver.deliveries("m2")}
    first_made = min(made.values())
    outcome = driver.do(ReplayDeliveries(merchant_id="m1", created_gte=first_made, created_lt=first_made + 1,
                                         limit=1))
    assert (outcome.count, outcome.has_more) == (1, True)
    outcome = driver.do(ReplayDeliveries(merchant_id="m1"))
    assert (outcome.count, outcome.has_more) == (len(driver.deliveries()) - 1, False)
    assert {d.status for d in driver.deliveries()} == {"pending"}
    assert {d.status for d in driver.deliveries("m2")} == {"dead"}  # another merchant's stay
    replayed = driver.deliveries()[0]
    assert (replayed.replays, replayed.queued_after_attempts, replayed.attempt_count) == (1, 1, 1)
    assert driver.do(ReplayDeliveries()).count == len(driver.deliveries("m2"))  # an operator: every merchant's
    assert driver.do(ReplayDeliveries(limit=0)).code == "limit_invalid"


def test_lists_page_newest_first_with_filters():
    driver = shop()
    for index in range(3):
        driver.paid_order(f"p{index}", f"o{index}")
    events = driver.events()
    assert [event.created_at for event in events] == sorted((event.created_at for event in events), reverse=True)
    page = driver.engine.query(ListEvents(merchant_id="m1", limit=2))
    rest = driver.engine.query(ListEvents(merchant_id="m1", limit=100, starting_after=page.records[-1].id))
    assert page.has_more and page.records + rest.records == events
    assert [e.object_id for e in driver.events(object_id="o1")] == ["o1"]
    assert [e.kind for e in driver.events(kind="payment.succeeded")] == ["payment.succeeded"] * 3
    assert driver.engine.query(GetEvent("m2", events[0].id)).record is None
    assert driver.engine.query(ListEvents(merchant_id="m1", starting_after="evt_nothing")).records == []


def test_pending_deliveries_come_in_the_order_queued_past_a_cursor():
    driver = shop()
    for index in range(3):
        driver.paid_order(f"p{index}", f"o{index}")
    every = driver.engine.query(PendingDeliveries(limit=1000)).records
    assert [d.queue_position for d in every] == sorted(d.queue_position for d in every)
    first = driver.engine.query(PendingDeliveries(limit=3))
    driver.ok(RecordDeliveryAttempts([result(first.records[-1].id, 1, "delivered", 200)]))
    rest = driver.engine.query(PendingDeliveries(starting_after=first.records[-1].id, limit=1000)).records
    assert first.has_more and first.records + rest == every


def test_paging_the_pending_deliveries_looks_at_each_about_once(monkeypatch):
    """A page starts where the last ended, found by bisection: paging one by one through n pending deliveries looks
    at each a bounded number of times (a scan from the start per page looked n * n / 2 times)."""
    looked = []
    queued_at = notifications.Notifications._queued_at
    monkeypatch.setattr(notifications.Notifications, "_queued_at",
                        lambda self, delivery_id: looked.append(delivery_id) or queued_at(self, delivery_id))
    driver = shop()
    for index in range(40):
        driver.paid_order(f"p{index}", f"o{index}")
    every = driver.engine.query(PendingDeliveries(limit=1000)).records
    # Every other one delivered: their entries are left behind, skipped, then packed away.
    driver.ok(RecordDeliveryAttempts([result(d.id, 1, "delivered", 200) for d in every[::2]]))
    queue = driver.engine.commerce.notifications.queue
    assert len(queue.entries[""]) <= 2 * len(every[1::2]) + 1
    looked.clear()
    paged, after = [], ""
    while True:
        answer = driver.engine.query(PendingDeliveries(starting_after=after, limit=1))
        paged += answer.records
        if not answer.has_more:
            break
        after = answer.records[-1].id
    assert paged == every[1::2] and len(every) == 160
    assert len(looked) <= 3 * len(every), len(looked)


def test_a_delivery_queued_again_is_paged_once_in_its_new_place():
    driver = shop()
    driver.paid_order("p1", "o1")
    first, *others = driver.engine.query(PendingDeliveries()).records
    driver.ok(RecordDeliveryAttempts([result(first.id, 1, "dead")]))
    driver.ok(ReplayDeliveries(merchant_id="m1"))
    again = driver.engine.query(PendingDeliveries()).records
    assert [d.id for d in again] == [d.id for d in others] + [first.id]
    assert [d.id for d in driver.engine.query(PendingDeliveries(starting_after=others[-1].id)).records] == [first.id]


def test_jobs_carry_what_sending_takes():
    driver = shop()
    driver.paid_order("p1", "o1")
    driver.ok(CreateRefund(refund=Refund(id="re_1", merchant_id="m1", payment_id="p1", amount=0),
                           transfer_id="m1:re_1"))
    by_kind = {d.kind: d.id for d in driver.deliveries()}
    receipt, refund_receipt, event = driver.engine.query(GetDeliveryJobs(
        [by_kind["receipt"], by_kind["refund_receipt"], by_kind["event"], "whd_unknown"])).jobs
    assert (receipt.order.id, receipt.invoice.order_id, receipt.payment.id, receipt.merchant.id) == (
        "o1", "o1", "p1", "m1")
    assert (refund_receipt.refund.id, refund_receipt.order.id, refund_receipt.invoice.number) == ("re_1", "o1", 1)
    assert (event.order, event.invoice, event.merchant.webhook_url) == (None, None, HOOK)


def run_all(engine: Engine) -> Shop:
    driver = Shop(engine, now=T0)
    driver.ok(CreateMerchant(Merchant(id="m1", name="Shop One", email="m1@example.com", webhook_url=HOOK)))
    for index in range(4):
        driver.paid_order(f"p{index}", f"o{index}")
    dead = driver.deliveries()[0].id
    driver.ok(RecordDeliveryAttempts([result(dead, 1, "dead")]))
    driver.ok(ReplayDeliveries(merchant_id="m1"), RedeliverEvent("m1", driver.events()[0].id))
    return driver


def test_replay_gives_the_same_events_ids_and_state_hash():
    first, second = run_all(Engine()), run_all(Engine())
    assert first.events() == second.events() and first.deliveries() == second.deliveries()
    assert first.engine.state_hash() == second.engine.state_hash()
    restored = Engine.restore(first.engine.snapshot())
    assert restored.state_hash() == first.engine.state_hash()
    assert restored.snapshot() == first.engine.snapshot()
    assert restored.query(PendingDeliveries()).records == first.engine.query(PendingDeliveries()).records


def test_a_command_that_raises_after_storing_events_leaves_none(monkeypatch):
    driver = shop()
    driver.ok(order("o1"))
    driver.ok(*pay("p1", "o1")[0])
    before = driver.engine.state_hash()
    record = notifications.Notifications.record

    def record_then_raise(self, first, timestamp):
        record(self, first, timestamp)
        if self.records:
            raise RuntimeError("stored, then raised")
    monkeypatch.setattr(notifications.Notifications, "record", record_then_raise)
    outcome = driver.do(pay("p1", "o1")[1][0])
    assert outcome.code == "internal_error"
    assert driver.engine.state_hash() == before
    assert driver.events() == [] and driver.deliveries() == []
    assert driver.engine.query(ListInvoices(merchant_id="m1")).records == []
    assert driver.engine.query(GetOrder("m1", "o1")).record.invoice_id == ""


def test_events_past_the_cap_are_dropped_oldest_first_but_not_while_a_delivery_is_pending(monkeypatch):
    monkeypatch.setattr(notifications, "MAX_EVENTS", 4)
    monkeypatch.setattr(notifications, "PRUNE_BATCH", 1)
    driver = shop()

    def deliver_all_but(kept_id: str = "") -> None:
        pending = driver.engine.query(PendingDeliveries()).records
        driver.ok(RecordDeliveryAttempts([result(d.id, 1, "delivered", 200) for d in pending
                                          if d.event_id != kept_id]))
    driver.paid_order("p0", "o0")
    kept = driver.events()[-1]  # p0's payment.succeeded: its webhook delivery stays pending
    deliver_all_but(kept.id)
    for index in range(1, 4):
        driver.paid_order(f"p{index}", f"o{index}")
        deliver_all_but(kept.id)
    ids = [event.id for event in driver.events()]
    assert len(ids) == 4 and kept.id in ids  # the oldest, still being delivered, is kept in a newer one's place
    assert driver.engine.query(GetEvent("m1", kept.id)).record == kept
    assert {d.event_id for d in driver.deliveries()} == set(ids)  # the deliveries of dropped events went with them
    deliver_all_but()
    driver.paid_order("p9", "o9")
    assert kept.id not in {event.id for event in driver.events()}
    assert len(driver.events()) == 4
    # Pending everywhere (p9's and p10's): nothing can go, and the cap gives way rather than lose a delivery.
    driver.paid_order("p10", "o10")
    assert len(driver.events()) == 4
    driver.paid_order("p11", "o11")
    assert len(driver.events()) == 6


def test_events_are_pruned_a_batch_at_a_time_and_leave_for_the_cold_store(monkeypatch):
    monkeypatch.setattr(notifications, "MAX_EVENTS", 4)
    monkeypatch.setattr(notifications, "PRUNE_BATCH", 3)
    driver = shop()
    left = []  # what each batch handed the cold store
    run = driver.run

    def run_keeping(*commands, at=None):
        answered = run(*commands, at=at)
        left.extend(driver.engine.archived)
        return answered
    driver.run = run_keeping
    for index in range(8):
        driver.paid_order(f"p{index}", f"o{index}")
        pending = driver.engine.query(PendingDeliveries()).records
        driver.ok(RecordDeliveryAttempts([result(d.id, 1, "delivered", 200) for d in pending]))
        assert len(driver.engine.commerce.notifications.records) < 4 + 3
    events = [event for archived in left for event in archived.events]
    deliveries = [delivery for archived in left for delivery in archived.deliveries]
    assert len(events) >= 8 and not {event.id for event in events} & {event.id for event in driver.events()}
    assert {delivery.event_id for delivery in deliveries} <= {event.id for event in events}
    assert {delivery.status for delivery in deliveries} == {"delivered"}


def test_a_delivery_beyond_the_pending_cap_is_made_dead_untried(monkeypatch):
    monkeypatch.setattr(notifications, "MAX_PENDING_DELIVERIES", 3)
    driver = shop()
    driver.paid_order("p0", "o0")  # 4 deliveries: the last one made finds the queue full
    [dead] = driver.deliveries(status="dead")
    assert (dead.dead_reason, dead.attempts, dead.next_attempt_at) == (BACKLOG_FULL, [], 0)
    assert len(driver.engine.query(PendingDeliveries()).records) == 3
    assert driver.do(ReplayDeliveries(merchant_id="m1")).code == BACKLOG_FULL
    assert driver.do(RedeliverEvent("m1", driver.events()[0].id)).code == BACKLOG_FULL
    pending = driver.engine.query(PendingDeliveries()).records
    driver.ok(RecordDeliveryAttempts([result(pending[0].id, 1, "delivered", 200)]))
    assert driver.do(ReplayDeliveries(merchant_id="m1")).code == BACKLOG_FULL  # a merchant's: half the queue at most
    assert driver.do(ReplayDeliveries(merchant_id="")).count == 1  # an operator's: all of it


def test_one_merchants_new_deliveries_take_at_most_its_share_of_the_queue(monkeypatch):
    monkeypatch.setattr(notifications, "MAX_PENDING_DELIVERIES", 8)
    monkeypatch.setattr(notifications, "MAX_PENDING_PER_MERCHANT", 4)
    driver = shop()
    driver.paid_order("p0", "o0")
    driver.paid_order("p1", "o1")  # m1's endpoints never answer: its second order's deliveries find its share full
    assert [d.dead_reason for d in driver.deliveries(status="dead")] == [BACKLOG_FULL] * 4
    driver.paid_order("p2", "o2", mid="m2")  # the rest of the queue is there for the other merchants' events
    assert driver.deliveries("m2", status="dead") == []
    assert len(driver.engine.query(PendingDeliveries()).records) == 6
    pending = [d for d in driver.engine.query(PendingDeliveries()).records if d.merchant_id == "m1"]
    driver.ok(RecordDeliveryAttempts([result(pending[0].id, 1, "delivered", 200)]))
    driver.paid_order("p3", "o3")  # one of m1's delivered: room for one more of its own
    assert len(driver.deliveries(status="dead")) == 4 + 3


def test_a_merchants_redeliveries_leave_half_the_queue_to_new_events(monkeypatch):
    monkeypatch.setattr(notifications, "MAX_PENDING_DELIVERIES", 8)
    driver = shop()
    driver.paid_order("p0", "o0")
    pending = driver.engine.query(PendingDeliveries()).records
    driver.ok(RecordDeliveryAttempts([result(d.id, 1, "delivered", 200) for d in pending]))
    paid = driver.events(kind="order.paid")[0]
    assert [driver.do(RedeliverEvent("m1", paid.id)).code for _ in range(3)] == ["ok", "ok", BACKLOG_FULL]
    driver.paid_order("p1", "o1")  # its four deliveries find room
    assert driver.deliveries(status="dead") == []
    assert len(driver.engine.query(PendingDeliveries()).records) == 8


def test_deliveries_made_dead_untried_in_one_command_each_have_their_own_id(monkeypatch):
    monkeypatch.setattr(notifications, "MAX_PENDING_DELIVERIES", 1)
    monkeypatch.setattr(notifications, "MAX_EVENTS", 2)
    monkeypatch.setattr(notifications, "PRUNE_BATCH", 1)
    driver = shop()
    driver.paid_order("p0", "o0")  # the payment's webhook fills the queue; the order's webhook, IPN and receipt not
    dead = driver.deliveries(status="dead")
    assert len(dead) == 3 and len({d.id for d in dead}) == 3
    assert {(d.channel, d.kind) for d in dead} == {("webhook", "event"), ("ipn", "event"), ("email", "receipt")}
    [pending] = driver.engine.query(PendingDeliveries()).records
    driver.ok(RecordDeliveryAttempts([result(pending.id, 1, "delivered", 200)]))
    driver.paid_order("p1", "o1")  # the first order's events are dropped, with all their deliveries
    assert {d.event_id for d in driver.deliveries()} == {event.id for event in driver.events()}


def test_a_replay_looks_only_at_the_merchants_own_dead_deliveries_that_may_go_again(monkeypatch):
    monkeypatch.setattr(notifications, "MAX_REPLAYS", 1)
    driver = shop()
    driver.paid_order("p1", "o1")
    dead = [d.id for d in driver.deliveries()]
    driver.ok(RecordDeliveryAttempts([result(delivery_id, 1, "dead") for delivery_id in dead]))
    looked: list[str] = []

    def counting_peek(tracked, key):
        looked.append(key)
        return dict.get(tracked, key)
    monkeypatch.setattr(notifications, "peek", counting_peek)
    assert driver.do(ReplayDeliveries(merchant_id="m2")).count == 0
    assert not set(looked) & set(dead)  # another merchant's dead deliveries cost this merchant's replay nothing
    assert driver.do(ReplayDeliveries(merchant_id="m1")).count == len(dead)
    driver.ok(RecordDeliveryAttempts([result(delivery_id, 2, "dead") for delivery_id in dead]))
    looked.clear()
    assert driver.do(ReplayDeliveries(merchant_id="m1")).count == 0  # replayed as often as may be: not looked at
    assert not set(looked) & set(dead)
    assert driver.engine.commerce.notifications.replayable == {}


def test_a_replayed_webhook_delivery_goes_to_the_webhook_url_as_it_is_now():
    driver = shop()
    driver.paid_order("p1", "o1")
    dead = driver.deliveries()
    driver.ok(RecordDeliveryAttempts([result(d.id, 1, "dead") for d in dead]))
    moved = "https://shop.example/new-hook"
    driver.ok(UpdateMerchant(merchant_id="m1", webhook_url=moved))
    assert driver.do(ReplayDeliveries(merchant_id="m1")).count == len(dead)
    assert {(d.channel, d.target) for d in driver.deliveries()} == {
        ("webhook", moved), ("ipn", IPN), ("email", EMAIL)}
    pending = driver.engine.query(PendingDeliveries()).records
    driver.ok(RecordDeliveryAttempts([result(d.id, 2, "dead") for d in pending]))
    driver.ok(UpdateMerchant(merchant_id="m1", webhook_url=""))
    assert driver.do(ReplayDeliveries(merchant_id="m1")).count == 2  # the IPN and the receipt; no webhook now
    assert {d.channel for d in driver.deliveries(status="dead")} == {"webhook"}


def test_pending_webhooks_follow_a_new_webhook_url_from_their_next_attempt():
    driver = shop()
    driver.paid_order("p1", "o1")
    webhooks = [d for d in driver.engine.query(PendingDeliveries()).records if d.channel == "webhook"]
    driver.ok(RecordDeliveryAttempts([result(d.id, 1, "retry") for d in webhooks]))
    moved = "https://shop.example/new-hook"
    update = driver.ok(UpdateMerchant(merchant_id="m1", webhook_url=moved))
    assert [(event.kind, event.object_id) for event in update.events] == [(WEBHOOK_MOVED, "m1")]
    jobs = driver.engine.query(GetDeliveryJobs([d.id for d in webhooks])).jobs
    assert {(job.delivery.target, job.delivery.status, job.delivery.attempt_count) for job in jobs} == {
        (moved, "pending", 1)}
    assert [d.id for d in driver.engine.query(PendingDeliveries()).records if d.channel == "webhook"] == [
        d.id for d in webhooks]  # in their place, on their schedule
    assert {(d.channel, d.target) for d in driver.deliveries() if d.channel != "webhook"} == {
        ("ipn", IPN), ("email", EMAIL)}
    # The same URL again moves nothing; a delivery already ended keeps the URL it went to.
    assert driver.ok(UpdateMerchant(merchant_id="m1", webhook_url=moved)).events == []
    driver.ok(RecordDeliveryAttempts([result(webhooks[0].id, 2, "delivered", 200)]))
    third = "https://shop.example/third"
    driver.ok(UpdateMerchant(merchant_id="m1", webhook_url=third))
    targets = {d.id: (d.status, d.target) for d in driver.deliveries()}
    assert [targets[d.id] for d in webhooks] == [("delivered", moved), ("pending", third)]


def test_pending_webhooks_die_when_the_webhook_url_is_removed():
    driver = shop()
    driver.paid_order("p1", "o1")
    update = driver.ok(UpdateMerchant(merchant_id="m1", webhook_url=""))
    assert [event.kind for event in update.events] == [WEBHOOK_MOVED]
    webhooks = driver.deliveries(status="dead")
    assert {(d.channel, d.dead_reason, d.target) for d in webhooks} == {("webhook", NO_WEBHOOK_URL, HOOK)}
    assert len(webhooks) == 2
    assert {d.channel for d in driver.engine.query(PendingDeliveries()).records} == {"ipn", "email"}
    assert driver.do(ReplayDeliveries(merchant_id="m1")).count == 0  # no webhook now: they stay dead


def test_an_archived_event_is_redelivered_when_the_command_carries_it_and_its_dead_letters_are_beyond_replay():
    driver = shop()
    driver.paid_order("p1", "o1")
    paid = driver.events(kind="order.paid")[0]
    driver.ok(RecordDeliveryAttempts([result(d.id, 1, "dead") for d in driver.deliveries()]))
    driver.run(at=driver.now + 86_400 * S)
    archived = driver.do(Archive(86_400)).record
    cold = {event.id: event for event in archived.events}[paid.id]
    assert paid.id not in driver.engine.commerce.notifications.records and archived.deliveries
    assert driver.do(RedeliverEvent("m1", paid.id)).code == "event_not_found"
    # The archived dead letters are the cold store's: a replay, which looks at memory's, queues none of them.
    assert (driver.do(ReplayDeliveries(merchant_id="m1")).count, driver.do(ReplayDeliveries()).count) == (0, 0)
    assert driver.do(RedeliverEvent("m2", paid.id, cold)).code == "event_not_found"  # not the merchant's
    command = RedeliverEvent("m1", paid.id, cold)
    copy, journaled = driver.restored(), msgspec.msgpack.encode(command)
    redelivered = driver.ok(command)
    assert redelivered.results[0].count == 2
    new = driver.deliveries(event_id=paid.id)  # memory's: the new ones only, the cold store has the others
    assert {(d.channel, d.target, d.status) for d in new} == {("webhook", HOOK, "pending"), ("ipn", IPN, "pending")}
    assert driver.query(GetEvent("m1", paid.id)).record.redeliveries == 1
    assert paid.id not in [event.id for event in driver.events()]  # listed by the cold store only, in its place
    copy.run(msgspec.msgpack.decode(journaled, type=RedeliverEvent), at=driver.now)
    assert copy.engine.state_hash() == driver.engine.state_hash()
    restored = driver.restored()
    assert restored.engine.state_hash() == driver.engine.state_hash()
    assert driver.do(RedeliverEvent("m1", paid.id, cold)).count == 2  # memory's copy counts, not the carried one
    assert driver.query(GetEvent("m1", paid.id)).record.redeliveries == 2
    driver.ok(RecordDeliveryAttempts([result(d.id, 1, "delivered", 200) for d in driver.deliveries(event_id=paid.id)]))
    driver.run(at=driver.now + 86_400 * S)
    again = driver.do(Archive(86_400)).record
    assert [event.redeliveries for event in again.events if event.id == paid.id] == [2]
    assert {d.event_id for d in again.deliveries} == {paid.id} and len(again.deliveries) == 4
    assert paid.id not in driver.engine.commerce.notifications.unlisted
