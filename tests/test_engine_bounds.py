"""Every collection the engine keeps has a bound or an expiry, and each test here reaches one.

Failed transfer ids (a day, a count), idempotency keys (24 h of engine time, a count), remembered callback
signatures, per-IP order windows, vaulted cards (their expiry month), a payment's callbacks, a merchant's dashboard
users; and the expiry queues and list pages are indexed, so an expiry moved or dropped leaves at most as many stale
entries as live ones, and a page after an id starts at that id.
"""

import msgspec
import pytest

import engine.idempotency
import engine.ip_windows
import engine.ledger
import engine.payments
from engine import Account, AccountFlag, CreateAccounts, CreateTransfers, Engine, Transfer, TransferCode
from engine import TransferFlag as F
from engine.machine import Snapshot
from engine.changes import Changes
from engine.listing import Listing
from engine.merchants import MAX_DASHBOARD_USERS
from engine.payments import CALLBACK_REPLAY_WINDOW_NS, MAX_CALLBACKS_PER_PAYMENT, card_expires_at
from engine.queries import GetCard, ListOrders
from engine.records import (
    AddDashboardUser,
    AdmitOrderIp,
    CardDetails,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    DashboardUser,
    Idempotent,
    Merchant,
    Order,
    Payment,
    RecordPspResult,
    UpdateOrder,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S  # 2023-11-14
DAY = 86400 * S


@pytest.fixture
def book() -> Driver:
    driver = Driver(now=T0)
    driver.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")))
    driver.run(CreateAccounts([Account("a", "usd"), Account("b", "usd"),
                               Account("limited", "usd", flags=AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS)]))
    return driver


def overdraw(tid: str) -> CreateTransfers:
    """A transfer the ledger refuses on its state (exceeds_credits): its id is spent."""
    return CreateTransfers([Transfer(tid, "limited", "a", 1, "usd")])


def order(oid: str, expires_in_s: int = 3600) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id="m1", name=oid, amount=100, currency="USD",
                                   payment_methods=["card"]), expires_in_s=expires_in_s)


def card_payment(pid: str, exp_month: int = 12, exp_year: int = 2030) -> CreatePayment:
    return CreatePayment(payment=Payment(id=pid, merchant_id="m1", amount=100, currency="USD", token_id=f"tok_{pid}",
                                         card=CardDetails("visa", "4242", exp_month, exp_year)),
                         sealed_card=b"sealed", processing_timeout_s=0)


# Failed transfer ids


def test_a_failed_id_is_spent_for_a_day_of_engine_time_then_forgotten(book: Driver):
    assert book.do(overdraw("t1")) == [TransferCode.exceeds_credits]
    spent_at = book.now
    assert book.engine.ledger.failed_ids == {"t1": spent_at}
    book.run(at=spent_at + DAY - 2 * S)  # the next batch comes a second later: still within the day
    assert book.do(CreateTransfers([Transfer("t1", "a", "b", 1, "usd")])) == [TransferCode.id_already_failed]
    book.run(at=spent_at + DAY)
    assert book.engine.ledger.failed_ids == {}
    assert book.do(CreateTransfers([Transfer("t1", "a", "b", 1, "usd")])) == [0]


def test_at_most_so_many_failed_ids_are_kept_the_oldest_forgotten_first(book: Driver, monkeypatch):
    monkeypatch.setattr(engine.ledger, "MAX_FAILED_IDS", 3)
    for number in range(5):
        book.do(overdraw(f"t{number}"))
    assert list(book.engine.ledger.failed_ids) == ["t2", "t3", "t4"]
    restored = book.restored()
    assert restored.engine.ledger.failed_ids == book.engine.ledger.failed_ids
    assert restored.engine.state_hash() == book.engine.state_hash()


def test_failed_ids_a_command_forgot_come_back_when_it_is_undone(book: Driver, monkeypatch):
    monkeypatch.setattr(engine.ledger, "MAX_FAILED_IDS", 2)
    book.do(overdraw("t0"))
    book.do(overdraw("t1"))
    ledger = book.engine.ledger
    ledger.begin_command()
    assert ledger.create_transfers([Transfer("t2", "limited", "a", 1, "usd")], book.now) == [TransferCode.exceeds_credits]
    assert list(ledger.failed_ids) == ["t1", "t2"]
    ledger.undo_command()
    assert list(ledger.failed_ids) == ["t0", "t1"]


def test_an_older_snapshot_of_failed_ids_without_their_times_restores_them_as_spent_then(book: Driver):
    book.do(overdraw("t1"))
    snapshot = msgspec.msgpack.decode(book.engine.snapshot(), type=Snapshot)
    # As written before failed ids had times: failed_ids listed, and no field after `signatures`.
    snapshot.failed_ids, snapshot.failed_ids_at = ["t1", "t0"], []
    fields = list(msgspec.structs.astuple(snapshot))
    old = msgspec.msgpack.encode(fields[:Snapshot.__struct_fields__.index("failed_ids_at")])
    restored = Driver(Engine.restore(old), book.now)
    assert restored.engine.ledger.failed_ids == {"t1": book.now, "t0": book.now}
    assert restored.do(CreateTransfers([Transfer("t0", "a", "b", 1, "usd")])) == [TransferCode.id_already_failed]
    restored.run(at=book.now + DAY)
    assert restored.engine.ledger.failed_ids == {}


# Idempotency keys


def keyed(key: str, oid: str) -> Idempotent:
    return Idempotent(merchant_id="m1", key=key, request_hash=f"h-{oid}", command=order(oid))


def test_idempotency_keys_live_24_hours_of_engine_time(book: Driver):
    book.ok(keyed("k1", "o1"))
    kept_at = book.now
    assert book.do(keyed("k1", "o1"), at=kept_at + DAY - S).replayed
    book.run(at=kept_at + DAY)
    assert book.engine.commerce.idempotency.records == {}


def test_no_more_keys_than_the_bound_are_kept_and_a_new_one_past_it_is_refused_for_now(book: Driver, monkeypatch):
    monkeypatch.setattr(engine.idempotency, "MAX_IDEMPOTENCY_KEYS", 2)
    book.ok(keyed("k1", "o1"), keyed("k2", "o2"))
    book.refused(keyed("k3", "o3"), "idempotency_keys_full")
    assert book.do(keyed("k1", "o1")).replayed  # the keys kept still answer
    book.run(at=book.now + DAY)  # once they are forgotten, a new key is taken again, the refused one too
    assert book.do(keyed("k3", "o3")).code == "ok"


# Callback signatures, per-IP windows, a payment's callbacks, dashboard users


def test_callback_signatures_are_remembered_for_the_replay_window_and_at_most_so_many(book: Driver, monkeypatch):
    monkeypatch.setattr(engine.payments, "MAX_CALLBACK_SIGNATURES", 3)
    payments = book.engine.commerce.payments
    book.ok(card_payment("p1"))
    for number in range(5):
        book.do(RecordPspResult(merchant_id="m1", payment_id="p1", callback_id=f"cb{number}", result="requires_action",
                                signature=f"sig{number}"))
    assert len(payments.callback_signatures) == 3
    book.run(at=book.now + CALLBACK_REPLAY_WINDOW_NS + S)
    book.do(RecordPspResult(merchant_id="m1", payment_id="p1", callback_id="cb9", result="requires_action",
                            signature="sig9"))
    assert list(payments.callback_signatures) == ["sig9"]


def test_callback_signatures_past_the_window_are_forgotten_a_batch_at_a_time_and_taken_anew(book: Driver,
                                                                                           monkeypatch):
    monkeypatch.setattr(engine.payments, "SIGNATURE_PRUNE_BATCH", 4)
    payments = book.engine.commerce.payments

    def callback(number: int, signature: str) -> str:
        return book.do(RecordPspResult(merchant_id="m1", payment_id="p1", callback_id=f"cb{number}",
                                       result="requires_action", signature=signature)).code
    book.ok(card_payment("p1"))
    assert [callback(number, f"sig{number}") for number in range(3)] == ["ok"] * 3
    book.run(at=book.now + CALLBACK_REPLAY_WINDOW_NS + S)
    assert callback(3, "sig3") == "ok"
    assert list(payments.callback_signatures) == ["sig0", "sig1", "sig2", "sig3"]  # no walk yet
    assert callback(4, "sig1") == "ok"  # seen before the window: new again, at the end
    assert list(payments.callback_signatures) == ["sig0", "sig2", "sig3", "sig1"]
    assert callback(5, "sig5") == "ok"  # four remembered: a walk first forgets those seen before the window
    assert list(payments.callback_signatures) == ["sig3", "sig1", "sig5"]
    assert callback(6, "sig1") == "callback_replayed"


def test_a_payment_takes_at_most_so_many_callbacks(book: Driver):
    book.ok(card_payment("p1"))
    for number in range(MAX_CALLBACKS_PER_PAYMENT):
        book.ok(RecordPspResult(merchant_id="m1", payment_id="p1", callback_id=f"cb{number}",
                                result="requires_action"))
    book.refused(RecordPspResult(merchant_id="m1", payment_id="p1", callback_id="one-more", result="authorized"),
                 "too_many_callbacks")


def test_per_ip_windows_are_forgotten_when_idle_and_at_most_so_many_are_kept(book: Driver, monkeypatch):
    monkeypatch.setattr(engine.ip_windows, "MAX_IP_WINDOWS", 3)
    windows = book.engine.commerce.ip_windows.times_by_ip
    for number in range(5):
        book.ok(AdmitOrderIp(client_ip=f"10.0.0.{number}", ip_limit=5, ip_window_s=600))
    assert list(windows) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    for number in range(2):
        book.ok(AdmitOrderIp(client_ip=f"10.0.1.{number}", ip_limit=5, ip_window_s=600), at=book.now + 601 * S)
    assert len(windows) <= 3 and "10.0.1.1" in windows


def test_a_merchant_has_at_most_so_many_dashboard_users(book: Driver):
    book.ok(*(AddDashboardUser("m1", DashboardUser(f"user{number}@example.com", "hash"))
              for number in range(MAX_DASHBOARD_USERS)))
    book.refused(AddDashboardUser("m1", DashboardUser("one-more@example.com", "hash")), "dashboard_user_limit_reached")
    book.ok(AddDashboardUser("m1", DashboardUser("user0@example.com", "new-hash")))  # a password set anew still is


# Vaulted cards


def test_a_vaulted_card_is_forgotten_when_its_expiry_month_ends(book: Driver):
    book.ok(card_payment("p1", exp_month=12, exp_year=2023), card_payment("p2", exp_month=1, exp_year=2024))
    assert card_expires_at(CardDetails("visa", "4242", 12, 2023)) == 1_704_067_200 * S  # 2024-01-01T00:00:00Z
    book.run(at=1_704_067_200 * S)
    assert book.query(GetCard("m1", "tok_p1")).card is None
    assert book.query(GetCard("m1", "tok_p2")).card is not None
    assert book.restored().engine.state_hash() == book.engine.state_hash()


# Expiry queues


def test_pending_transfers_voided_or_undone_leave_at_most_as_many_stale_expiries_as_live_ones(book: Driver, monkeypatch):
    monkeypatch.setattr(engine.ledger, "MIN_SWEEP_EXPIRIES", 8)
    ledger = book.engine.ledger
    ledger.expiries_sweep_at = 8
    book.do(CreateTransfers([Transfer("keep", "a", "b", 1, "usd", flags=F.PENDING, timeout_s=10**9)]))
    kept_until = book.now + 10**9 * S
    for number in range(100):
        book.do(CreateTransfers([Transfer(f"h{number}", "a", "b", 1, "usd", flags=F.PENDING, timeout_s=10**9),
                                 Transfer(f"v{number}", pending_id=f"h{number}", flags=F.VOID_PENDING)]))
        # a failed chain undoes its pending transfer: its expiry entry stays behind, stale
        book.do(CreateTransfers([Transfer(f"c{number}", "a", "b", 1, "usd", flags=F.PENDING | F.LINKED,
                                          timeout_s=10**9),
                                 Transfer(f"x{number}", "limited", "a", 1, "usd")]))
        assert len(ledger.expiries) <= 8 + 2
    assert ledger.live_expiries() == [(kept_until, "keep")]
    assert Engine.restore(book.engine.snapshot()).ledger.expiries == ledger.live_expiries()


def test_an_order_whose_expiry_moves_again_and_again_keeps_a_bounded_queue_and_expires_once(book: Driver):
    book.ok(order("o1"))
    expiries = book.engine.commerce.orders.expiries
    for number in range(5000):
        book.ok(UpdateOrder(merchant_id="m1", order_id="o1", expires_in_s=3600 + number % 7))
    assert len(expiries.heap) <= 2048
    events = book.run(at=book.now + 3601 * S).events
    events += book.run(at=book.now + 3600 * S).events
    assert [(event.kind, event.object_id) for event in events] == [("order.expired", "o1")]
    assert len(expiries) == 0


# List pages


def test_a_page_after_an_id_starts_at_that_id_for_its_merchant_only(book: Driver):
    book.ok(CreateMerchant(Merchant(id="m2", name="Other", email="m2@example.com")))
    book.ok(*(order(f"o{number}") for number in range(10)))
    book.ok(CreateOrder(order=Order(id="x1", merchant_id="m2", name="x1", amount=1, currency="USD")))
    page = book.query(ListOrders(merchant_id="m1", limit=3, starting_after="o5"))
    assert ([order.id for order in page.records], page.has_more) == (["o4", "o3", "o2"], True)
    assert book.query(ListOrders(merchant_id="m1", starting_after="x1")).records == []


def test_a_listing_skips_removed_ids_packs_its_lists_and_is_undone_whole():
    changes = Changes()
    listing = Listing(changes)
    for number in range(200):
        listing.add("m1", f"i{number}")
    for number in range(0, 190):
        listing.remove("m1", f"i{number}")
    assert list(listing.newest_first("m1")) == [f"i{number}" for number in range(199, 189, -1)]
    assert len(listing.ids["m1"]) <= 64
    changes.begin()
    listing.add("m1", "new")
    for number in range(190, 200):
        listing.remove("m1", f"i{number}")
    assert list(listing.newest_first("m1")) == ["new"]
    changes.undo()
    assert list(listing.newest_first("m1", starting_after="i195")) == [f"i{number}" for number in range(194, 189, -1)]
    assert listing.count("m1") == 10 and "new" not in listing.places
