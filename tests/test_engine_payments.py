"""Payments, refunds and payouts: the engine's state machines whose money moves are ledger transfers.

Every command is built fresh for each submission (the engine takes ownership of
what it is given). Every test runs on a `Gateway`: an engine holding merchants
m1 and m2 and m1's pending order o1 (amount 100 USD, card or wallet), with a
clock that moves one second per batch unless told otherwise. Every engine a
test builds is verified after it.

Money is read from two of a merchant's system accounts: its balance (credited
by a capture) and its acquirer clearing account (debited by it).
"""

from collections.abc import Callable

import msgspec
import pytest

from engine import merchants
from engine.payments import CALLBACK_REPLAY_WINDOW_NS, HOLDS_MONEY, MIRRORS_INFLOW
from engine.states import PAYMENT_STATUSES
from engine.queries import GetMerchant, GetOrder, GetPaymentRecord, ListPayments, LookupAccounts
from engine.records import (
    CancelOrder,
    CreateCustomer,
    Customer,
    MoveWallet,
    PayOrderFromWallet,
    UpdateOrder,
    CreateSubAccount,
    Split,
    SubAccount,
    CancelPayment,
    CapturePayment,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    Merchant,
    Order,
    Payment,
    Payout,
    ReceiveBankTransfer,
    RecordPayoutResult,
    RecordPspResult,
    Refund,
    system_account_id,
    wallet_account_id,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from engine.types import AMOUNT_MAX, AccountFlag, Event
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S
FAR = T0 + 10**6 * S  # default order expiry: later than any test's clock
AMOUNT = 100  # o1's amount

# Builders: a fresh object on every call


def order(oid: str, mid: str = "m1", amount: int = AMOUNT, *, methods=("card", "wallet"), expires_at: int = FAR,
          splits: tuple[Split, ...] = ()) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id=mid, name=f"Order {oid}", amount=amount, currency="USD",
                                   payment_methods=list(methods), expires_at=expires_at, splits=list(splits)))


def create(pid: str, mid: str = "m1", *, order_id: str = "o1", amount: int = 1, currency: str = "EUR",
           method: str = "card", manual: bool = False, timeout_s: int = 30) -> CreatePayment:
    """A payment; for an order, the submitted amount and currency are to be replaced by the order's."""
    payment = Payment(id=pid, merchant_id=mid, amount=amount, currency=currency, order_id=order_id, method=method,
                      capture_method="manual" if manual else "automatic")
    return CreatePayment(payment=payment, processing_timeout_s=timeout_s)


def psp(pid: str, cb: str = "cb1", result: str = "authorized", mid: str = "m1", **fields) -> RecordPspResult:
    return RecordPspResult(merchant_id=mid, payment_id=pid, callback_id=cb, result=result,
                           transfer_id=f"{mid}:auth-{pid}-{cb}", **fields)


def capture(pid: str, amount: int = 0, mid: str = "m1", tid: str = "") -> CapturePayment:
    return CapturePayment(merchant_id=mid, payment_id=pid, transfer_id=tid or f"{mid}:cap-{pid}", amount=amount)


def cancel(pid: str, mid: str = "m1") -> CancelPayment:
    return CancelPayment(merchant_id=mid, payment_id=pid, transfer_id=f"{mid}:void-{pid}")


def refund(rid: str, pid: str = "p1", amount: int = 0, mid: str = "m1") -> CreateRefund:
    return CreateRefund(refund=Refund(id=rid, merchant_id=mid, payment_id=pid, amount=amount),
                        transfer_id=f"{mid}:rf-{rid}")


def payout(poid: str, amount: int, mid: str = "m1") -> CreatePayout:
    return CreatePayout(payout=Payout(id=poid, merchant_id=mid, amount=amount, currency="USD", hold_id=f"{mid}:hold-{poid}"))


def sub_account_payout(poid: str, sub_account_id: str, amount: int = 1) -> CreatePayout:
    command = payout(poid, amount)
    command.payout.sub_account_id = sub_account_id
    return command


def payout_result(poid: str, paid: bool, cb: str = "bank1", mid: str = "m1") -> RecordPayoutResult:
    return RecordPayoutResult(merchant_id=mid, payout_id=poid, callback_id=cb, paid=paid,
                              transfer_id=f"{mid}:po-{poid}-{cb}", failure_code="" if paid else "account_closed")


def plain(value):
    """A struct as builtins: a copy that later mutation of engine-owned records cannot touch."""
    return msgspec.to_builtins(value)


def balance_id(mid: str = "m1") -> str:
    return system_account_id(mid, "balance", "USD")


def clearing_id(mid: str = "m1") -> str:
    return system_account_id(mid, "clearing_piggybank", "USD")


# The gateway

class Gateway(Driver):
    def record(self, kind: str, record_id: str, mid: str = "m1"):
        return self.query(GetPaymentRecord(mid, kind, record_id)).record

    def payment(self, pid: str, mid: str = "m1") -> Payment | None:
        return self.record("payment", pid, mid)

    def order(self, oid: str = "o1", mid: str = "m1") -> Order | None:
        return self.query(GetOrder(mid, oid)).record

    def money(self, mid: str = "m1") -> dict[str, int]:
        """Posted credit balance of the merchant's balance, and what is held on it and on the clearing account."""
        balance, clearing = self.query(LookupAccounts([balance_id(mid), clearing_id(mid)])).accounts
        zero = dict(balance=0, balance_held=0, balance_incoming=0, clearing=0, clearing_held=0)
        if balance is None:
            return zero
        return dict(
            balance=balance.credits_posted - balance.debits_posted,
            balance_held=balance.debits_pending,  # payouts
            balance_incoming=balance.credits_pending,  # authorizations held for capture
            clearing=clearing.debits_posted - clearing.credits_posted,
            clearing_held=clearing.debits_pending,
        )

    def available(self, mid: str = "m1") -> int:
        return self.engine.ledger.available(balance_id(mid))



def money(balance=0, balance_held=0, balance_incoming=0, clearing=None, clearing_held=0) -> dict[str, int]:
    """The expected money view: by default the clearing account has given exactly what the balance got."""
    return dict(balance=balance, balance_held=balance_held, balance_incoming=balance_incoming,
                clearing=balance if clearing is None else clearing, clearing_held=clearing_held)


@pytest.fixture
def gw() -> Gateway:
    gateway = Gateway()
    gateway.ok(CreateMerchant(Merchant(id="m1", name="Shop m1", email="m1@example.com")),
               CreateMerchant(Merchant(id="m2", name="Shop m2", email="m2@example.com")), order("o1"), at=T0)
    return gateway


@pytest.fixture
def paid(gw: Gateway) -> Gateway:
    """m1's payment p1 for o1 succeeded (automatic capture of 100)."""
    gw.ok(create("p1"))
    gw.ok(psp("p1"))
    return gw


@pytest.fixture
def held(gw: Gateway) -> Gateway:
    """m1's payment p1 for o1 is authorized for manual capture: 100 held, for a week."""
    gw.ok(create("p1", manual=True))
    gw.ok(psp("p1"))
    return gw


# 1. CreatePayment


def test_create_payment_for_an_order_takes_its_amount_and_currency(gw: Gateway):
    result = gw.ok(create("p1", amount=1, currency="EUR"))
    record = result.results[0].record
    assert (record.amount, record.currency, record.status) == (AMOUNT, "USD", "processing")
    assert (record.created_at, record.updated_at, record.deadline_at) == (gw.now, gw.now, gw.now + 30 * S)
    assert result.events == [Event("payment.created", "p1", gw.now)]
    assert plain(gw.payment("p1")) == plain(record)
    assert gw.order().status == "pending"
    assert gw.money() == money()  # nothing moves before the acquirer answers


def test_create_payment_without_an_order_keeps_its_own_amount(gw: Gateway):
    record = gw.ok(create("p1", order_id="", amount=7, currency="USD")).results[0].record
    assert (record.amount, record.currency, record.status) == (7, "USD", "processing")


SETUPS = {
    "none": lambda gw: None,
    "cancelled": lambda gw: gw.ok(CancelOrder("m1", "o1")),
    "expired": lambda gw: gw.run(at=FAR),
    "paid": lambda gw: (gw.ok(create("p0")), gw.ok(psp("p0"))),
}


@pytest.mark.parametrize("setup, command, code", [
    ("none", lambda: create("p9", order_id="ghost"), "order_not_found"),
    ("none", lambda: create("p9", "m2"), "order_not_found"),  # m1's order, named by m2
    ("none", lambda: create("p9", method="qr"), "payment_method_not_allowed"),
    ("cancelled", lambda: create("p9"), "order_not_pending"),
    ("expired", lambda: create("p9"), "order_not_pending"),
    ("paid", lambda: create("p9"), "order_not_pending"),
    ("paid", lambda: create("p0", order_id="", amount=5, currency="USD"), "exists"),
    ("paid", lambda: create("p0", "m2", order_id=""), "exists"),  # payment ids are global
])
def test_create_payment_refusals(gw: Gateway, setup: str, command: Callable, code: str):
    SETUPS[setup](gw)
    gw.refused(command(), code)
    assert gw.payment("p9") is None
    if setup == "paid":
        assert (gw.payment("p0").amount, gw.payment("p0").status) == (AMOUNT, "succeeded")


def test_an_order_takes_one_payment_at_a_time(gw: Gateway):
    """While a payment may still take the order's money (undecided or authorized), no second one starts; once it
    failed or was voided, the order takes a new one. Neither a wallet nor a new amount can slip in meanwhile."""
    wallet_pay = PayOrderFromWallet(merchant_id="m1", order_id="o1", customer_id="c1", payment_id="pw",
                                    transfer_id="m1:pw")
    gw.ok(CreateCustomer(Customer(id="c1", merchant_id="m1", email="c1@example.com")))
    gw.ok(create("p1", manual=True))
    assert gw.order().payment_id == "p1"
    for status in ("processing", "requires_action", "requires_capture"):
        if status == "requires_action":
            gw.ok(psp("p1", "cb_3ds", result="requires_action", action_url="https://acquirer.test/3ds"))
        if status == "requires_capture":
            gw.ok(psp("p1", "cb_auth"))
        assert gw.payment("p1").status == status
        for command in (create("p2"), wallet_pay, UpdateOrder(merchant_id="m1", order_id="o1", amount=5)):
            gw.refused(command, "payment_in_progress")
    gw.ok(cancel("p1"))
    gw.ok(create("p2"))
    gw.ok(psp("p2", result="declined"))
    gw.ok(create("p3"))
    gw.ok(psp("p3"))
    assert (gw.order().status, gw.order().payment_id) == ("paid", "p3")
    assert gw.payment("p2") is not None and gw.payment("pw") is None
    assert gw.money() == money(balance=AMOUNT)


def test_money_for_an_order_already_paid_is_kept_and_the_order_still_names_its_payment(gw: Gateway):
    gw.ok(order("o2", methods=("qr",)))
    first = ReceiveBankTransfer(merchant_id="m1", order_id="o2", callback_id="cb1", amount=AMOUNT, currency="USD",
                                method="qr", payment_id="pq1", transfer_id="m1:pq1")
    second = msgspec.structs.replace(first, callback_id="cb2", payment_id="pq2", transfer_id="m1:pq2")
    gw.ok(first)
    gw.ok(second)
    assert (gw.order("o2").status, gw.order("o2").payment_id) == ("exception", "pq1")
    assert gw.payment("pq2").status == "succeeded"
    assert gw.available() == 2 * AMOUNT  # both transfers are the merchant's, for a person to settle


def test_a_qr_payment_waits_for_the_transfer_quoting_its_order(gw: Gateway):
    gw.ok(order("o2", methods=("qr", "card")), order("o3", methods=("qr",)))
    qr = create("pq", order_id="o2", method="qr")
    qr.payment.next_action_url = "https://gateway.test/v1/qr/orders/o2.png"
    result = gw.ok(qr)
    assert result.events == [Event("payment.created", "pq", gw.now), Event("payment.requires_action", "pq", gw.now)]
    waiting = gw.payment("pq")
    assert (waiting.status, waiting.amount, waiting.acquirer, waiting.deadline_at) == ("requires_action", AMOUNT, "bank", 0)
    assert waiting.next_action_url == "https://gateway.test/v1/qr/orders/o2.png"
    # It does not hold the order: the payer may pay by card instead, and a transfer that comes all the same is kept.
    gw.ok(create("pc", order_id="o2"))
    gw.ok(cancel("pc"))
    transfer = ReceiveBankTransfer(merchant_id="m1", order_id="o2", callback_id="cb1", amount=AMOUNT, currency="USD",
                                   method="qr", payment_id="pay_cb1", transfer_id="m1:pay_cb1", bank_reference="bk1")
    paid = gw.ok(transfer).results[0].record
    assert (paid.id, paid.status, paid.amount_captured, paid.psp_reference, paid.next_action_url) == (
        "pq", "succeeded", AMOUNT, "bk1", "")
    assert (gw.order("o2").status, gw.order("o2").payment_id, gw.payment("pay_cb1")) == ("paid", "pq", None)
    gw.refused(transfer, "exists")  # the same callback again moves nothing
    assert gw.available() == AMOUNT
    # An order cancelled (or expired) while its QR payment waits: the payment is cancelled with it.
    gw.ok(create("pq3", order_id="o3", method="qr"))
    assert gw.ok(CancelOrder("m1", "o3")).events == [Event("payment.cancelled", "pq3", gw.now),
                                                     Event("order.cancelled", "o3", gw.now)]
    assert gw.payment("pq3").status == "cancelled"


def quoting(pid: str, cb: str, amount: int, currency: str = "USD", mid: str = "m1") -> ReceiveBankTransfer:
    """The bank's word that a transfer quoting payment `pid` arrived."""
    return ReceiveBankTransfer(merchant_id=mid, order_id="", callback_id=cb, amount=amount, currency=currency,
                               method="qr", payment_id=f"pay_{cb}", transfer_id=f"{mid}:bt-{cb}", bank_reference=cb,
                               quoted_payment_id=pid)


@pytest.mark.parametrize("method", ["qr", "bank_transfer"])
def test_a_transfer_payment_without_an_order_is_completed_by_the_transfer_quoting_it(gw: Gateway, method: str):
    result = gw.ok(create("pq", order_id="", method=method, amount=5000, currency="USD", timeout_s=900))
    assert result.events == [Event("payment.created", "pq", gw.now), Event("payment.requires_action", "pq", gw.now)]
    waiting = gw.payment("pq")
    assert (waiting.status, waiting.amount, waiting.acquirer, waiting.deadline_at) == (
        "requires_action", 5000, "bank", gw.now + 900 * S)
    # What is not exactly what it asked for stays the bank's, to go back to the payer.
    for transfer, code in ((quoting("pq", "cb1", 4999), "amount_mismatch"),
                           (quoting("pq", "cb1", 5000, "EUR"), "currency_mismatch"),
                           (quoting("pq", "cb1", 5000, mid="m2"), "payment_not_found"),
                           (quoting("p-none", "cb1", 5000), "payment_not_found")):
        gw.refused(transfer, code)
    paid = gw.ok(quoting("pq", "cb1", 5000)).results[0].record
    assert (paid.status, paid.amount_captured, paid.psp_reference) == ("succeeded", 5000, "cb1")
    assert gw.available() == 5000
    assert gw.do(quoting("pq", "cb1", 5000)).code == "duplicate"
    gw.refused(quoting("pq", "cb2", 5000), "payment_not_open")
    gw.run(at=gw.now + 900 * S)
    assert gw.payment("pq").status == "succeeded"
    gw.ok(refund("r1", "pq", 1000))
    assert gw.available() == 4000


def test_a_transfer_payment_without_an_order_is_cancelled_when_no_transfer_comes_in_time(gw: Gateway):
    gw.ok(create("pq", order_id="", method="qr", amount=5000, currency="USD", timeout_s=60))
    deadline = gw.payment("pq").deadline_at
    copy = gw.restored()
    for gateway in (gw, copy):
        assert gateway.run(at=deadline - 1).events == []
        assert gateway.run(at=deadline).events == [Event("payment.cancelled", "pq", deadline)]
        assert (gateway.payment("pq").status, gateway.payment("pq").next_action_url) == ("cancelled", "")
        gateway.refused(quoting("pq", "cb1", 5000), "payment_not_open")
    assert copy.engine.state_hash() == gw.engine.state_hash()
    gw.refused(create("pz", order_id="", method="qr", amount=0, currency="USD"), "amount_must_not_be_zero")


def test_a_restored_engine_leaves_an_orders_qr_payment_waiting_as_the_original_does(gw: Gateway):
    gw.ok(order("o2", methods=("qr",)))
    gw.ok(create("pq", order_id="o2", method="qr"))
    copy = gw.restored()
    for gateway in (gw, copy):
        assert gateway.run().events == []
        assert gateway.payment("pq").status == "requires_action"
    assert copy.engine.state_hash() == gw.engine.state_hash()


# 2. RecordPspResult


def test_requires_action_then_authorized(gw: Gateway):
    gw.ok(create("p1"))
    result = gw.ok(psp("p1", "cb1", "requires_action", action_url="https://acs.example/3ds", psp_reference="ref-1"))
    record = result.results[0].record
    assert (record.status, record.next_action_url, record.psp_reference) == ("requires_action", "https://acs.example/3ds", "ref-1")
    assert result.events == [Event("payment.requires_action", "p1", gw.now)]
    assert gw.order().status == "pending"
    gw.ok(psp("p1", "cb2"))
    assert (gw.payment("p1").status, gw.payment("p1").callback_ids, gw.order().status) == ("succeeded", ["cb1", "cb2"], "paid")


@pytest.mark.parametrize("result, failure_code, expected", [
    ("declined", "insufficient_funds", "insufficient_funds"),
    ("declined", "", "card_declined"),
    ("error", "acquirer_unavailable", "acquirer_unavailable"),
])
def test_declined_or_error_fails_the_payment_and_flags_the_order(gw: Gateway, result: str, failure_code: str, expected: str):
    gw.ok(create("p1"))
    batch = gw.ok(psp("p1", result=result, failure_code=failure_code, failure_message="no"))
    record = batch.results[0].record
    assert (record.status, record.failure_code, record.failure_message) == ("failed", expected, "no")
    assert batch.events == [Event("payment.failed", "p1", gw.now)]
    assert (gw.order().status, gw.order().error_code, gw.order().error_message) == ("pending", expected, "no")
    assert gw.money() == money()
    gw.ok(create("p2"))  # the order may still be paid
    gw.ok(psp("p2"))
    assert gw.order().status == "paid"


@pytest.mark.parametrize("first", ["requires_action", "authorized", "declined"])
def test_a_duplicate_callback_changes_nothing(gw: Gateway, first: str):
    gw.ok(create("p1"))
    gw.ok(psp("p1", "cb1", first))
    status = gw.payment("p1").status
    for again in ("authorized", "declined", first):
        outcome = gw.refused(psp("p1", "cb1", again), "duplicate")
        assert outcome.record.status == status


@pytest.mark.parametrize("close", [
    lambda gw: gw.ok(psp("p1", "cb0")),
    lambda gw: gw.ok(psp("p1", "cb0", "declined")),
    lambda gw: gw.ok(cancel("p1")),
    lambda gw: gw.run(at=gw.payment("p1").deadline_at),
], ids=["succeeded", "failed", "cancelled", "timed-out"])
def test_a_result_for_a_closed_payment_is_payment_not_open(gw: Gateway, close: Callable):
    gw.ok(create("p1"))
    close(gw)
    status = gw.payment("p1").status
    for result in ("authorized", "declined", "requires_action"):
        assert gw.refused(psp("p1", "cb9", result), "payment_not_open").record.status == status


def test_a_result_from_another_merchant_or_for_no_payment_is_payment_not_found(gw: Gateway):
    gw.ok(create("p1"))
    gw.refused(psp("p1", mid="m2"), "payment_not_found")
    gw.refused(psp("ghost"), "payment_not_found")
    assert gw.payment("p1").status == "processing"


def test_a_callback_signature_seen_within_the_window_is_replayed_even_after_a_restore(gw: Gateway):
    gw.ok(create("p1", timeout_s=3600))
    assert gw.do(psp("p1", "cb1", "requires_action", signature="t=1,v1=aa")).code == "ok"
    gw.refused(psp("p1", "cb1", "requires_action", signature="t=1,v1=aa"), "callback_replayed")
    assert gw.do(psp("p1", "cb1", "requires_action", signature="t=2,v1=bb")).code == "duplicate"  # freshly signed
    restored = gw.restored()
    restored.refused(psp("p1", "cb1", "requires_action", signature="t=2,v1=bb"), "callback_replayed")
    restored.now += CALLBACK_REPLAY_WINDOW_NS  # past the window a signature is forgotten (and stale by then anyway)
    assert restored.do(psp("p1", "cb2", "declined", signature="t=1,v1=aa")).code == "ok"
    assert restored.payment("p1").status == "failed"


def test_a_result_signed_by_another_provider_than_the_acquirer_is_payment_not_found(gw: Gateway):
    gw.ok(create("p1"))
    acquirer = gw.payment("p1").acquirer
    gw.refused(psp("p1", acquirer="bank"), "payment_not_found")
    assert gw.payment("p1").status == "processing"
    gw.ok(psp("p1", acquirer=acquirer))
    assert gw.payment("p1").status == "succeeded"


# 3. Automatic capture


def test_automatic_capture_moves_the_money_and_pays_the_order(gw: Gateway):
    gw.ok(create("p1"))
    result = gw.ok(psp("p1", psp_reference="ref-1"))
    record = result.results[0].record
    assert (record.status, record.amount_captured, record.amount_capturable, record.psp_reference) == ("succeeded", AMOUNT, 0, "ref-1")
    assert result.events == [Event("payment.succeeded", "p1", gw.now), Event("order.paid", "o1", gw.now)]
    assert gw.money() == money(balance=AMOUNT)
    assert gw.money("m2") == money()
    assert (gw.order().status, gw.order().payment_id) == ("paid", "p1")


# 4. Manual capture


def test_manual_authorization_holds_the_amount(held: Gateway):
    record = held.payment("p1")
    assert (record.status, record.amount_capturable, record.amount_captured) == ("requires_capture", AMOUNT, 0)
    assert held.money() == money(balance_incoming=AMOUNT, clearing_held=AMOUNT)
    assert held.order().status == "pending"


@pytest.mark.parametrize("amount, captured, order_status", [
    (0, AMOUNT, "paid"), (AMOUNT, AMOUNT, "paid"), (60, 60, "exception"), (1, 1, "exception")])
def test_capture_posts_what_is_taken_and_releases_the_rest(held: Gateway, amount: int, captured: int,
                                                           order_status: str):
    """A partial capture pays the order less than asked: the order is an exception (kept, refundable, not split)."""
    result = held.ok(capture("p1", amount))
    record = result.results[0].record
    assert (record.status, record.amount_captured, record.amount_capturable) == ("succeeded", captured, 0)
    assert result.events == [Event("payment.succeeded", "p1", held.now), Event(f"order.{order_status}", "o1", held.now),
                             Event("payment.captured", "p1", held.now)]
    assert held.money() == money(balance=captured)
    assert held.order().status == order_status
    held.refused(capture("p1", tid="m1:cap-again"), "payment_not_capturable")
    held.refused(cancel("p1"), "payment_not_cancellable")


def test_capture_more_than_capturable_is_amount_too_large(held: Gateway):
    held.refused(capture("p1", AMOUNT + 1), "amount_too_large")
    assert held.payment("p1").status == "requires_capture"
    held.ok(capture("p1", AMOUNT))


@pytest.mark.parametrize("setup", [lambda gw: None, lambda gw: gw.ok(psp("p1", result="requires_action"))],
                         ids=["processing", "requires_action"])
def test_capture_before_authorization_is_payment_not_capturable(gw: Gateway, setup: Callable):
    gw.ok(create("p1", manual=True))
    setup(gw)
    gw.refused(capture("p1"), "payment_not_capturable")
    gw.refused(capture("p1", mid="m2"), "payment_not_found")


def test_cancel_voids_the_hold(held: Gateway):
    result = held.ok(cancel("p1"))
    assert (result.results[0].record.status, result.results[0].record.amount_capturable) == ("cancelled", 0)
    assert result.events == [Event("payment.cancelled", "p1", held.now)]
    assert held.money() == money()
    assert held.order().status == "pending"
    held.refused(capture("p1"), "payment_not_capturable")
    held.refused(cancel("p1"), "payment_not_cancellable")


@pytest.mark.parametrize("setup", [lambda gw: None, lambda gw: gw.ok(psp("p1", result="requires_action"))],
                         ids=["processing", "requires_action"])
def test_cancel_an_open_payment(gw: Gateway, setup: Callable):
    gw.ok(create("p1"))
    setup(gw)
    gw.refused(cancel("p1", mid="m2"), "payment_not_found")
    result = gw.ok(cancel("p1"))
    assert result.events == [Event("payment.cancelled", "p1", gw.now)]
    assert gw.payment("p1").status == "cancelled"
    gw.refused(psp("p1", "cb9"), "payment_not_open")
    assert gw.money() == money()


@pytest.mark.parametrize("close", [lambda gw: gw.ok(psp("p1")), lambda gw: gw.ok(psp("p1", result="declined"))],
                         ids=["succeeded", "failed"])
def test_cancel_after_the_end_is_payment_not_cancellable(gw: Gateway, close: Callable):
    gw.ok(create("p1"))
    close(gw)
    gw.refused(cancel("p1"), "payment_not_cancellable")


# 5. Authorization timeout


def test_an_authorization_not_captured_in_time_is_released(gw: Gateway):
    gw.ok(create("p1", manual=True))
    gw.ok(psp("p1", hold_timeout_s=1))
    authorized_at = gw.now
    assert gw.run(at=authorized_at + S // 2).events == []
    assert gw.payment("p1").status == "requires_capture"
    result = gw.run(at=authorized_at + 2 * S)
    assert result.events == [Event("transfer.expired", "m1:auth-p1-cb1", gw.now), Event("payment.cancelled", "p1", gw.now)]
    record = gw.payment("p1")
    assert (record.status, record.amount_capturable, record.updated_at) == ("cancelled", 0, gw.now)
    assert gw.money() == money()
    gw.refused(capture("p1"), "payment_not_capturable")
    gw.refused(cancel("p1"), "payment_not_cancellable")


def test_an_authorization_captured_in_time_does_not_expire(gw: Gateway):
    gw.ok(create("p1", manual=True))
    gw.ok(psp("p1", hold_timeout_s=5))
    gw.ok(capture("p1", 40))
    assert gw.run(at=gw.now + 10 * S).events == []
    assert (gw.payment("p1").status, gw.money()) == ("succeeded", money(balance=40))


# 6. Processing deadline


@pytest.mark.parametrize("setup", [lambda gw: None, lambda gw: gw.ok(psp("p1", result="requires_action"))],
                         ids=["processing", "requires_action"])
def test_a_payment_left_open_past_its_deadline_fails(gw: Gateway, setup: Callable):
    gw.ok(create("p1", timeout_s=10))
    deadline = gw.payment("p1").deadline_at
    setup(gw)
    assert gw.run(at=deadline - 1).events == []
    result = gw.run(at=deadline)
    assert result.events == [Event("payment.failed", "p1", deadline)]
    record = gw.payment("p1")
    assert (record.status, record.failure_code) == ("failed", "processing_timeout")
    assert (gw.order().status, gw.order().error_code) == ("pending", "processing_timeout")
    gw.refused(psp("p1", "late"), "payment_not_open")
    assert gw.money() == money()


def test_an_answered_payment_is_not_failed_by_its_deadline(held: Gateway):
    assert held.run(at=held.payment("p1").deadline_at + S).events == []
    assert held.payment("p1").status == "requires_capture"


def test_next_deadline_includes_a_payment_processing_deadline(gw: Gateway):
    gw.ok(order("o2", expires_at=0))  # o1 is due only at FAR
    gw.ok(create("p1", order_id="o2", timeout_s=10))
    assert gw.engine.next_deadline() == gw.payment("p1").deadline_at


# 7. Late success after the order expired


def test_late_success_on_an_expired_order_is_kept_as_an_exception(gw: Gateway):
    expires = gw.now + 5 * S
    gw.ok(order("o2", expires_at=expires))
    gw.ok(create("p2", order_id="o2", timeout_s=60))
    assert gw.run(at=expires).events == [Event("order.expired", "o2", expires)]
    result = gw.ok(psp("p2"))
    assert result.events == [Event("payment.succeeded", "p2", gw.now), Event("order.exception", "o2", gw.now)]
    assert (gw.payment("p2").status, gw.order("o2").status, gw.order("o2").payment_id) == ("succeeded", "exception", "p2")
    assert gw.money() == money(balance=AMOUNT)
    gw.ok(refund("r1", "p2"))
    assert gw.money() == money()
    assert gw.payment("p2").amount_refunded == AMOUNT


# 8. Refunds


def test_partial_refunds_up_to_the_captured_amount(paid: Gateway):
    refunded = 0
    for index, amount in enumerate([30, 50, 20]):
        result = paid.ok(refund(f"r{index}", amount=amount))
        refunded += amount
        record = result.results[0].record
        assert (record.amount, record.currency, record.status, record.created_at) == (amount, "USD", "succeeded", paid.now)
        status = "refunded" if refunded == AMOUNT else "partially_refunded"
        assert result.events == [Event("refund.succeeded", f"r{index}", paid.now), Event(f"order.{status}", "o1", paid.now)]
        assert (paid.payment("p1").amount_refunded, paid.order().amount_refunded) == (refunded, refunded)
        assert paid.order().status == status
        assert paid.money() == money(balance=AMOUNT - refunded)
        assert plain(paid.record("refund", f"r{index}")) == plain(record)
    paid.refused(refund("r9", amount=1), "amount_too_large")
    paid.refused(refund("r9"), "amount_too_large")  # nothing remains
    assert paid.record("refund", "r9") is None


def test_refund_of_zero_takes_the_remainder(paid: Gateway):
    paid.ok(refund("r1", amount=35))
    assert paid.ok(refund("r2")).results[0].record.amount == AMOUNT - 35
    assert (paid.order().status, paid.money()) == ("refunded", money())


def test_refund_of_a_partial_capture_is_capped_at_what_was_captured(held: Gateway):
    held.ok(capture("p1", 60))
    held.refused(refund("r1", amount=61), "amount_too_large")
    assert held.ok(refund("r1")).results[0].record.amount == 60
    assert (held.order().status, held.money()) == ("exception", money())


@pytest.mark.parametrize("amounts", [
    [30, 50, 40, 20, 10, 1],
    [AMOUNT + 1, AMOUNT, 1],
    [7] * 20,
    [0, 5],
    [25, 0, 0],
])
def test_refunds_racing_in_one_batch_never_exceed_the_capture(paid: Gateway, amounts: list[int]):
    result = paid.run(*(refund(f"r{i}", amount=a) for i, a in enumerate(amounts)))
    expected, events, left = [], [], AMOUNT  # in batch order, each one that still fits, and the events it makes
    for index, amount in enumerate(amounts):
        take = amount or left
        fits = 0 < take <= left
        expected.append("ok" if fits else "amount_too_large")
        left -= take if fits else 0
        if fits:
            events += [Event("refund.succeeded", f"r{index}", paid.now),
                       Event("order.refunded" if left == 0 else "order.partially_refunded", "o1", paid.now)]
    assert [outcome.code for outcome in result.results] == expected
    assert result.events == events
    refunded = AMOUNT - left
    assert sum(outcome.record.amount for outcome in result.results if outcome.code == "ok") == refunded
    assert (paid.payment("p1").amount_refunded, paid.order().amount_refunded) == (refunded, refunded)
    assert paid.money() == money(balance=left)


@pytest.mark.parametrize("setup", [
    lambda gw: gw.ok(create("p1")),
    lambda gw: (gw.ok(create("p1")), gw.ok(psp("p1", result="declined"))),
    lambda gw: (gw.ok(create("p1", manual=True)), gw.ok(psp("p1"))),
    lambda gw: (gw.ok(create("p1", manual=True)), gw.ok(psp("p1")), gw.ok(cancel("p1"))),
], ids=["processing", "failed", "requires_capture", "cancelled"])
def test_refund_of_a_payment_that_did_not_succeed_is_payment_not_refundable(gw: Gateway, setup: Callable):
    setup(gw)
    gw.refused(refund("r1"), "payment_not_refundable")


def test_refund_refusals_by_merchant_and_id(paid: Gateway):
    paid.refused(refund("r1", mid="m2"), "payment_not_found")
    paid.refused(refund("r1", "ghost"), "payment_not_found")
    paid.ok(refund("r1", amount=10))
    paid.refused(refund("r1", amount=10), "exists")
    paid.refused(refund("r1", amount=10, mid="m2"), "exists")
    assert paid.payment("p1").amount_refunded == 10


# 9. Payouts


def test_payout_holds_then_is_paid(paid: Gateway):
    result = paid.ok(payout("po1", 70))
    assert (result.results[0].record.status, result.events) == ("pending", [Event("payout.created", "po1", paid.now)])
    assert (paid.available(), paid.money()) == (30, money(balance=AMOUNT, balance_held=70))
    result = paid.ok(payout_result("po1", paid=True))
    assert (result.results[0].record.status, result.events) == ("paid", [Event("payout.paid", "po1", paid.now)])
    assert (paid.available(), paid.money()) == (30, money(balance=30, clearing=AMOUNT))
    paid.refused(payout_result("po1", paid=False, cb="bank2"), "duplicate")
    paid.refused(payout_result("po1", paid=True), "duplicate")


def test_a_failed_payout_returns_the_money(paid: Gateway):
    paid.ok(payout("po1", AMOUNT))
    assert paid.available() == 0
    paid.refused(payout("po2", 1), "insufficient_funds")
    result = paid.ok(payout_result("po1", paid=False))
    record = result.results[0].record
    assert (record.status, record.failure_code) == ("failed", "account_closed")
    assert result.events == [Event("payout.failed", "po1", paid.now)]
    assert (paid.available(), paid.money()) == (AMOUNT, money(balance=AMOUNT))
    paid.refused(payout_result("po1", paid=True, cb="bank2"), "duplicate")
    paid.ok(payout("po2", AMOUNT))


@pytest.mark.parametrize("command, code", [
    (lambda: payout("po9", AMOUNT + 1), "insufficient_funds"),
    (lambda: payout("po9", 1, "m2"), "insufficient_funds"),  # m2 has no balance
    (lambda: payout("po1", 1), "exists"),
    (lambda: payout_result("po1", True, mid="m2"), "payout_not_found"),
    (lambda: payout_result("ghost", True), "payout_not_found"),
    (lambda: payout("po9", 1, "m9"), "merchant_not_found"),
    (lambda: sub_account_payout("po9", "sub_missing"), "sub_account_not_found"),
    (lambda: sub_account_payout("po9", "withdrawals"), "sub_account_not_found"),  # a system account is no store
    (lambda: sub_account_payout("po9", "clearing_piggybank"), "sub_account_not_found"),
])
def test_payout_refusals(paid: Gateway, command: Callable, code: str):
    paid.ok(payout("po1", 10))
    paid.refused(command(), code)
    assert paid.record("payout", "po9") is None
    assert (paid.available(), paid.record("payout", "po1").status) == (AMOUNT - 10, "pending")


# 10. Queries


def test_get_payment_record_is_per_merchant_and_kind(paid: Gateway):
    paid.ok(refund("r1", amount=5), payout("po1", 5))
    for kind, record_id in (("payment", "p1"), ("refund", "r1"), ("payout", "po1")):
        assert paid.record(kind, record_id).id == record_id
        assert paid.record(kind, record_id, mid="m2") is None
        assert paid.record(kind, "ghost") is None
    assert paid.record("refund", "p1") is None
    assert paid.record("order", "o1") is None


@pytest.fixture
def listed(gw: Gateway) -> Gateway:
    """m1's payments q0..q6, one batch each and m2's in between."""
    for i in range(7):
        gw.ok(create(f"q{i}", order_id="", currency="USD"), create(f"m2-q{i}", "m2", order_id="", currency="USD"))
    return gw


def list_ids(gw: Gateway, mid: str = "m1", **page) -> tuple[list[str], bool]:
    answer = gw.query(ListPayments(merchant_id=mid, **page))
    return [payment.id for payment in answer.records], answer.has_more


NEWEST_FIRST = [f"q{i}" for i in reversed(range(7))]


@pytest.mark.parametrize("page, expected", [
    ({}, (NEWEST_FIRST, False)),
    ({"limit": 1}, (["q6"], True)),
    ({"limit": 6}, (NEWEST_FIRST[:6], True)),
    ({"limit": 7}, (NEWEST_FIRST, False)),
    ({"limit": 2, "starting_after": "q4"}, (["q3", "q2"], True)),
    ({"limit": 2, "starting_after": "q2"}, (["q1", "q0"], False)),
    ({"starting_after": "q0"}, ([], False)),
    ({"starting_after": "m2-q3"}, ([], False)),  # another merchant's payment
    ({"starting_after": "ghost"}, ([], False)),
])
def test_list_payments_newest_first(listed: Gateway, page: dict, expected):
    assert list_ids(listed, **page) == expected


def walk(gw: Gateway, limit: int, **filters) -> list[str]:
    """Every id of m1's list, page by page; has_more must be true exactly when another page follows."""
    walked, after = [], ""
    while True:
        page, has_more = list_ids(gw, limit=limit, starting_after=after, **filters)
        assert page or not after, "has_more promised a page that is empty"
        walked += page
        if not has_more:
            return walked
        assert len(page) == limit
        after = page[-1]


def test_list_payments_pages_walk_everything_once(listed: Gateway):
    assert walk(listed, 3) == NEWEST_FIRST
    assert list_ids(listed, "m2")[0] == [f"m2-{pid}" for pid in NEWEST_FIRST]


def test_list_payments_by_status_pages_through_the_matches_only(listed: Gateway):
    listed.ok(create("q7", order_id="", currency="USD", manual=True))
    listed.ok(psp("q0"), psp("q1", result="declined"), cancel("q2"), psp("q3", result="requires_action"), psp("q5"),
              psp("q7"))
    expected = {"succeeded": ["q5", "q0"], "failed": ["q1"], "cancelled": ["q2"], "requires_action": ["q3"],
                "processing": ["q6", "q4"], "requires_capture": ["q7"]}
    assert set(expected) == set(PAYMENT_STATUSES)
    for status, ids in expected.items():
        for limit in (1, 2, 100):
            assert walk(listed, limit, status=status) == ids, (status, limit)
    # The cursor is a position in the whole list: a payment in another status starts a page as well.
    assert list_ids(listed, status="succeeded", starting_after="q3") == (["q0"], False)
    assert list_ids(listed, "m2", status="succeeded") == ([], False)


# 11. Snapshot and restore mid-flow


def test_restore_mid_flow_behaves_the_same(gw: Gateway):
    gw.ok(order("o2"), order("o3"), order("o4"), create("p0", order_id="", currency="USD"))
    gw.ok(psp("p0"))  # funds m1's balance with 1
    gw.ok(create("p1", manual=True), create("p2", order_id="o2", manual=True), create("p3", order_id="o3", timeout_s=20),
          create("p4", order_id="o4", manual=True), payout("po1", 1))
    start = gw.now
    gw.ok(psp("p1", hold_timeout_s=10), psp("p2", hold_timeout_s=10), psp("p4"))
    copy = gw.restored()
    assert copy.engine.state_hash() == gw.engine.state_hash()
    assert copy.engine.snapshot() == gw.engine.snapshot()
    assert plain(copy.query(ListPayments(merchant_id="m1"))) == plain(gw.query(ListPayments(merchant_id="m1")))

    later = [  # (time, commands, expected codes, expected event kinds)
        (start + 2 * S, lambda: [capture("p4", 30), payout_result("po1", paid=True), capture("p1", AMOUNT + 1)],
         ["ok", "ok", "amount_too_large"], ["payment.succeeded", "order.exception", "payment.captured", "payout.paid"]),
        (start + 11 * S, lambda: [capture("p1")],  # p1 and p2 were authorized at start + 1 s, for 10 s
         ["payment_not_capturable"], ["transfer.expired", "transfer.expired", "payment.cancelled", "payment.cancelled"]),
        (start + 20 * S, lambda: [psp("p3"), refund("r1", "p4"), cancel("p2")],
         ["payment_not_open", "ok", "payment_not_cancellable"], ["payment.failed", "refund.succeeded"]),
    ]
    for at, commands, codes, kinds in later:
        results = [g.run(*commands(), at=at) for g in (gw, copy)]
        assert plain(results[0]) == plain(results[1])
        assert [outcome.code for outcome in results[1].results] == codes
        assert [event.kind for event in results[1].events] == kinds
        assert copy.engine.state_hash() == gw.engine.state_hash()
    statuses = {pid: copy.payment(pid).status for pid in ("p1", "p2", "p3", "p4")}
    assert statuses == {"p1": "cancelled", "p2": "cancelled", "p3": "failed", "p4": "succeeded"}
    assert copy.money() == money(balance=1 + 30 - 30 - 1, clearing=1 + 30 - 30)


# Findings: rules the engine keeps elsewhere but not here


def test_a_refused_payout_of_zero_changes_nothing(paid: Gateway):
    paid.refused(payout("po1", 0), "amount_must_not_be_zero")


def test_a_payment_for_an_unknown_merchant_is_merchant_not_found(gw: Gateway):
    gw.refused(create("p1", "ghost", order_id="", currency="USD"), "merchant_not_found")


def test_refunds_never_exceed_the_capture_whatever_the_submitted_payment_says(gw: Gateway):
    submitted = Payment(id="p1", merchant_id="m1", amount=0, currency="", order_id="o1", amount_refunded=-AMOUNT)
    gw.ok(CreatePayment(payment=submitted))
    gw.ok(psp("p1"))
    result = gw.run(*(refund(f"r{i}", amount=AMOUNT) for i in range(2)))
    assert [outcome.code for outcome in result.results] == ["ok", "amount_too_large"]


def test_a_split_order_pays_every_share_or_is_refused(gw: Gateway):
    """Seed 004: one checkout pays several sellers. Shares go out with the payment, linked: all or nothing."""
    gw.ok(CreateSubAccount("m1", SubAccount("sub_store", "Store")))
    gw.ok(order("o9", splits=(Split("sub_store", 30), Split("m2", 20))))
    gw.refused(order("o10", splits=(Split("sub_store", AMOUNT), Split("m2", 1))), "splits_exceed_amount")
    gw.refused(order("o11", splits=(Split("sub_missing", 1),)), "split_destination_not_found")
    # Another merchant's sub-account is no destination, and its id is taken on the shard.
    gw.ok(CreateSubAccount("m2", SubAccount("sub_other", "Other")))
    gw.refused(order("o12", splits=(Split("sub_other", 1),)), "split_destination_not_found")
    gw.refused(CreateSubAccount("m1", SubAccount("sub_other", "Mine")), "exists")
    gw.ok(create("p9", order_id="o9"))
    gw.ok(psp("p9"))
    shares = gw.query(LookupAccounts([system_account_id("m1", "sub_store", "USD"),
                                      system_account_id("m2", "balance", "USD"), balance_id("m1")])).accounts
    assert [account.credits_posted - account.debits_posted for account in shares] == [30, 20, AMOUNT - 50]


def test_sub_accounts_per_merchant_are_bounded(gw: Gateway, monkeypatch):
    monkeypatch.setattr(merchants, "MAX_SUB_ACCOUNTS", 2)
    gw.ok(CreateSubAccount("m1", SubAccount("sub_a", "A")), CreateSubAccount("m1", SubAccount("sub_b", "B")))
    gw.refused(CreateSubAccount("m1", SubAccount("sub_c", "C")), "sub_account_limit_reached")
    gw.ok(CreateSubAccount("m2", SubAccount("sub_c", "C")))  # the bound is each merchant's


def static_code_transfer(cb: str, amount: int, sub_account_id: str = "", mid: str = "m1") -> ReceiveBankTransfer:
    return ReceiveBankTransfer(merchant_id=mid, order_id="", callback_id=cb, amount=amount, currency="VND",
                               method="qr", payment_id=f"pay_{cb}", transfer_id=f"{mid}:bt-{cb}",
                               sub_account_id=sub_account_id)


def test_a_static_code_credits_the_merchant_or_its_sub_account_with_any_amount_once(gw: Gateway):
    """Seed 002: a static code has no order and no amount: each transfer quoting it is a payment of its own."""
    gw.ok(CreateSubAccount("m1", SubAccount("sub_store", "Store")))
    gw.ok(static_code_transfer("cb1", 50_000), static_code_transfer("cb2", 70_000, "sub_store"))
    assert gw.do(static_code_transfer("cb1", 50_000)).code == "duplicate"
    gw.refused(static_code_transfer("cb3", 1, "sub_missing"), "sub_account_not_found")
    gw.refused(static_code_transfer("cb4", 1, mid="m9"), "merchant_not_found")
    gw.refused(static_code_transfer("cb5", 0), "amount_must_not_be_zero")
    received = gw.query(LookupAccounts([system_account_id("m1", "balance", "VND"),
                                        system_account_id("m1", "sub_store", "VND")])).accounts
    assert [account.credits_posted for account in received] == [50_000, 70_000]
    payment = gw.payment("pay_cb2")
    assert (payment.status, payment.amount, payment.order_id, payment.metadata) == (
        "succeeded", 70_000, "", {"sub_account_id": "sub_store"})


def test_a_static_code_payment_is_refunded_from_the_account_it_credited(gw: Gateway):
    """A transfer a static code credited to a sub-account goes back out of that sub-account, never the balance; the
    merchant's own `metadata` names no account to refund from."""
    gw.ok(CreateSubAccount("m1", SubAccount("sub_store", "Store")))
    gw.ok(static_code_transfer("cb1", 500), static_code_transfer("cb2", 700, "sub_store"))
    gw.ok(refund("re_1", "pay_cb2", 200))
    balance, sub_account = (system_account_id("m1", name, "VND") for name in ("balance", "sub_store"))

    def posted():
        accounts = gw.query(LookupAccounts([balance, sub_account])).accounts
        return [account.credits_posted - account.debits_posted for account in accounts]

    assert posted() == [500, 500]
    gw.refused(refund("re_2", "pay_cb2", 501), "amount_too_large")
    gw.ok(refund("re_3", "pay_cb2", 500))
    assert posted() == [500, 0]
    for gateway in (gw, gw.restored()):
        assert gateway.payment("pay_cb2").sub_account_id == "sub_store"
    # A payment whose metadata names the sub-account still refunds from the balance its money went to.
    gw.ok(order("o9", amount=100))
    claiming = create("p9", order_id="o9")
    claiming.payment.metadata = {"sub_account_id": "sub_store"}
    gw.ok(claiming)
    gw.ok(psp("p9"))
    gw.ok(static_code_transfer("cb3", 300, "sub_store"))
    gw.ok(refund("re_4", "p9", 100))
    assert gw.query(LookupAccounts([sub_account])).accounts[0].credits_posted == 1000


def test_a_payout_hold_the_ledger_refuses_makes_no_account(paid: Gateway):
    # The hold's transfer id is already spent: refused before the payouts account is made.
    reused = payout("po1", 10)
    reused.payout.hold_id = "m1:auth-p1-cb1"
    paid.refused(reused, "exists_with_different_flags")
    assert system_account_id("m1", "payouts", "USD") not in paid.engine.ledger.accounts
    paid.ok(payout("po1", 10))


def test_a_sub_account_finds_its_merchant_after_a_restore(gw: Gateway):
    gw.ok(CreateSubAccount("m2", SubAccount("sub_store", "Store")))
    for gateway in (gw, gw.restored()):
        assert gateway.query(GetMerchant(sub_account_id="sub_store")).record.id == "m2"
        assert gateway.query(GetMerchant(sub_account_id="sub_other")).record is None


def test_no_balance_goes_past_the_api_amount_range(gw: Gateway):
    """Amounts and balances fit the API's int64 end to end: money that would take a balance field past it is
    refused with the ledger's overflow code, never stored past the range."""
    assert AMOUNT_MAX == 2**63 - 1
    gw.ok(static_code_transfer("cb1", AMOUNT_MAX))
    assert gw.do(static_code_transfer("cb2", AMOUNT_MAX)).code == "overflows_debits_posted"
    assert gw.payment("pay_cb2") is None
    balance = gw.query(LookupAccounts([system_account_id("m1", "balance", "VND")])).accounts[0]
    assert balance.credits_posted == AMOUNT_MAX


def test_a_transfer_the_ledger_refuses_makes_no_account(gw: Gateway):
    """Checked before its accounts are made: the bank's clearing account is full, so the sub-account that would
    have taken the money is not made, and nothing else changes."""
    gw.ok(CreateSubAccount("m1", SubAccount("sub_store", "Store")))
    gw.ok(static_code_transfer("cb1", AMOUNT_MAX))
    gw.refused(static_code_transfer("cb2", 1, "sub_store"), "overflows_debits_posted")
    assert system_account_id("m1", "sub_store", "VND") not in gw.engine.ledger.accounts


# Splits and exceptions (seed 003, 004)


def bank_transfer(cb: str, amount: int, order_id: str = "", mid: str = "m1") -> ReceiveBankTransfer:
    """Money from the bank in USD, for an order or (no order) on the merchant's static code."""
    return ReceiveBankTransfer(merchant_id=mid, order_id=order_id, callback_id=cb, amount=amount, currency="USD",
                               method="bank_transfer", payment_id=f"pay_{cb}", transfer_id=f"{mid}:bt-{cb}")


def balances(gw: Gateway, *names: str) -> list[int]:
    """Posted balance (credits less debits) of m1's and m2's accounts, named "m1.balance", "m1.sub_store"..."""
    ids = [system_account_id(*name.split("."), "USD") for name in names]
    accounts = gw.query(LookupAccounts(ids)).accounts
    return [0 if account is None else account.credits_posted - account.debits_posted for account in accounts]


def test_a_split_to_the_orders_own_merchant_is_refused_and_the_shard_keeps_serving(gw: Gateway):
    """It once built a transfer from the merchant's balance to itself at payment, and the shard stopped."""
    gw.refused(order("o9", splits=(Split("m1", 10),)), "split_to_own_merchant")
    gw.ok(order("o9", splits=(Split("m2", 10),)))
    gw.ok(create("p9", order_id="o9"))
    gw.ok(psp("p9"))
    assert (gw.order("o9").status, balances(gw, "m1.balance", "m2.balance")) == ("paid", [AMOUNT - 10, 10])


def test_an_amount_below_the_splits_is_refused_and_later_money_is_never_split_again(gw: Gateway):
    """A PATCH once lowered the amount under the shares, and each later payment paid them out again, from a
    balance that had no debit limit."""
    gw.ok(order("o9", methods=("card", "bank_transfer"), splits=(Split("m2", 60),)))
    outcome = gw.refused(UpdateOrder(merchant_id="m1", order_id="o9", amount=59), "splits_exceed_amount")
    assert outcome.record.amount == AMOUNT
    gw.ok(create("p9", order_id="o9"))
    gw.ok(psp("p9"))
    assert (gw.order("o9").status, balances(gw, "m1.balance", "m2.balance")) == ("paid", [40, 60])
    result = gw.ok(bank_transfer("cb1", 1, "o9"))
    assert result.events == [Event("payment.succeeded", "pay_cb1", gw.now), Event("order.exception", "o9", gw.now)]
    assert (gw.order("o9").status, gw.order("o9").payment_id) == ("exception", "p9")
    assert balances(gw, "m1.balance", "m2.balance") == [41, 60]
    gw.ok(refund("r1", "pay_cb1"))  # the exception's money is the merchant's to give back
    assert balances(gw, "m1.balance", "m2.balance") == [40, 60]


@pytest.mark.parametrize("splits, code", [
    ([Split("m2", 1)] * 11, "splits_too_many"),
    ([Split("m2", 0)], "split_amount_must_be_positive"),
    ([Split("m2", -5), Split("sub_store", 10)], "split_amount_must_be_positive"),
    ([Split("m2", 60), Split("sub_store", 41)], "splits_exceed_amount"),
    ([Split("m1", 1)], "split_to_own_merchant"),
    ([Split("m9", 1)], "split_destination_not_found"),
    ([Split("sub_other", 1)], "split_destination_not_found"),  # another merchant's sub-account
    ([Split("m2", 1), Split("m2", 1)], "split_destination_duplicated"),
])
def test_splits_are_checked_at_create(gw: Gateway, splits: list[Split], code: str):
    gw.ok(CreateSubAccount("m1", SubAccount("sub_store", "Store")), CreateSubAccount("m2", SubAccount("sub_other", "O")))
    gw.refused(order("o9", splits=tuple(splits)), code)
    gw.ok(order("o9", splits=(Split("m2", 60), Split("sub_store", 40))))


@pytest.mark.parametrize("amount, code", [(99, "splits_exceed_amount"), (0, "amount_out_of_range"),
                                          (AMOUNT_MAX + 1, "amount_out_of_range")])
def test_every_amount_change_is_checked_against_the_splits(gw: Gateway, amount: int, code: str):
    gw.ok(order("o9", splits=(Split("m2", 100),)))
    gw.refused(UpdateOrder(merchant_id="m1", order_id="o9", amount=amount), code)
    gw.ok(UpdateOrder(merchant_id="m1", order_id="o9", amount=100))


EXCEPTIONS = {
    "expired": lambda gw: gw.run(at=gw.order("o9").expires_at),
    "cancelled": lambda gw: gw.ok(CancelOrder("m1", "o9")),
}


@pytest.mark.parametrize("close", EXCEPTIONS)
def test_money_after_the_order_closed_is_an_exception_never_split(gw: Gateway, close: str):
    gw.ok(order("o9", expires_at=gw.now + 60 * S, splits=(Split("m2", 30),)))
    gw.ok(create("p9", order_id="o9", timeout_s=3600))
    EXCEPTIONS[close](gw)
    result = gw.ok(psp("p9"))
    assert result.events == [Event("payment.succeeded", "p9", gw.now), Event("order.exception", "o9", gw.now)]
    assert balances(gw, "m1.balance", "m2.balance") == [AMOUNT, 0]
    assert (gw.order("o9").error_code, gw.order("o9").error_message) == (
        "order_not_pending", f"money came for an order already {close}")
    gw.ok(refund("r1", "p9"))
    assert (gw.order("o9").status, balances(gw, "m1.balance")) == ("exception", [0])


@pytest.mark.parametrize("amount", [AMOUNT - 1, AMOUNT + 1])
def test_a_transfer_for_another_amount_is_an_exception_never_split(gw: Gateway, amount: int):
    gw.ok(order("o9", methods=("qr",), splits=(Split("m2", 30),)))
    gw.ok(bank_transfer("cb1", amount, "o9"))
    assert (gw.order("o9").status, balances(gw, "m1.balance", "m2.balance")) == ("exception", [amount, 0])
    assert (gw.order("o9").error_code, gw.order("o9").error_message) == (
        "amount_mismatch", f"{amount} came for an order of {AMOUNT}")


def test_a_partial_capture_is_an_exception_never_split(gw: Gateway):
    gw.ok(order("o9", splits=(Split("m2", 30),)))
    gw.ok(create("p9", order_id="o9", manual=True))
    gw.ok(psp("p9"))
    gw.ok(capture("p9", 40))
    assert (gw.order("o9").status, balances(gw, "m1.balance", "m2.balance")) == ("exception", [40, 0])


def test_shares_that_would_overflow_a_destination_leave_the_money_as_an_exception(gw: Gateway):
    gw.ok(bank_transfer("cb0", AMOUNT_MAX - 10, mid="m2"))
    gw.ok(order("o9", methods=("qr",), splits=(Split("m2", 11),)))
    gw.ok(bank_transfer("cb1", AMOUNT, "o9"))
    record = gw.order("o9")
    assert (record.status, record.error_code) == ("exception", "overflows_credits_posted")
    assert balances(gw, "m1.balance", "m2.balance") == [AMOUNT, AMOUNT_MAX - 10]


def test_every_account_takes_the_charts_flags(paid: Gateway):
    paid.ok(CreateCustomer(Customer(id="c1", merchant_id="m1", email="c1@example.com")))
    paid.ok(CreateSubAccount("m1", SubAccount("sub_store", "Store")), order("o9", methods=("qr",)),
            payout("po1", 10))
    paid.ok(bank_transfer("cb1", AMOUNT, "o9"))
    paid.ok(MoveWallet(merchant_id="m1", customer_id="c1", transfer_id="m1:w1", amount=5, currency="USD"))
    paid.ok(static_code_transfer("cb2", 5, "sub_store"))
    accounts = paid.engine.ledger.accounts
    expected = {"balance": HOLDS_MONEY, "payouts": HOLDS_MONEY, "clearing_piggybank": MIRRORS_INFLOW,
                "clearing_bank": MIRRORS_INFLOW}
    for name, flags in expected.items():
        assert accounts[system_account_id("m1", name, "USD")].flags == flags, name
    assert accounts[system_account_id("m1", "sub_store", "VND")].flags == HOLDS_MONEY
    assert accounts[wallet_account_id("m1", "c1", "USD")].flags == HOLDS_MONEY
    assert HOLDS_MONEY & AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS
    assert MIRRORS_INFLOW & AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS
    for name in ("balance", "payouts", "wallet"):
        paid.refused(CreateSubAccount("m1", SubAccount(name, "Clash")), "sub_account_id_invalid")
