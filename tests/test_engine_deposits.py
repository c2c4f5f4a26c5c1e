"""Deposits, withdrawals and adjustments of wallets: money enters a wallet only from a real inflow.

A card deposit is credited from the acquirer's clearing account when the acquirer authorizes its payment; a QR or
bank transfer deposit from the bank's clearing account when the bank's signed callback quotes it. A withdrawal
holds wallet money until the bank answers. Every engine a test builds is verified after it.
"""

import msgspec
import pytest

from engine.states import DEPOSIT_TRANSITIONS, transition
from engine.check import InvariantBroken
from engine.batch import Batch
from engine.machine import Engine, Snapshot
from engine.queries import GetWalletRecord, LookupAccounts
from engine.records import (
    COMMAND_RETIRED,
    AdjustWallet,
    Adjustment,
    CreateCustomer,
    CreateDeposit,
    CreateMerchant,
    CreatePayment,
    CreateRefund,
    CreateWithdrawal,
    Customer,
    Deposit,
    Idempotent,
    Merchant,
    MoveWallet,
    Payment,
    ReceiveBankTransfer,
    ReceiveDepositTransfer,
    RecordPspResult,
    RecordWithdrawalResult,
    Refund,
    Withdrawal,
    system_account_id,
    wallet_account_id,
)
from engine.submits import SubmitSpan
from engine.types import AMOUNT_MAX
from engine.types import NANOSECONDS_PER_SECOND as S
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S


def deposit(did: str, method: str = "card", amount: int = 500, cid: str = "cus_1", mid: str = "m1",
            timeout_s: int = 30) -> CreateDeposit:
    payment = Payment(id=f"pay_{did}", merchant_id=mid, amount=0, currency="", method=method,
                      next_action_url=f"https://example.test/qr/{did}.png" if method != "card" else "")
    return CreateDeposit(deposit=Deposit(id=did, merchant_id=mid, customer_id=cid, amount=amount, currency="USD",
                                         method=method, payment_id=payment.id),
                         payment=CreatePayment(payment=payment, processing_timeout_s=timeout_s))


def acquirer(did: str, result: str = "authorized", cb: str = "cb1", mid: str = "m1", **fields) -> RecordPspResult:
    return RecordPspResult(merchant_id=mid, payment_id=f"pay_{did}", callback_id=cb, result=result,
                           transfer_id=f"{mid}:pay_{did}.authorization", **fields)


def transfer_in(did: str, amount: int = 500, cb: str = "bank1", currency: str = "USD",
                mid: str = "m1") -> ReceiveDepositTransfer:
    return ReceiveDepositTransfer(merchant_id=mid, deposit_id=did, callback_id=cb, amount=amount, currency=currency,
                                  transfer_id=f"{mid}:{did}.{cb}", bank_reference="bk_1")


def withdrawal(wid: str, amount: int, cid: str = "cus_1", mid: str = "m1") -> CreateWithdrawal:
    return CreateWithdrawal(withdrawal=Withdrawal(id=wid, merchant_id=mid, customer_id=cid, amount=amount,
                                                  currency="USD", hold_id=f"{mid}:{wid}.hold"))


def withdrawal_result(wid: str, paid: bool, cb: str = "bank1", mid: str = "m1") -> RecordWithdrawalResult:
    return RecordWithdrawalResult(merchant_id=mid, withdrawal_id=wid, callback_id=cb, paid=paid,
                                  transfer_id=f"{mid}:{wid}.{'paid' if paid else 'returned'}",
                                  failure_code="" if paid else "account_closed")


def adjustment(aid: str, amount: int, reason: str = "goodwill credit for ticket 42", cid: str = "cus_1",
               mid: str = "m1") -> AdjustWallet:
    return AdjustWallet(adjustment=Adjustment(id=aid, merchant_id=mid, customer_id=cid, amount=amount,
                                              currency="USD", reason=reason), transfer_id=f"{mid}:{aid}")


class Wallets(Driver):
    def balance(self, account_id: str) -> int:
        account = self.query(LookupAccounts([account_id])).accounts[0]
        return 0 if account is None else account.credits_posted - account.debits_posted

    def wallet(self, cid: str = "cus_1") -> int:
        return self.balance(wallet_account_id("m1", cid, "USD"))

    def system(self, name: str) -> int:
        return self.balance(system_account_id("m1", name, "USD"))

    def record(self, kind: str, record_id: str, mid: str = "m1"):
        return self.query(GetWalletRecord(mid, kind, record_id)).record


@pytest.fixture
def gw() -> Wallets:
    gw = Wallets(now=T0)
    gw.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")),
          CreateMerchant(Merchant(id="m2", name="Other", email="m2@example.com")),
          CreateCustomer(Customer(id="cus_1", merchant_id="m1", email="c@example.com")),
          CreateCustomer(Customer(id="cus_2", merchant_id="m2", email="d@example.com")))
    return gw


def kinds(result) -> list[str]:
    return [event.kind for event in result.events]


def test_card_deposit_is_credited_from_the_acquirers_clearing_when_authorized(gw):
    created = gw.do(deposit("dep_1"))
    assert (created.code, created.record.status) == ("ok", "processing")
    assert gw.wallet() == 0  # nothing yet: the merchant's word moves no money
    result = gw.ok(acquirer("dep_1"))
    assert "deposit.succeeded" in kinds(result)
    assert gw.record("deposit", "dep_1").status == "succeeded"
    assert (gw.wallet(), gw.system("clearing_piggybank"), gw.system("balance")) == (500, -500, 0)
    assert gw.record("deposit", "dep_1", mid="m2") is None  # another merchant's is not found


def test_declined_card_deposit_credits_nothing(gw):
    gw.ok(deposit("dep_1"))
    result = gw.ok(acquirer("dep_1", "declined", failure_code="card_declined"))
    assert "deposit.failed" in kinds(result)
    failed = gw.record("deposit", "dep_1")
    assert (failed.status, failed.failure_code) == ("failed", "card_declined")
    assert (gw.wallet(), gw.system("clearing_piggybank")) == (0, 0)
    assert gw.do(acquirer("dep_1", cb="cb2")).code == "payment_not_open"  # a late authorization moves nothing
    assert gw.wallet() == 0


def test_three_d_secure_deposit_waits_then_succeeds(gw):
    gw.ok(deposit("dep_1"))
    gw.ok(acquirer("dep_1", "requires_action", action_url="https://acquirer.test/3ds/1"))
    waiting = gw.record("deposit", "dep_1")
    assert (waiting.status, waiting.next_action_url) == ("requires_action", "https://acquirer.test/3ds/1")
    gw.ok(acquirer("dep_1", cb="cb2"))
    assert (gw.record("deposit", "dep_1").status, gw.record("deposit", "dep_1").next_action_url) == ("succeeded", "")
    assert gw.wallet() == 500


def test_a_card_deposit_the_acquirer_never_answers_fails_at_its_deadline(gw):
    gw.ok(deposit("dep_1", timeout_s=5))
    result = gw.run(at=gw.now + 6 * S)
    assert "deposit.failed" in kinds(result)
    assert (gw.record("deposit", "dep_1").failure_code, gw.wallet()) == ("processing_timeout", 0)


@pytest.mark.parametrize("method", ["qr", "bank_transfer"])
def test_qr_deposit_is_credited_only_on_the_banks_callback_and_once(gw, method):
    created = gw.do(deposit("dep_1", method))
    assert (created.record.status, created.record.next_action_url) == ("requires_action",
                                                                       "https://example.test/qr/dep_1.png")
    assert gw.wallet() == 0
    result = gw.ok(transfer_in("dep_1"))
    assert kinds(result).count("deposit.succeeded") == 1
    assert (gw.wallet(), gw.system("clearing_bank")) == (500, -500)
    duplicate = gw.do(transfer_in("dep_1"))  # the same callback again
    assert (duplicate.code, gw.wallet()) == ("duplicate", 500)
    assert gw.do(transfer_in("dep_1", cb="bank2")).code == "deposit_not_open"  # a second transfer is not taken
    assert gw.wallet() == 500


def test_a_transfer_for_another_amount_currency_or_merchant_is_not_taken(gw):
    gw.ok(deposit("dep_1", "qr"))
    gw.refused(transfer_in("dep_1", amount=499), "amount_mismatch")
    gw.refused(transfer_in("dep_1", currency="EUR"), "currency_mismatch")
    gw.refused(transfer_in("dep_1", mid="m2"), "deposit_not_found")
    gw.refused(transfer_in("dep_404"), "deposit_not_found")
    gw.ok(deposit("dep_2"))
    gw.refused(transfer_in("dep_2"), "deposit_not_found")  # a card deposit is not paid by a transfer
    assert gw.wallet() == 0


def test_deposit_requests_that_change_nothing(gw):
    gw.refused(deposit("dep_1", cid="cus_2"), "customer_not_found")  # another merchant's customer
    gw.refused(deposit("dep_1", amount=0), "amount_must_not_be_zero")
    gw.refused(deposit("dep_1", method="wallet"), "payment_method_not_allowed")
    gw.ok(deposit("dep_1"))
    gw.refused(deposit("dep_1"), "exists")


def test_a_deposits_payment_cannot_be_refunded_from_the_merchant(gw):
    gw.ok(deposit("dep_1"))
    gw.ok(acquirer("dep_1"))
    gw.refused(CreateRefund(refund=Refund(id="re_1", merchant_id="m1", payment_id="pay_dep_1", amount=0),
                            transfer_id="m1:re_1"), "payment_not_refundable")


def funded(gw: Wallets, amount: int = 1000) -> None:
    gw.ok(deposit("dep_f", "qr", amount=amount))
    gw.ok(transfer_in("dep_f", amount=amount))


def test_withdrawal_paid_leaves_the_wallet(gw):
    funded(gw)
    created = gw.do(withdrawal("wd_1", 400))
    assert (created.code, created.record.status) == ("ok", "pending")
    assert gw.wallet() == 1000 and gw.engine.ledger.available(wallet_account_id("m1", "cus_1", "USD")) == 600
    result = gw.ok(withdrawal_result("wd_1", paid=True))
    assert "withdrawal.paid" in kinds(result)
    assert (gw.wallet(), gw.system("withdrawals")) == (600, 400)
    assert gw.do(withdrawal_result("wd_1", paid=False, cb="bank2")).code == "duplicate"
    assert gw.wallet() == 600


def test_withdrawal_failed_gives_the_money_back(gw):
    funded(gw)
    gw.ok(withdrawal("wd_1", 400))
    result = gw.ok(withdrawal_result("wd_1", paid=False))
    assert "withdrawal.failed" in kinds(result)
    failed = gw.record("withdrawal", "wd_1")
    assert (failed.status, failed.failure_code) == ("failed", "account_closed")
    assert (gw.wallet(), gw.engine.ledger.available(wallet_account_id("m1", "cus_1", "USD"))) == (1000, 1000)


def test_more_than_the_wallet_holds_is_refused(gw):
    funded(gw)
    gw.ok(withdrawal("wd_1", 600))
    gw.refused(withdrawal("wd_2", 401), "insufficient_funds")  # 400 left once 600 are held
    gw.refused(withdrawal("wd_3", 1, cid="cus_2"), "customer_not_found")
    gw.refused(withdrawal_result("wd_1", paid=True, mid="m2"), "withdrawal_not_found")
    gw.ok(withdrawal("wd_2", 400))


def test_adjustment_credits_from_the_adjustments_account_with_its_reason(gw):
    created = gw.do(adjustment("adj_1", 250))
    assert (created.code, created.record.reason) == ("ok", "goodwill credit for ticket 42")
    assert (gw.wallet(), gw.system("adjustments")) == (250, -250)
    gw.refused(adjustment("adj_2", 1, reason="  "), "reason_required")
    gw.refused(adjustment("adj_1", 250), "exists")
    gw.refused(adjustment("adj_3", 1, cid="cus_2"), "customer_not_found")


def test_state_survives_a_snapshot_and_replays_the_same(gw):
    funded(gw)
    gw.ok(deposit("dep_2"))  # still open: its payment's authorization must still find it after the restore
    gw.ok(withdrawal("wd_1", 100), adjustment("adj_1", 5), deposit("dep_3", "bank_transfer"))
    restored = gw.restored()
    assert restored.engine.state_hash() == gw.engine.state_hash()
    assert [deposit_id for _, deposit_id in restored.engine.commerce.deposits.expiries] == ["dep_3"]  # open ones
    restored.ok(acquirer("dep_2"))
    assert (restored.record("deposit", "dep_2").status, restored.wallet()) == ("succeeded", 1505)


def test_a_legacy_move_wallet_in_an_old_journal_still_applies_as_it_did():
    """Journals written before deposits were funded by payments replay to the same state: MoveWallet still decodes
    and applies as then."""
    gw = Wallets(Engine(), now=T0)
    gw.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")),
          CreateCustomer(Customer(id="cus_1", merchant_id="m1", email="c@example.com")))
    gw.ok(MoveWallet(merchant_id="m1", customer_id="cus_1", transfer_id="m1:old", amount=70, currency="USD"))
    assert (gw.wallet(), gw.system("deposits")) == (70, -70)


def test_a_move_wallet_that_comes_in_a_submit_is_refused_and_changes_nothing():
    """Every journal that holds MoveWallet predates Submit ids: one in a Submit is new, and refused, however wrapped;
    the same command in a batch without Submits (an old journal's) still applies."""
    gw = Wallets(Engine(), now=T0)
    gw.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")),
          CreateCustomer(Customer(id="cus_1", merchant_id="m1", email="c@example.com")))

    def move(transfer_id: str) -> MoveWallet:
        return MoveWallet(merchant_id="m1", customer_id="cus_1", transfer_id=transfer_id, amount=70, currency="USD")

    def state() -> Snapshot:  # all but the batch's stamp and the Submit window, which remembers the refusal
        return msgspec.structs.replace(msgspec.msgpack.decode(gw.engine.snapshot(), type=Snapshot), sequence=0,
                                       timestamp=0, submits=[])

    before = state()
    commands = [move("m1:new"), Idempotent(merchant_id="m1", key="k", request_hash="h", command=move("m1:new2"))]
    result = gw.engine.apply(Batch(gw.engine.sequence + 1, T0 + S, commands, [SubmitSpan(b"s" * 16, 2)]))
    assert [outcome.code for outcome in result.results] == [COMMAND_RETIRED] * 2
    assert (result.events, state()) == ([], before)
    gw.ok(move("m1:old"), at=T0 + 2 * S)
    assert gw.wallet() == 70


def test_transition_tables_refuse_what_they_do_not_list():
    record = Withdrawal(id="wd_1", merchant_id="m1", customer_id="c", amount=1, currency="USD", hold_id="h",
                        status="paid")
    with pytest.raises(InvariantBroken):
        transition(record, "failed")
    assert all(target in DEPOSIT_TRANSITIONS for targets in DEPOSIT_TRANSITIONS.values() for target in targets)


def test_a_qr_deposit_whose_transfer_never_comes_fails_at_its_expiry_and_a_late_one_is_not_taken(gw):
    command = deposit("dep_1", "qr")
    command.transfer_window_s = 60
    created = gw.do(command)
    assert created.record.expires_at == gw.now + 60 * S
    assert gw.engine.next_deadline() == created.record.expires_at
    result = gw.run(at=gw.now + 61 * S)
    assert "deposit.failed" in kinds(result)
    expired = gw.record("deposit", "dep_1")
    assert (expired.status, expired.failure_code) == ("failed", "deposit_expired")
    assert gw.do(transfer_in("dep_1")).code == "deposit_not_open"
    assert gw.wallet() == 0
    too_long = deposit("dep_2", "qr")
    too_long.transfer_window_s = 10**9
    gw.refused(too_long, "transfer_window_out_of_range")


def test_a_card_deposit_the_risk_rules_refuse_fails_at_once(gw):
    command = deposit("dep_1")
    command.payment.risk_reason = "this card is on the block list"
    created = gw.do(command)
    assert (created.code, created.record.status, created.record.failure_code) == ("ok", "failed", "risk_rejected")
    assert gw.do(acquirer("dep_1")).code == "payment_not_open"
    assert gw.wallet() == 0


def test_a_credit_the_ledger_refuses_makes_no_account(gw):
    gw.ok(adjustment("adj_1", AMOUNT_MAX),
          CreateCustomer(Customer(id="cus_3", merchant_id="m1", email="e@example.com")))
    # Checked before any account is made: nothing is left behind, not even a spent transfer id.
    # The adjustments account has given all it can: a new wallet is not made for a credit it cannot fund.
    gw.refused(adjustment("adj_2", 1, cid="cus_3"), "overflows_debits_posted")
    assert wallet_account_id("m1", "cus_3", "USD") not in gw.engine.ledger.accounts
    # The wallet is full: the bank's clearing account is not made for a transfer the wallet cannot take.
    gw.ok(deposit("dep_1", "qr", amount=1))
    gw.refused(transfer_in("dep_1", amount=1), "overflows_credits_posted")
    assert system_account_id("m1", "clearing_bank", "USD") not in gw.engine.ledger.accounts
    assert gw.record("deposit", "dep_1").status == "requires_action"


def test_a_withdrawal_hold_the_ledger_refuses_makes_no_account(gw):
    funded(gw)
    # The hold's transfer id is already spent: refused before the withdrawals account is made.
    reused = withdrawal("wd_1", 100)
    reused.withdrawal.hold_id = "m1:dep_f.bank1"
    gw.refused(reused, "exists_with_different_flags")
    assert system_account_id("m1", "withdrawals", "USD") not in gw.engine.ledger.accounts
    gw.ok(withdrawal("wd_1", 100))


def test_a_transfer_quoting_a_deposits_payment_is_not_taken_into_the_merchants_balance(gw):
    gw.ok(deposit("dep_1", "qr"))
    gw.refused(ReceiveBankTransfer(merchant_id="m1", order_id="", callback_id="bank1", amount=500, currency="USD",
                                   method="qr", payment_id="pay_bank1", transfer_id="m1:bank1",
                                   quoted_payment_id="pay_dep_1"), "payment_not_found")
    assert (gw.record("deposit", "dep_1").status, gw.wallet(), gw.system("balance")) == ("requires_action", 0, 0)
