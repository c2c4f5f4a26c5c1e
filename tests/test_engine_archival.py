"""End-of-day archival in the engine (engine/archival.py): what an Archive command takes out of memory, and what it
leaves.

m1's orders are paid by wallet (settled by no file), by card (settled by the acquirer's file), left pending,
cancelled or made exceptions; a day later an Archive takes the ended ones, their payments, refunds and invoices.
"""

import msgspec
import pytest

import engine.archival
from engine import Account, CreateAccounts, CreateTransfers, Transfer, TransferFlag
from engine.queries import GetOrder, GetPaymentRecord, ListOrders
from engine.records import (
    Archive,
    Archived,
    CancelOrder,
    CardDetails,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    CreateRefund,
    Customer,
    Merchant,
    MoveWallet,
    Order,
    PayOrderFromWallet,
    Payment,
    Reconcile,
    RecordPspResult,
    Refund,
    SettlementRow,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S  # 2023-11-14
DAY = 86_400


def order(oid: str, methods=("wallet",), expires_in_s: int | None = 3600) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id="m1", name=f"Order {oid}", amount=100, currency="USD",
                                   payment_methods=list(methods)), expires_in_s=expires_in_s)


def wallet_pay(oid: str) -> PayOrderFromWallet:
    return PayOrderFromWallet(merchant_id="m1", order_id=oid, customer_id="c1", payment_id=f"pay_{oid}",
                              transfer_id=f"m1:pay_{oid}")


def card_pay(oid: str) -> list:
    return [CreatePayment(payment=Payment(id=f"pay_{oid}", merchant_id="m1", amount=0, currency="", order_id=oid,
                                          token_id=f"tok_{oid}", card=CardDetails("visa", "4242", 12, 2030)),
                          sealed_card=b"sealed", processing_timeout_s=0),
            RecordPspResult(merchant_id="m1", payment_id=f"pay_{oid}", callback_id=f"cb_{oid}", result="authorized",
                            transfer_id=f"m1:pay_{oid}.authorization")]


def archive(book: Driver, at: int | None = None) -> Archived:
    outcome = book.do(Archive(DAY), at=at)
    assert outcome.code == "ok"
    return outcome.record


@pytest.fixture
def book() -> Driver:
    driver = Driver(now=T0)
    driver.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")),
              CreateCustomer(Customer(id="c1", merchant_id="m1", email="c1@example.com")))
    driver.ok(MoveWallet(merchant_id="m1", customer_id="c1", transfer_id="m1:funds", amount=10_000, currency="USD"))
    driver.ok(order("o_paid"), order("o_refunded"), order("o_pending", expires_in_s=None), order("o_cancelled"),
              order("o_card", methods=("card",)))
    driver.ok(wallet_pay("o_paid"), wallet_pay("o_refunded"), CancelOrder("m1", "o_cancelled"), *card_pay("o_card"))
    driver.ok(CreateRefund(refund=Refund(id="re_1", merchant_id="m1", payment_id="pay_o_refunded", amount=100),
                           transfer_id="m1:re_1"))
    return driver


def test_a_day_later_ended_orders_their_payments_refunds_and_invoices_leave_memory(book: Driver):
    invoices = {order_id: book.query(GetOrder("m1", order_id)).record.invoice_id
                for order_id in ("o_paid", "o_refunded", "o_card")}
    book.ok(order("o_young"), at=book.now + DAY * S)
    book.ok(wallet_pay("o_young"))  # paid a day later: too young to go
    archived = archive(book)
    # An order whose card payment waits for the acquirer's file has ended all the same: the payment stays.
    assert sorted(order.id for order in archived.orders) == ["o_cancelled", "o_card", "o_paid", "o_refunded"]
    assert sorted(payment.id for payment in archived.payments) == ["pay_o_paid", "pay_o_refunded"]
    assert [refund.id for refund in archived.refunds] == ["re_1"]
    assert sorted(invoice.id for invoice in archived.invoices) == sorted(invoices.values())
    assert book.query(GetOrder("m1", "o_paid")).record is None
    assert book.query(GetPaymentRecord("m1", "refund", "re_1")).record is None
    left = [order.id for order in book.query(ListOrders(merchant_id="m1")).records]
    assert left == ["o_young", "o_pending"]  # too young, and pending for ever
    assert book.query(GetPaymentRecord("m1", "payment", "pay_o_card")).record.status == "succeeded"
    assert archive(book).orders == []  # nothing more


def test_a_card_payment_goes_once_its_file_settled_it_and_its_refunds(book: Driver):
    book.ok(CreateRefund(refund=Refund(id="re_card", merchant_id="m1", payment_id="pay_o_card", amount=40),
                         transfer_id="m1:re_card"))
    book.ok(Reconcile(reconciliation_id="rec_1", provider="piggybank", date="2023-11-14", request_hash="h",
                      rows=[SettlementRow("pay_o_card", 100, "usd", "captured")]))
    book.run(at=book.now + DAY * S)
    assert "pay_o_card" not in [payment.id for payment in archive(book).payments]  # its refund still waits
    book.ok(Reconcile(reconciliation_id="rec_2", provider="piggybank", date="2023-11-15", request_hash="h",
                      rows=[SettlementRow("re_card", 40, "usd", "refunded")]))
    book.run(at=book.now + DAY * S)
    archived = archive(book)
    assert "pay_o_card" in [payment.id for payment in archived.payments]
    assert "re_card" in [refund.id for refund in archived.refunds]


def test_at_most_so_many_go_per_command_and_the_answer_says_more_are_left(book: Driver, monkeypatch):
    monkeypatch.setattr(engine.archival, "MAX_ARCHIVED", 2)
    book.run(at=book.now + DAY * S)
    answers = [archive(book)]
    while answers[-1].more:
        answers.append(archive(book))
    kinds = ("orders", "payments", "refunds", "invoices", "events")
    assert all(len(getattr(answer, kind)) <= 2 for answer in answers for kind in kinds)
    assert [len(answer.orders) for answer in answers][:3] == [2, 2, 0]
    assert sum(len(answer.payments) for answer in answers) == 2
    assert len(answers) > 3 and not archive(book).more


def test_archival_replays_and_restores_to_the_same_state(book: Driver):
    book.run(at=book.now + DAY * S)
    copy = book.restored()
    assert archive(copy) == archive(book)
    assert copy.engine.state_hash() == book.engine.state_hash()
    assert book.restored().engine.state_hash() == book.engine.state_hash()
    listed = [order.id for order in book.restored().query(ListOrders(merchant_id="m1")).records]
    assert listed == [order.id for order in book.query(ListOrders(merchant_id="m1")).records]


def test_a_refused_age_changes_nothing(book: Driver):
    book.refused(Archive(-1), "age_invalid")


def test_transfers_made_before_the_cut_off_leave_their_statements_and_history_keeps_the_balance_then(book: Driver):
    balance = "m1:.balance.USD"
    before_history = list(book.engine.ledger.accounts[balance].history)
    book.run(at=book.now + DAY * S)
    archived = archive(book)
    ledger = book.engine.ledger
    assert {transfer.id for transfer in archived.transfers} >= {"m1:funds", "m1:pay_o_paid", "m1:re_1"}
    assert all(transfer.id not in ledger.transfers for transfer in archived.transfers)
    assert ledger.accounts[balance].transfers == []
    history = ledger.accounts[balance].history
    assert history == before_history[-1:]  # the balance as it stood at the cut-off
    assert dict(archived.histories)[balance] == before_history[:-1]
    assert book.restored().engine.state_hash() == book.engine.state_hash()


def test_an_open_pending_transfer_goes_held_and_holds_nothing_back(book: Driver):
    book.run(CreateAccounts([Account("m1:a", "usd"), Account("m1:b", "usd")]))
    book.run(CreateTransfers([Transfer("m1:hold", "m1:a", "m1:b", 5, "usd", flags=TransferFlag.PENDING),
                              Transfer("m1:timed", "m1:a", "m1:b", 7, "usd", flags=TransferFlag.PENDING,
                                       timeout_s=3 * DAY)]))
    book.run(CreateTransfers([Transfer("m1:later", "m1:a", "m1:b", 5, "usd")]))
    book.run(at=book.now + DAY * S)
    archived = archive(book)
    ledger = book.engine.ledger
    assert {"m1:hold", "m1:timed", "m1:later"} <= {transfer.id for transfer in archived.transfers}
    assert set(ledger.held) == {"m1:hold", "m1:timed"} and ledger.accounts["m1:a"].transfers == []
    assert ledger.accounts["m1:a"].debits_pending == 12
    # The same id for another pending transfer is taken while the hold is held; a plain one's may be taken again.
    refused = book.run(CreateTransfers([Transfer("m1:hold", "m1:a", "m1:b", 1, "usd", flags=TransferFlag.PENDING)]))
    assert refused.results[0] != [0]
    assert book.restored().engine.state_hash() == book.engine.state_hash()
    book.run(CreateTransfers([Transfer("m1:post", pending_id="m1:hold", flags=TransferFlag.POST_PENDING)]))
    assert ledger.accounts["m1:b"].credits_posted == 10 and ledger.accounts["m1:a"].debits_pending == 7
    book.run(at=book.now + 2 * DAY * S)  # the timed one expires, held
    assert ledger.accounts["m1:a"].debits_pending == 0
    archived = archive(book)
    assert ledger.held == {} and "m1:post" in {transfer.id for transfer in archived.transfers}
    assert book.restored().engine.state_hash() == book.engine.state_hash()


def test_an_archive_undone_puts_every_transfer_back_where_it_was(book: Driver):
    book.run(at=book.now + DAY * S)
    ledger = book.engine.ledger
    before = book.engine.state_hash()
    statements = {account.id: list(account.transfers) for account in ledger.accounts.values()}
    ledger.begin_command()
    assert ledger.archive_transfers(book.now - DAY * S // 2, 100).transfers
    ledger.undo_command()
    assert book.engine.state_hash() == before
    assert {account.id: list(account.transfers) for account in ledger.accounts.values()} == statements


def test_a_chargeback_of_an_archived_order_payment_brings_both_back_and_a_later_refund_marks_the_order(book: Driver):
    book.ok(Reconcile(reconciliation_id="rec_1", provider="piggybank", date="2023-11-14", request_hash="h",
                      rows=[SettlementRow("pay_o_card", 100, "usd", "captured")]))
    book.run(at=book.now + DAY * S)
    archived = archive(book)
    cold = {record.id: record for record in (*archived.orders, *archived.payments)}
    assert {"o_card", "pay_o_card"} <= set(cold)
    chargeback = Reconcile(reconciliation_id="rec_2", provider="piggybank", date="2023-11-15", request_hash="h",
                           rows=[SettlementRow("pay_o_card", 30, "usd", "chargeback")],
                           archived_payments=[cold["pay_o_card"]])
    # Without its order the archived payment is not taken: nothing is posted.
    assert book.do(chargeback).record.missing_in_ledger == ["pay_o_card"]
    chargeback = msgspec.structs.replace(chargeback, reconciliation_id="rec_3", archived_orders=[cold["o_card"]])
    assert book.do(chargeback).record.chargebacks == ["pay_o_card"]
    commerce = book.engine.commerce
    assert "o_card" in commerce.orders.unlisted and "pay_o_card" in commerce.payments.unlisted
    book.ok(CreateRefund(refund=Refund(id="re_card", merchant_id="m1", payment_id="pay_o_card", amount=20),
                         transfer_id="m1:re_card"))
    assert book.query(GetOrder("m1", "o_card")).record.status == "partially_refunded"
    assert book.restored().engine.state_hash() == book.engine.state_hash()
