"""Reconciliation against crafted settlement files: every kind of mismatch, and the ledger's books before and after.

Each test's merchant m1 takes card payments at the acquirer piggybank on 2023-11-14 (engine time); a file for that
day is reconciled (engine/reconciliations.py). The books: what the acquirer still owes (`clearing_piggybank`), what
it paid into the bank (`settled_piggybank`), the fees it kept, refunds owed to it, chargebacks owed by the merchant.
After a file whose refunds come with or after their payments, the bank account moved by exactly the file's net
(captures less refunds, chargebacks and fees), to the unit; every engine a test builds passes the double-entry check.
"""

import msgspec
import pytest

import engine.reconciliations
from engine.queries import FindSettlementItems, GetPaymentRecord, GetReconciliation, ListReconciliations
from engine.records import (
    Archive,
    CreateCustomer,
    CreateDeposit,
    CreateMerchant,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    Customer,
    Deposit,
    Merchant,
    MoveWallet,
    PayOrderFromWallet,
    Payment,
    Payout,
    Reconcile,
    RecordPayoutResult,
    RecordPspResult,
    Refund,
    SettlementRow,
    CardDetails,
    system_account_id,
    wallet_account_id,
)
from engine.types import AMOUNT_MAX
from engine.types import NANOSECONDS_PER_SECOND as S
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z
DAY = "2023-11-14"
NEXT_DAY = "2023-11-15"
ACCOUNTS = ("balance", "clearing_piggybank", "settled_piggybank", "fees_piggybank", "refunds_piggybank", "disputes")


def card(pid: str, amount: int) -> CreatePayment:
    return CreatePayment(payment=Payment(id=pid, merchant_id="m1", amount=amount, currency="USD", token_id=f"tok_{pid}",
                                         card=CardDetails("visa", "4242", 12, 2030)),
                         sealed_card=b"sealed", processing_timeout_s=0)


def authorized(pid: str) -> RecordPspResult:
    return RecordPspResult(merchant_id="m1", payment_id=pid, callback_id=f"cb_{pid}", result="authorized",
                           transfer_id=f"m1:{pid}.authorization")


def refund(rid: str, pid: str, amount: int) -> CreateRefund:
    return CreateRefund(refund=Refund(id=rid, merchant_id="m1", payment_id=pid, amount=amount), transfer_id=f"m1:{rid}")


def row(transaction_id: str, amount: int, status: str = "captured", fee: int = 0, currency: str = "usd"):
    return SettlementRow(transaction_id, amount, currency, status, fee=fee)


def reconcile(rows: list[SettlementRow], rec_id: str = "rec_1", date: str = DAY, unknown=(), request_hash: str = "",
              provider: str = "piggybank") -> Reconcile:
    return Reconcile(reconciliation_id=rec_id, provider=provider, date=date, request_hash=request_hash or rec_id,
                     rows=rows, unknown=list(unknown))


class Books(Driver):
    def books(self) -> dict[str, int]:
        """Each account's balance on its normal side (money held; money owed to us for the debit-normal ones)."""
        books = {}
        for name in ACCOUNTS:
            account = self.engine.ledger.accounts.get(system_account_id("m1", name, "USD"))
            net = 0 if account is None else account.credits_posted - account.debits_posted
            books[name] = net if name in ("balance", "refunds_piggybank") else -net
        return books

    def payment(self, pid: str) -> Payment:
        return self.query(GetPaymentRecord("m1", "payment", pid)).record

    def part(self, rec_id: str = "rec_1"):
        return self.query(GetReconciliation(rec_id)).record

    def pay(self, *amounts: int, first: int = 1) -> list[str]:
        pids = [f"pay_{first + index}" for index in range(len(amounts))]
        self.ok(*(card(pid, amount) for pid, amount in zip(pids, amounts)))
        self.ok(*(authorized(pid) for pid in pids))
        return pids


@pytest.fixture
def book() -> Books:
    driver = Books(now=T0)
    driver.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")),
              CreateCustomer(Customer(id="cus_1", merchant_id="m1", email="c@example.com")))
    return driver


def test_matched_payments_settle_and_the_bank_account_moves_by_the_file_to_the_unit(book: Books):
    book.pay(1000, 2500)
    assert book.books() == dict(balance=3500, clearing_piggybank=3500, settled_piggybank=0, fees_piggybank=0,
                                refunds_piggybank=0, disputes=0)
    result = book.run(reconcile([row("pay_1", 1000, fee=30), row("pay_2", 2500, fee=75)]))
    part = result.results[0].record
    assert (part.matched, part.missing_in_settlement, part.missing_in_ledger, part.amount_mismatch, part.fees) == (
        ["pay_1", "pay_2"], [], [], [], {"USD": 105})
    assert book.books() == dict(balance=3500, clearing_piggybank=0, settled_piggybank=3500 - 105, fees_piggybank=105,
                                refunds_piggybank=0, disputes=0)
    assert [book.payment(pid).status for pid in ("pay_1", "pay_2")] == ["settled", "settled"]
    assert [(event.kind, event.object_id) for event in result.events] == [
        ("payment.settled", "pay_1"), ("payment.settled", "pay_2"), ("reconciliation.completed", "rec_1")]


def test_a_refund_in_the_same_file_as_its_payment_is_deducted_once(book: Books):
    book.pay(1000)
    book.ok(refund("re_1", "pay_1", 300))
    book.ok(reconcile([row("re_1", 300, "refunded", fee=2), row("pay_1", 1000, fee=30)]))
    assert book.books() == dict(balance=700, clearing_piggybank=0, settled_piggybank=1000 - 300 - 32,
                                fees_piggybank=32, refunds_piggybank=0, disputes=0)
    assert book.query(GetPaymentRecord("m1", "refund", "re_1")).record.status == "settled"


@pytest.mark.parametrize("refund_first", [True, False])
def test_a_refund_made_before_its_payment_settled_and_listed_in_another_file_evens_out(book: Books, refund_first):
    book.pay(1000)
    book.ok(refund("re_1", "pay_1", 300))
    files = [[row("re_1", 300, "refunded")], [row("pay_1", 1000)]]
    if not refund_first:
        files.reverse()
    book.ok(reconcile(files[0], "rec_1"))
    book.ok(reconcile(files[1], "rec_2", date=NEXT_DAY))
    assert book.books() == dict(balance=700, clearing_piggybank=0, settled_piggybank=700, fees_piggybank=0,
                                refunds_piggybank=0, disputes=0)


def test_a_refund_of_a_settled_payment_is_owed_to_the_acquirer_until_its_file_deducts_it(book: Books):
    book.pay(1000)
    book.ok(reconcile([row("pay_1", 1000)]))
    book.ok(refund("re_1", "pay_1", 400))
    assert book.books() == dict(balance=600, clearing_piggybank=0, settled_piggybank=1000, fees_piggybank=0,
                                refunds_piggybank=400, disputes=0)
    book.ok(reconcile([row("re_1", 400, "refunded", fee=1)], "rec_2", date=NEXT_DAY))
    assert book.books() == dict(balance=600, clearing_piggybank=0, settled_piggybank=1000 - 400 - 1,
                                fees_piggybank=1, refunds_piggybank=0, disputes=0)


def test_captures_and_refunds_of_the_day_the_file_left_out_are_missing_in_settlement_and_settle_later(book: Books):
    book.pay(1000, 2000, 3000)
    book.ok(refund("re_1", "pay_3", 100))
    result = book.run(reconcile([row("pay_1", 1000)]))
    assert result.results[0].record.missing_in_settlement == ["pay_2", "pay_3", "re_1"]
    assert ("reconciliation.mismatch", "rec_1") in [(event.kind, event.object_id) for event in result.events]
    assert book.payment("pay_2").status == "succeeded"
    assert book.books()["clearing_piggybank"] == 2000 + 3000 - 100
    part = book.do(reconcile([row("pay_2", 2000), row("pay_3", 3000), row("re_1", 100, "refunded")], "rec_2",
                             date=NEXT_DAY)).record
    assert (part.matched, part.missing_in_settlement) == (["pay_2", "pay_3", "re_1"], [])
    assert book.books()["settled_piggybank"] == 1000 + 2000 + 3000 - 100


def test_rows_the_ledger_does_not_hold_are_missing_in_ledger_and_move_nothing(book: Books):
    book.pay(1000)
    book.ok(card("pay_w", 10))  # never authorized
    book.ok(MoveWallet(merchant_id="m1", customer_id="cus_1", transfer_id="m1:dep", amount=50, currency="USD"),
            PayOrderFromWallet(merchant_id="m1", order_id="", customer_id="cus_1", payment_id="pay_wallet",
                               transfer_id="m1:pay_wallet", amount=50, currency="USD"))
    before = book.books()
    part = book.do(reconcile([row("re_none", 5, "refunded"), row("pay_wallet", 50), row("pay_w", 10)],
                             unknown=[row("pay_elsewhere", 7)])).record
    assert part.missing_in_ledger == ["re_none", "pay_wallet", "pay_w", "pay_elsewhere"]
    assert (part.matched, part.missing_in_settlement) == ([], ["pay_1"])
    assert book.books() == before


@pytest.mark.parametrize("settled", [row("pay_1", 999), row("pay_1", 1000, currency="eur")])
def test_another_amount_or_currency_is_an_amount_mismatch_and_the_payment_waits_unsettled(book: Books, settled):
    book.pay(1000)
    before = book.books()
    part = book.do(reconcile([settled])).record
    assert (part.amount_mismatch, part.matched, part.missing_in_settlement) == (["pay_1"], [], [])
    assert book.books() == before and book.payment("pay_1").status == "succeeded"
    book.ok(reconcile([row("pay_1", 1000)], "rec_2", date=NEXT_DAY))  # the corrected file settles it
    assert book.payment("pay_1").status == "settled"


@pytest.mark.parametrize("case", ["fees", "refund_before_its_large_payment", "chargeback_fee"])
def test_rows_whose_sums_would_pass_what_an_account_holds_are_amount_mismatches_and_move_nothing(book: Books, case):
    """Limits hold by construction, but not the int64 fields: the acquirer's fees add up in `fees_`, and a refund
    settled before its payment goes back through `clearing_`, which the capture already debited."""
    if case == "refund_before_its_large_payment":
        book.pay(AMOUNT_MAX)
        book.ok(refund("re_1", "pay_1", AMOUNT_MAX))
        first, refused = [], row("re_1", AMOUNT_MAX, "refunded")
    else:
        book.pay(10, 20)
        first = [row("pay_1", 10, fee=AMOUNT_MAX)]
        refused = row("pay_2", 20, "chargeback" if case == "chargeback_fee" else "captured", fee=1)
    book.ok(reconcile(first))
    before = book.books()
    result = book.run(reconcile([refused], "rec_2", date=NEXT_DAY))
    part = result.results[0].record
    assert (part.matched, part.chargebacks, part.amount_mismatch) == ([], [], [refused.transaction_id])
    assert book.engine.failures == [] and book.books() == before
    assert [event.kind for event in result.events] == ["reconciliation.mismatch", "reconciliation.completed"]


def test_a_row_listed_twice_or_settled_already_is_a_duplicate_and_settles_once(book: Books):
    book.pay(1000)
    part = book.do(reconcile([row("pay_1", 1000, fee=3), row("pay_1", 1000, fee=3)])).record
    assert (part.matched, part.duplicates) == (["pay_1"], ["pay_1"])
    part = book.do(reconcile([row("pay_1", 1000, fee=3)], "rec_2", date=NEXT_DAY)).record
    assert (part.matched, part.duplicates) == ([], ["pay_1"])
    assert book.books()["settled_piggybank"] == 997 and book.books()["fees_piggybank"] == 3


def test_a_chargeback_debits_the_merchant_into_disputes_and_raises_payment_disputed(book: Books):
    book.pay(1000, 500)
    book.ok(reconcile([row("pay_1", 1000), row("pay_2", 500)]))
    result = book.run(reconcile([row("pay_1", 400, "chargeback", fee=15)], "rec_2", date=NEXT_DAY))
    assert result.results[0].record.chargebacks == ["pay_1"]
    assert ("payment.disputed", "pay_1") in [(event.kind, event.object_id) for event in result.events]
    assert book.books() == dict(balance=1100, clearing_piggybank=0, settled_piggybank=1500 - 400 - 15,
                                fees_piggybank=15, refunds_piggybank=0, disputes=0)
    payment = book.payment("pay_1")
    assert (payment.status, payment.amount_disputed) == ("disputed", 400)
    # What the chargeback took can no longer be refunded; a second report of it is a duplicate.
    book.refused(refund("re_1", "pay_1", 601), "amount_too_large")
    book.ok(refund("re_1", "pay_1", 600))
    assert book.do(reconcile([row("pay_1", 400, "chargeback")], "rec_3", date=NEXT_DAY)).record.duplicates == ["pay_1"]


def test_a_chargeback_of_more_than_is_left_of_the_payment_is_an_amount_mismatch(book: Books):
    book.pay(1000)
    book.ok(reconcile([row("pay_1", 1000)]))
    book.ok(refund("re_1", "pay_1", 700))
    before = book.books()
    part = book.do(reconcile([row("pay_1", 301, "chargeback")], "rec_2", date=NEXT_DAY)).record
    assert (part.amount_mismatch, part.chargebacks) == (["pay_1"], [])
    assert book.books() == before and book.payment("pay_1").status == "settled"
    book.ok(reconcile([row("pay_1", 300, "chargeback")], "rec_3", date=NEXT_DAY))
    assert (book.books()["balance"], book.books()["disputes"]) == (0, 0)


def test_a_shortfall_stays_owed_in_disputes_until_the_merchant_has_money_again(book: Books):
    book.pay(1000)
    book.ok(reconcile([row("pay_1", 1000)]))
    book.ok(CreatePayout(payout=Payout(id="po_1", merchant_id="m1", amount=950, currency="USD", hold_id="m1:po_1")))
    # Most of the money is on its way to the merchant's bank when the cardholder's bank takes back 100.
    book.ok(reconcile([row("pay_1", 100, "chargeback")], "rec_2", date=NEXT_DAY))
    assert (book.books()["balance"], book.books()["disputes"]) == (950, 50)  # 950 held for the payout; 50 owed
    assert book.engine.ledger.available(system_account_id("m1", "balance", "USD")) == 0
    assert book.engine.commerce.reconciliations.owing == {("m1", "USD"): True}
    book.pay(30, first=2)
    book.ok(reconcile([], "rec_3", date=NEXT_DAY))
    assert book.books()["disputes"] == 20
    assert book.restored().engine.commerce.reconciliations.owing == {("m1", "USD"): True}
    book.pay(70, first=3)
    book.ok(reconcile([], "rec_4", date=NEXT_DAY))
    assert book.books()["disputes"] == 0 and book.engine.ledger.available(
        system_account_id("m1", "balance", "USD")) == 50
    assert book.engine.commerce.reconciliations.owing == {}


def test_a_shortfall_owed_for_an_archived_payment_is_recovered_by_a_restored_engine_as_by_the_original(book: Books):
    book.pay(1000)
    book.ok(reconcile([row("pay_1", 1000)]))
    book.ok(CreatePayout(payout=Payout(id="po_1", merchant_id="m1", amount=1000, currency="USD", hold_id="m1:po_1")))
    book.ok(reconcile([row("pay_1", 100, "chargeback")], "rec_2", date=NEXT_DAY))
    book.ok(RecordPayoutResult(merchant_id="m1", payout_id="po_1", callback_id="cb_po_1", paid=False,
                               transfer_id="m1:po_1.returned"))
    archived_away(book, "pay_1")  # the payment charged back leaves memory; what the merchant owes stays
    copy = book.restored()
    assert copy.engine.commerce.reconciliations.owing == {("m1", "USD"): True}
    at = book.now + S
    command = reconcile([], "rec_3", date=NEXT_DAY)
    assert copy.do(command, at=at) == book.do(command, at=at)
    assert book.books()["disputes"] == 0 and copy.engine.state_hash() == book.engine.state_hash()


def test_a_forgotten_part_run_again_leaves_what_is_owed_to_the_next_reconciliation(book: Books, monkeypatch):
    monkeypatch.setattr(engine.reconciliations, "MAX_RECONCILIATIONS", 1)
    book.pay(1000, 500)
    book.ok(CreatePayout(payout=Payout(id="po_1", merchant_id="m1", amount=1500, currency="USD", hold_id="m1:po_1")))
    book.ok(reconcile([row("pay_1", 100, "chargeback")]))
    book.ok(RecordPayoutResult(merchant_id="m1", payout_id="po_1", callback_id="cb_po_1", paid=False,
                               transfer_id="m1:po_1.returned"))
    book.ok(reconcile([], "rec_2"))  # recovers the 100 under its own id
    book.ok(CreatePayout(payout=Payout(id="po_2", merchant_id="m1", amount=1400, currency="USD", hold_id="m1:po_2")))
    book.ok(reconcile([row("pay_2", 100, "chargeback")], "rec_3"))  # rec_2 is forgotten: only one part is kept
    book.ok(RecordPayoutResult(merchant_id="m1", payout_id="po_2", callback_id="cb_po_2", paid=False,
                               transfer_id="m1:po_2.returned"))
    assert book.do(reconcile([], "rec_2")).code == "ok" and book.books()["disputes"] == 100
    book.ok(reconcile([], "rec_4"))
    assert book.books()["disputes"] == 0 and book.engine.commerce.reconciliations.owing == {}


def test_a_chargeback_of_a_deposit_is_taken_from_the_wallet_it_funded(book: Books):
    payment = Payment(id="pay_dep", merchant_id="m1", amount=0, currency="", method="card", token_id="tok_dep",
                      card=CardDetails("visa", "4242", 12, 2030))
    book.ok(CreateDeposit(deposit=Deposit(id="dep_1", merchant_id="m1", customer_id="cus_1", amount=800,
                                          currency="USD", method="card", payment_id="pay_dep"),
                          payment=CreatePayment(payment=payment, sealed_card=b"sealed", processing_timeout_s=0)))
    book.ok(authorized("pay_dep"))
    book.ok(reconcile([row("pay_dep", 800), row("pay_dep", 300, "chargeback")]))
    wallet = book.engine.ledger.accounts[wallet_account_id("m1", "cus_1", "USD")]
    assert wallet.credits_posted - wallet.debits_posted == 500
    assert book.books()["settled_piggybank"] == 500 and book.books()["disputes"] == 0


def test_the_same_reconciliation_again_answers_its_part_and_another_file_under_its_id_is_refused(book: Books):
    book.pay(1000)
    first = book.do(reconcile([row("pay_1", 1000, fee=1)], request_hash="file-a"))
    before = book.engine.state_hash()
    again = book.do(reconcile([row("pay_1", 1000, fee=1)], request_hash="file-a"))
    assert again.replayed and again.record == first.record and book.engine.state_hash() == before
    book.refused(reconcile([row("pay_1", 1000, fee=2)], request_hash="file-b"), "idempotency_key_reused")


@pytest.mark.parametrize("command, code", [
    (reconcile([], provider="bank"), "provider_not_found"),
    (reconcile([], date="2023-02-30"), "date_invalid"),
    (reconcile([], rec_id="pay_1"), "reconciliation_id_invalid"),
    (reconcile([row("pay_1", 0)]), "settlement_row_invalid"),
    (reconcile([row("pay_1", 10, "reversed")]), "settlement_row_invalid"),
    (reconcile([row("pay_1", 10, fee=-1)]), "settlement_row_invalid"),
])
def test_a_file_that_cannot_be_reconciled_changes_nothing(book: Books, command, code):
    book.pay(1000)
    book.refused(command, code)


def test_too_many_rows_are_refused(book: Books, monkeypatch):
    monkeypatch.setattr(engine.reconciliations, "MAX_SETTLEMENT_ROWS", 2)
    book.refused(reconcile([row("a", 1), row("b", 1)], unknown=[row("c", 1)]), "too_many_rows")


def test_parts_page_newest_first_and_at_most_so_many_are_kept(book: Books, monkeypatch):
    monkeypatch.setattr(engine.reconciliations, "MAX_RECONCILIATIONS", 3)
    for number in range(5):
        book.ok(reconcile([], f"rec_{number}"))
    page = book.query(ListReconciliations(limit=2))
    assert ([part.id for part in page.records], page.has_more) == (["rec_4", "rec_3"], True)
    page = book.query(ListReconciliations(limit=2, starting_after="rec_3"))
    assert ([part.id for part in page.records], page.has_more) == (["rec_2"], False)
    assert book.query(GetReconciliation("rec_0")).record is None


def test_a_restored_engine_reconciles_as_the_original(book: Books):
    book.pay(1000, 2000)
    book.ok(refund("re_1", "pay_2", 100))
    copy = book.restored()
    assert copy.engine.state_hash() == book.engine.state_hash()
    file = [row("pay_1", 1000, fee=3), row("re_1", 100, "refunded")]
    assert copy.do(reconcile(file)).record == book.do(reconcile(file)).record
    assert copy.engine.state_hash() == book.engine.state_hash()


def test_the_edge_finds_which_shard_holds_a_files_ids(book: Books):
    book.pay(1000)
    book.ok(refund("re_1", "pay_1", 1))
    assert book.query(FindSettlementItems(["pay_1", "re_1", "pay_9"])).ids == ["pay_1", "re_1"]


def archived_away(book: Books, *pids: str) -> dict[str, Payment]:
    """A day later, archive: the payments leave memory; answered as the cold store keeps them."""
    book.run(at=book.now + 86_400 * S)
    taken = {payment.id: payment for payment in book.do(Archive(86_400)).record.payments}
    assert set(pids) <= set(taken) and all(pid not in book.engine.commerce.payments.payments for pid in pids)
    return taken


def test_a_chargeback_of_an_archived_payment_is_posted_as_for_one_in_memory(book: Books):
    book.pay(1000, 500)
    book.ok(reconcile([row("pay_1", 1000), row("pay_2", 500)]))
    cold = archived_away(book, "pay_1", "pay_2")
    chargeback = [row("pay_1", 400, "chargeback", fee=15)]
    # Without the archived record the engine knows nothing of it.
    assert book.do(reconcile(chargeback, "rec_0", date=NEXT_DAY)).record.missing_in_ledger == ["pay_1"]
    command = msgspec.structs.replace(reconcile(chargeback, "rec_2", date=NEXT_DAY), archived_payments=[cold["pay_1"]])
    copy, journaled = book.restored(), msgspec.msgpack.encode(command)
    result = book.run(command)
    assert result.results[0].record.chargebacks == ["pay_1"]
    assert ("payment.disputed", "pay_1") in [(event.kind, event.object_id) for event in result.events]
    assert book.books() == dict(balance=1100, clearing_piggybank=0, settled_piggybank=1500 - 400 - 15,
                                fees_piggybank=15, refunds_piggybank=0, disputes=0)
    assert (book.payment("pay_1").status, book.payment("pay_1").amount_disputed) == ("disputed", 400)
    # Replayed elsewhere, the command carries all it needs: the same state.
    copy.run(msgspec.msgpack.decode(journaled, type=Reconcile), at=book.now)
    assert copy.engine.state_hash() == book.engine.state_hash()
    # The file sent again answers its part again; under another id the chargeback is a duplicate, in memory or
    # archived again, and posts nothing more.
    assert book.do(command).replayed
    again = msgspec.structs.replace(command, reconciliation_id="rec_3", request_hash="rec_3")
    assert book.do(again).record.duplicates == ["pay_1"]
    recold = archived_away(book, "pay_1")
    before = book.books()
    again = msgspec.structs.replace(command, reconciliation_id="rec_4", request_hash="rec_4",
                                    archived_payments=[recold["pay_1"]])
    part = book.do(again).record
    assert (part.duplicates, part.chargebacks) == (["pay_1"], []) and book.books() == before
    assert "pay_1" not in book.engine.commerce.payments.payments


def test_a_restored_engine_finds_the_same_captures_missing_as_the_original_whatever_their_order(book: Books):
    book.ok(card("pay_2", 200), card("pay_1", 100))
    book.ok(authorized("pay_1"), authorized("pay_2"))  # captured in the other order than made
    copy = book.restored()
    at = book.now + S
    part = book.do(reconcile([]), at=at)
    assert part == copy.do(reconcile([]), at=at) and part.record.missing_in_settlement == ["pay_1", "pay_2"]
    assert copy.engine.state_hash() == book.engine.state_hash()


def test_a_payment_charged_back_before_it_settled_and_archived_is_missing_from_no_later_file(book: Books):
    book.pay(1000, 500)
    book.ok(reconcile([row("pay_1", 400, "chargeback")], "rec_cb"))  # before any file settled it
    archived_away(book, "pay_1")
    copy = book.restored()  # restore knows nothing of the archived payment: neither does the original
    at = book.now + S
    part = book.do(reconcile([], "rec_2"), at=at)
    assert part == copy.do(reconcile([], "rec_2"), at=at) and part.record.missing_in_settlement == ["pay_2"]
    assert copy.engine.state_hash() == book.engine.state_hash()


def test_a_payment_charged_back_unsettled_archived_and_brought_back_by_a_refund_stays_unlisted_after_restore(
        book: Books):
    book.pay(1000, 500)
    book.ok(reconcile([row("pay_1", 400, "chargeback")], "rec_cb"))
    cold = archived_away(book, "pay_1")
    book.ok(msgspec.structs.replace(refund("re_9", "pay_1", 100), archived_payment=cold["pay_1"]))
    copy = book.restored()
    at = book.now + S
    part = book.do(reconcile([], "rec_2"), at=at)
    assert part == copy.do(reconcile([], "rec_2"), at=at) and part.record.missing_in_settlement == ["pay_2"]
    assert copy.engine.state_hash() == book.engine.state_hash()


def test_captures_and_refunds_archived_settled_already_are_duplicates_not_missing(book: Books):
    book.pay(1000)
    book.ok(refund("re_1", "pay_1", 100))
    book.ok(reconcile([row("pay_1", 1000), row("re_1", 100, "refunded")]))
    book.run(at=book.now + 86_400 * S)
    archived = book.do(Archive(86_400)).record
    command = msgspec.structs.replace(reconcile([row("pay_1", 1000), row("re_1", 100, "refunded")], "rec_2"),
                                      archived_payments=archived.payments, archived_refunds=archived.refunds)
    before = book.books()
    part = book.do(command).record
    assert (part.duplicates, part.missing_in_ledger, part.matched) == (["pay_1", "re_1"], [], [])
    assert book.books() == before and "pay_1" not in book.engine.commerce.payments.payments


def test_more_archived_records_than_the_rows_name_are_refused(book: Books):
    payment = Payment(id="pay_9", merchant_id="m1", amount=1, currency="USD")
    command = msgspec.structs.replace(reconcile([row("pay_9", 1, "chargeback")]), archived_payments=[payment] * 4)
    book.refused(command, "too_many_archived_records")
