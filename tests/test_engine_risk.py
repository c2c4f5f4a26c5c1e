"""The engine's part of the risk rules: payments refused by the edge's verdict, and the block list.

A refused payment is recorded `failed` with `risk_rejected` and its reason, raises payment.failed, and moves no
money; the amount limit is checked by the engine against the amount it settles on (an order's). The block list is
engine state: added, removed, listed newest first, and kept through snapshot and restore. Old journals decode.
"""

import msgspec
import pytest

from engine import blocklist
from engine.batch import Batch
from engine.machine import Engine, Snapshot
from engine.queries import GetOrder, GetPaymentRecord, ListBlocklist, LookupAccounts
from engine.records import (
    AddToBlocklist,
    BlocklistEntry,
    CardDetails,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    Customer,
    Merchant,
    MoveWallet,
    Order,
    PayOrderFromWallet,
    Payment,
    RemoveFromBlocklist,
    system_account_id,
    wallet_account_id,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from engine.types import Event
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S
FAR = T0 + 10**6 * S
CARD = CardDetails("visa", "4242", 12, 2031, "fp0000000000000000000001")
REASON = "card on the block list: stolen"


def order(oid: str = "o1", amount: int = 100) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id="m1", name="Coffee", amount=amount, currency="USD",
                                   payment_methods=["card", "wallet"], customer_id="c-42",
                                   customer_email="Ann@Example.com", expires_at=FAR))


def limits(usd: int) -> dict[str, int]:
    """A tier's limits as the edge sends them: USD capped at `usd` (0: no limit), another currency capped at 1."""
    return {"USD": usd, "EUR": 1} if usd else {"EUR": 1}


def card_payment(pid: str = "p1", *, order_id: str = "o1", amount: int = 1, risk_reason: str = "",
                 amount_limit: int = 0) -> CreatePayment:
    payment = Payment(id=pid, merchant_id="m1", amount=amount, currency="USD", order_id=order_id, card=CARD,
                      token_id=f"tok_{pid}", customer_ip="203.0.113.7")
    return CreatePayment(payment=payment, processing_timeout_s=30, sealed_card=b"sealed", risk_reason=risk_reason,
                         amount_limits=limits(amount_limit))


def wallet_payment(pid: str = "p1", *, risk_reason: str = "", amount_limit: int = 0) -> PayOrderFromWallet:
    return PayOrderFromWallet(merchant_id="m1", order_id="o1", customer_id="cus_1", payment_id=pid,
                              transfer_id=f"m1:{pid}", customer_ip="198.51.100.9", risk_reason=risk_reason,
                              amount_limits=limits(amount_limit))


def entry(value: str = "203.0.113.7", kind: str = "ip", reason: str = "") -> BlocklistEntry:
    return BlocklistEntry(id=f"blk_{value}", kind=kind, value=value, reason=reason)


class Gateway(Driver):
    def payment(self, pid: str = "p1") -> Payment:
        return self.query(GetPaymentRecord("m1", "payment", pid)).record

    def order(self) -> Order:
        return self.query(GetOrder("m1", "o1")).record

    def accounts(self) -> list:
        return self.query(LookupAccounts([system_account_id("m1", "balance", "USD"),
                                          wallet_account_id("m1", "cus_1", "USD")])).accounts

    def blocklist(self, limit: int = 20, starting_after: str = "") -> tuple[list[str], bool]:
        answer = self.query(ListBlocklist(limit=limit, starting_after=starting_after))
        return [record.id for record in answer.records], answer.has_more


@pytest.fixture
def gw() -> Gateway:
    gateway = Gateway()
    gateway.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com", tier="basic")), order(),
               CreateCustomer(Customer(id="cus_1", merchant_id="m1", email="ann@example.com")), at=T0)
    return gateway


# Card payments


def test_a_refused_card_payment_is_failed_with_its_reason_and_moves_nothing(gw: Gateway):
    result = gw.ok(card_payment(risk_reason=REASON))
    record = result.results[0].record
    assert (record.status, record.failure_code, record.failure_message) == ("failed", "risk_rejected", REASON)
    assert (record.amount_captured, record.amount_capturable, record.deadline_at) == (0, 0, 0)
    assert result.events == [Event("payment.created", "p1", gw.now), Event("payment.failed", "p1", gw.now)]
    assert gw.accounts() == [None, None]  # not a single account opened, let alone moved
    assert (gw.order().status, gw.order().error_code, gw.order().error_message) == ("pending", "risk_rejected", REASON)
    gw.run(at=gw.now + 60 * S)  # past any processing deadline: it stays as it was
    assert gw.payment().failure_code == "risk_rejected"
    # the card was vaulted as usual, so later payments with its token are known by its fingerprint too
    assert gw.engine.commerce.payments.card_of("m1", "tok_p1").card.fingerprint == CARD.fingerprint


def test_a_payment_records_what_the_risk_rules_know_its_payer_by(gw: Gateway):
    record = gw.ok(card_payment()).results[0].record
    assert record.status == "processing" and record.deadline_at == gw.now + 30 * S
    assert (record.card.fingerprint, record.customer_ip) == (CARD.fingerprint, "203.0.113.7")
    assert (record.customer_id, record.customer_email) == ("c-42", "Ann@Example.com")  # from the order
    without_order = gw.ok(card_payment("p2", order_id="", amount=5)).results[0].record
    assert (without_order.customer_id, without_order.customer_email) == ("", "")


@pytest.mark.parametrize("order_amount, limit, status", [(100, 100, "processing"), (101, 100, "failed"),
                                                         (10**9, 0, "processing")])
def test_the_amount_limit_holds_the_amount_the_engine_settles_on(gw: Gateway, order_amount, limit, status):
    gw.ok(order("o2", amount=order_amount))
    # the edge saw some other amount (an order changed meanwhile): the order's own counts
    record = gw.ok(card_payment(order_id="o2", amount=1, amount_limit=limit)).results[0].record
    assert record.status == status
    if status == "failed":
        assert record.failure_code == "risk_rejected"
        assert record.failure_message == "the amount 101 USD is above the basic tier's limit of 100"


def test_a_refused_payment_leaves_the_order_payable(gw: Gateway):
    gw.ok(card_payment("p1", risk_reason=REASON))
    assert gw.ok(card_payment("p2")).results[0].record.status == "processing"


# Wallet payments


def test_a_refused_wallet_payment_fails_and_leaves_the_wallet_alone(gw: Gateway):
    gw.ok(MoveWallet(merchant_id="m1", customer_id="cus_1", transfer_id="m1:dep", amount=500, currency="USD"))
    record = gw.ok(wallet_payment(risk_reason="IP address on the block list")).results[0].record
    assert (record.method, record.status, record.failure_code) == ("wallet", "failed", "risk_rejected")
    assert (record.customer_id, record.customer_email, record.customer_ip) == ("cus_1", "Ann@Example.com",
                                                                               "198.51.100.9")
    balance, wallet = gw.accounts()
    assert balance is None and wallet.credits_posted - wallet.debits_posted == 500
    assert gw.order().status == "pending"
    over = gw.ok(wallet_payment("p2", amount_limit=99)).results[0].record
    assert (over.status, over.failure_code) == ("failed", "risk_rejected")
    paid = gw.ok(wallet_payment("p3", amount_limit=100)).results[0].record
    assert paid.status == "succeeded" and gw.order().status == "paid"


def test_a_refused_wallet_payment_is_recorded_even_without_funds(gw: Gateway):
    assert gw.ok(wallet_payment(risk_reason=REASON)).results[0].record.status == "failed"
    assert gw.refused(wallet_payment("p2"), "insufficient_funds").record.id == "o1"


# The block list


def test_block_list_entries_are_added_once_and_removed_once(gw: Gateway):
    added = gw.ok(AddToBlocklist(entry(reason="fraud ring"))).results[0].record
    assert (added.id, added.kind, added.value, added.reason, added.created_at) == (
        "blk_203.0.113.7", "ip", "203.0.113.7", "fraud ring", gw.now)
    duplicate = gw.do(AddToBlocklist(entry(reason="another reason")))
    assert duplicate.code == "exists" and duplicate.record.reason == "fraud ring"
    removed = gw.ok(RemoveFromBlocklist("blk_203.0.113.7")).results[0].record
    assert removed.reason == "fraud ring"
    gw.refused(RemoveFromBlocklist("blk_203.0.113.7"), "blocklist_entry_not_found")
    assert gw.blocklist() == ([], False)


def test_block_list_is_listed_newest_first_in_pages(gw: Gateway):
    for value in ("a@example.com", "b@example.com", "c@example.com"):
        gw.ok(AddToBlocklist(entry(value, "email")))
    assert gw.blocklist() == (["blk_c@example.com", "blk_b@example.com", "blk_a@example.com"], False)
    assert gw.blocklist(limit=2) == (["blk_c@example.com", "blk_b@example.com"], True)
    assert gw.blocklist(limit=2, starting_after="blk_b@example.com") == (["blk_a@example.com"], False)
    assert gw.blocklist(starting_after="blk_a@example.com") == ([], False)
    assert gw.blocklist(starting_after="blk_unknown") == ([], False)


def test_block_list_is_bounded(gw: Gateway, monkeypatch):
    monkeypatch.setattr(blocklist, "MAX_BLOCKLIST_ENTRIES", 2)
    gw.ok(AddToBlocklist(entry("192.0.2.1")), AddToBlocklist(entry("192.0.2.2")))
    gw.refused(AddToBlocklist(entry("192.0.2.3")), "blocklist_full")
    gw.ok(RemoveFromBlocklist("blk_192.0.2.1"))
    gw.ok(AddToBlocklist(entry("192.0.2.3")))


def test_block_list_survives_snapshot_and_restore(gw: Gateway):
    gw.ok(AddToBlocklist(entry()), AddToBlocklist(entry("x@example.com", "email")))
    gw.ok(card_payment(risk_reason=REASON))
    restored = gw.restored()
    assert restored.engine.state_hash() == gw.engine.state_hash()
    assert restored.blocklist() == gw.blocklist()
    assert restored.payment().failure_message == REASON
    # and a block list change is a change of state
    before = gw.engine.state_hash()
    gw.ok(RemoveFromBlocklist("blk_203.0.113.7"))
    assert gw.engine.state_hash() != before


# Journals and snapshots written before the risk rules


def test_old_commands_cards_and_snapshots_still_decode():
    batch_decoder = msgspec.msgpack.Decoder(Batch)
    payment = msgspec.to_builtins(Payment(id="p1", merchant_id="m1", amount=5, currency="USD"))
    old_card = ["visa", "4242", 12, 2031]
    old_create = ["create_payment", {**payment, "card": old_card}, 30, b""]
    old_wallet = ["pay_order_from_wallet", "m1", "o1", "cus_1", "p2", "m1:p2"]
    batch = batch_decoder.decode(msgspec.msgpack.encode([1, T0, [old_create, old_wallet]]))
    create, wallet = batch.commands
    assert (create.risk_reason, create.amount_limits, create.payment.card.fingerprint) == ("", {}, "")
    assert (create.payment.customer_ip, create.payment.customer_email) == ("", "")
    assert (wallet.customer_ip, wallet.risk_reason, wallet.amount_limits) == ("", "", {})
    old_snapshot = msgspec.msgpack.decode(Engine().snapshot())[:-1]  # without the block list
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(old_snapshot), type=Snapshot).blocklist == []
    assert Engine.restore(msgspec.msgpack.encode(old_snapshot)).commerce.blocklist.entries == {}
