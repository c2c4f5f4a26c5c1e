"""Money is conserved under any sequence of the engine's commands (a hypothesis state machine).

Two merchants with sub-accounts and customers take orders with splits and PATCHes; card, QR, bank-transfer and
wallet payments, for an order or without one; static-code transfers; the acquirer's and the bank's answers in any
order (late, duplicated, for closed orders, for other amounts); captures (partial), cancels, refunds (partial),
payouts paid and failed; wallets funded by deposits a real payment pays (a card the acquirer answers, a QR or bank
transfer quoting the deposit: for its amount or another, twice, after it expired) and by admin adjustments, and
emptied by checkouts and by withdrawals the bank pays or fails; the acquirer's settlement files (captures and
refunds settled with fees, chargebacks, rows for other amounts or unknown); end-of-day archival at any age (the
records it takes kept here as a shard's cold store keeps them, a refund of an archived payment carrying it back as the
edge sends it); and time passing (order and deposit expiries, acquirer deadlines, authorization holds). After every
step:

- no exception escapes and the ledger's full check holds;
- a command the engine refused (any code but ok) changed nothing and said nothing, but for the one trace the ledger
  documents: a transfer it refused on its state spends the transfer's id (engine/codes.py);
- no account that holds money (balance, sub-account, wallet, payouts, withdrawals) is below zero, and no inflow
  mirror (clearing, adjustments) has given back more than it took in, checked on the balances themselves, whatever
  flags the accounts carry; nothing funds a wallet from nothing (the legacy `deposits` account is never made);
- money held (what those accounts hold, plus payouts and withdrawals in flight) equals money received from outside
  (captured card money, bank transfers accepted, adjustments) less money sent outside (refunds through a provider,
  paid payouts, paid withdrawals, chargebacks), both sides computed here from the outside events this test drove
  and the engine's answers, plus what merchants still owe for chargebacks (the `disputes` accounts' debit balance);
- each wallet holds what this test saw come into it less what it saw go out, and a deposit has succeeded exactly
  when its money reached its wallet;
- an order's splits went out at most once;
- whether in memory or archived, each paid order has one invoice and invoice numbers have no gaps.
"""

import datetime

from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from engine import Engine
from engine.queries import ListInvoices, PendingDeliveries
from engine.records import (
    Adjustment,
    AdjustWallet,
    Archive,
    CancelOrder,
    CancelPayment,
    CapturePayment,
    CreateCustomer,
    CreateDeposit,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    CreateSubAccount,
    CreateWithdrawal,
    Customer,
    DeliveryResult,
    Deposit,
    Merchant,
    Order,
    Payment,
    PayOrderFromWallet,
    Payout,
    ReceiveBankTransfer,
    ReceiveDepositTransfer,
    Reconcile,
    RecordDeliveryAttempts,
    RecordPayoutResult,
    RecordPspResult,
    RecordWithdrawalResult,
    Refund,
    ReplayDeliveries,
    SettlementRow,
    Split,
    SubAccount,
    UpdateOrder,
    Withdrawal,
    system_account_id,
    wallet_account_id,
)
from engine.types import AMOUNT_MAX, NANOSECONDS_PER_SECOND
from ledger_helpers import apply_batch, state_without_failed_ids

S = NANOSECONDS_PER_SECOND
T0 = 1_700_000_000 * S
CURRENCY = "USD"
MERCHANTS = ("m1", "m2")
SUB_ACCOUNTS = {"m1": ("sub_a", "sub_b"), "m2": ("sub_c",)}
CUSTOMERS = {"m1": ("c1", "c2"), "m2": ("c3",)}
WALLETS = tuple((merchant, customer) for merchant in MERCHANTS for customer in CUSTOMERS[merchant])
# Destinations a split may name: merchants, sub-accounts (the order's own or not), and one that does not exist.
DESTINATIONS = ("m1", "m2", "sub_a", "sub_b", "sub_c", "m9")
BANK_METHODS = ("qr", "bank_transfer")
HUGE = (AMOUNT_MAX, AMOUNT_MAX // 2 + 1)
# Mostly small amounts, one in ten at the edge of the range (to meet the overflow refusals).
AMOUNTS = st.tuples(st.integers(0, 19), st.integers(1, 300)).map(lambda drawn: HUGE[drawn[0]] if drawn[0] < 2 else drawn[1])
PICK = st.integers(0, 10**6)
SOME_SECONDS = st.sampled_from((1, 20, 31, 61, 3600, 8 * 86400))
# The default run's 5,000 steps (new ones each run); the 500,000 of test_money_is_conserved_at_length run with -m slow.
FAST = settings(max_examples=100, stateful_step_count=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LONG = settings(FAST, max_examples=10_000)
# What an Archive takes, as the fields of its answer.
ARCHIVED_KINDS = ("orders", "payments", "refunds", "invoices", "transfers", "payouts", "deposits", "withdrawals",
                  "adjustments", "events", "deliveries")


@dataclass
class OrderModel:
    id: str
    merchant_id: str
    amount: int
    splits: list[tuple[str, int]]
    payment_ids: list[str] = field(default_factory=list)


@dataclass
class PaymentModel:
    id: str
    merchant_id: str
    amount: int  # what the payment asks for (an order's amount when it was made)
    method: str
    manual: bool = False
    order_id: str = ""
    customer_id: str = ""  # the wallet a wallet payment took from, or a deposit's payment funds
    deposit_id: str = ""
    captured: int = 0
    refunded: int = 0
    disputed: int = 0  # what a chargeback took back


@dataclass
class PayoutModel:
    id: str
    merchant_id: str
    amount: int


@dataclass
class DepositModel:
    id: str
    merchant_id: str
    customer_id: str
    amount: int
    method: str


@dataclass
class WithdrawalModel:
    id: str
    merchant_id: str
    customer_id: str
    amount: int


class ConservationMachine(RuleBasedStateMachine):
    @initialize()
    def open_shop(self):
        self.engine = Engine()
        self.now = T0
        self.serial = 0
        self.received = 0  # from outside: captured card money, bank transfers accepted, adjustments
        self.sent = 0  # to outside: refunds to the acquirer or bank, paid payouts, paid withdrawals
        self.orders: list[OrderModel] = []
        self.payments: dict[str, PaymentModel] = {}
        self.payouts: list[PayoutModel] = []
        self.deposits: dict[str, DepositModel] = {}
        self.credited_deposits: set[str] = set()
        self.withdrawals: dict[str, WithdrawalModel] = {}
        self.wallets = dict.fromkeys(WALLETS, 0)  # what each wallet should hold, from what this test saw
        self.callbacks: list = []  # callbacks sent once, to send again
        self.refunds: list[tuple[str, str, int]] = []  # (refund id, payment id, amount) of card payments' refunds
        self.cold: dict[tuple[str, str], object] = {}  # (Archived field, id) -> the record, as a cold store keeps it
        self.twin: Engine | None = None  # restored from a snapshot at some step, then fed the same batches
        commands = [CreateMerchant(Merchant(id=mid, name=mid, email=f"{mid}@example.com",
                                            webhook_url=f"https://{mid}.example/hook")) for mid in MERCHANTS]
        commands += [CreateSubAccount(mid, SubAccount(sub, sub)) for mid, subs in SUB_ACCOUNTS.items() for sub in subs]
        commands += [CreateCustomer(Customer(id=cid, merchant_id=mid, email=f"{cid}@example.com"))
                     for mid, cids in CUSTOMERS.items() for cid in cids]
        assert {outcome.code for outcome in self.run(*commands).results} == {"ok"}

    # Driving

    def run(self, *commands, seconds: int = 0):
        self.now += seconds * S or 1_000_000
        return self._apply(list(commands))

    def _apply(self, commands: list):
        """A batch at the current time; what it archived is kept, as the shard's cold store keeps it."""
        copies = [_copy(command) for command in commands] if self.twin is not None else []  # before any changes them
        result = apply_batch(self.engine, self.now, commands)
        if self.twin is not None:  # a shard restarted from its snapshot answers what the one that ran on answered
            assert apply_batch(self.twin, self.now, copies) == result, commands
        for archived in self.engine.archived:
            for name in ARCHIVED_KINDS:
                self.cold.update(((name, record.id), record) for record in getattr(archived, name))
        return result

    def do(self, command):
        """One command in a batch of its own, once time has moved on; a refusal must change nothing."""
        self.run()  # what falls due as time moves on is not the command's doing
        before, spent_before = state_without_failed_ids(self.engine), set(self.engine.ledger.failed_ids)
        result = self._apply([command])
        outcome = result.results[0]
        if outcome.code != "ok":
            spent = set(self.engine.ledger.failed_ids) - spent_before
            assert state_without_failed_ids(self.engine) == before, (command, outcome.code)
            assert result.events == [] and spent <= _transfer_ids(command), (command, outcome, spent)
        return outcome

    @staticmethod
    def recent(items: list, pick: int):
        """One of the last few items: what was made lately is what is most likely to take a next step."""
        return items[-1 - pick % min(4, len(items))]

    def fresh(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def _payment_model(self, record, method: str, manual: bool = False) -> PaymentModel:
        """The model of a payment the engine answered with, made on first sight."""
        model = self.payments.get(record.id)
        if model is None:
            model = self.payments[record.id] = PaymentModel(record.id, record.merchant_id, record.amount, method,
                                                            manual, record.order_id, record.customer_id)
            order = next((order for order in self.orders if order.id == record.order_id), None)
            if order is not None:
                order.payment_ids.append(record.id)
        return model

    # Orders

    @rule(merchant=st.sampled_from(MERCHANTS), amount=AMOUNTS, expires_in_s=st.sampled_from((30, 3600, 0)),
          splits=st.lists(st.tuples(st.sampled_from(DESTINATIONS), st.integers(-1, 150)), max_size=3))
    def create_order(self, merchant, amount, expires_in_s, splits):
        order_id = self.fresh("o")
        order = Order(id=order_id, merchant_id=merchant, name=order_id, amount=amount, currency=CURRENCY,
                      payment_methods=["card", "qr", "bank_transfer", "wallet"],
                      expires_at=self.now + expires_in_s * S if expires_in_s else 0,
                      splits=[Split(destination, share) for destination, share in splits])
        if self.do(CreateOrder(order=order)).code == "ok":
            self.orders.append(OrderModel(order_id, merchant, amount, list(splits)))

    @precondition(lambda self: self.orders)
    @rule(pick=PICK, amount=AMOUNTS)
    def patch_order(self, pick, amount):
        order = self.recent(self.orders, pick)
        outcome = self.do(UpdateOrder(merchant_id=order.merchant_id, order_id=order.id, amount=amount))
        if outcome.code == "ok":
            order.amount = amount
        assert sum(share for _, share in order.splits) <= order.amount

    @precondition(lambda self: self.orders)
    @rule(pick=PICK)
    def cancel_order(self, pick):
        order = self.orders[pick % len(self.orders)]
        self.do(CancelOrder(order.merchant_id, order.id))

    @rule(seconds=SOME_SECONDS)
    def time_passes(self, seconds):
        self.run(seconds=seconds)

    # Payments

    @rule(pick=PICK, method=st.sampled_from(("card", "card", "qr", "bank_transfer")), manual=st.booleans(),
          without_order=st.booleans(), amount=AMOUNTS)
    def create_payment(self, pick, method, manual, without_order, amount):
        order = self.recent(self.orders, pick) if self.orders and not without_order else None
        merchant = order.merchant_id if order else MERCHANTS[pick % len(MERCHANTS)]
        payment = Payment(id=self.fresh("p"), merchant_id=merchant, amount=amount, currency=CURRENCY,
                          order_id=order.id if order else "", method=method,
                          capture_method="manual" if manual else "automatic")
        outcome = self.do(CreatePayment(payment=payment, processing_timeout_s=30))
        if outcome.code == "ok":
            self._payment_model(outcome.record, method, manual)

    @precondition(lambda self: any(payment.method == "card" for payment in self.payments.values()))
    @rule(pick=PICK, result=st.sampled_from(("authorized", "authorized", "declined", "requires_action")))
    def acquirer_answers(self, pick, result):
        payment = self.recent([payment for payment in self.payments.values() if payment.method == "card"], pick)
        self._acquirer_answer(payment, result)

    @precondition(lambda self: self.orders)
    @rule(pick=PICK)
    def card_checkout(self, pick):
        """A card payment for an order, and the acquirer's approval right after: the path most orders take."""
        order = self.recent(self.orders, pick)
        payment = Payment(id=self.fresh("p"), merchant_id=order.merchant_id, amount=1, currency=CURRENCY,
                          order_id=order.id)
        outcome = self.do(CreatePayment(payment=payment, processing_timeout_s=30))
        if outcome.code == "ok":
            self._acquirer_answer(self._payment_model(outcome.record, "card"), "authorized")

    def _acquirer_answer(self, payment: PaymentModel, result: str):
        callback = RecordPspResult(merchant_id=payment.merchant_id, payment_id=payment.id,
                                   callback_id=self.fresh("cb"), result=result,
                                   transfer_id=f"{payment.merchant_id}:auth-{payment.id}", hold_timeout_s=60)
        self._record_acquirer_answer(callback)

    def _record_acquirer_answer(self, callback: RecordPspResult):
        self.callbacks.append(callback)
        outcome = self.do(callback)
        if outcome.code == "ok" and outcome.record.status == "succeeded":  # captured at once: the acquirer owes it
            payment = self.payments[callback.payment_id]
            payment.captured = payment.amount
            self.received += payment.amount
            assert outcome.record.amount_captured == payment.amount
            if payment.deposit_id:
                self._credited(self.deposits[payment.deposit_id])

    @precondition(lambda self: self.orders)
    @rule(pick=PICK, asked=st.booleans(), amount=AMOUNTS)
    def bank_transfer_for_an_order(self, pick, asked, amount):
        order = self.recent(self.orders, pick)
        callback_id = self.fresh("cb")
        self._bank_transfer(ReceiveBankTransfer(
            merchant_id=order.merchant_id, order_id=order.id, callback_id=callback_id,
            amount=order.amount if asked else amount, currency=CURRENCY, method="qr", payment_id=f"pay_{callback_id}",
            transfer_id=f"{order.merchant_id}:bt-{callback_id}"))

    @rule(merchant=st.sampled_from(MERCHANTS), to_sub_account=st.booleans(), amount=AMOUNTS)
    def bank_transfer_on_a_static_code(self, merchant, to_sub_account, amount):
        callback_id = self.fresh("cb")
        self._bank_transfer(ReceiveBankTransfer(
            merchant_id=merchant, order_id="", callback_id=callback_id, amount=amount, currency=CURRENCY,
            method="qr", payment_id=f"pay_{callback_id}", transfer_id=f"{merchant}:bt-{callback_id}",
            sub_account_id=SUB_ACCOUNTS[merchant][0] if to_sub_account else ""))

    def _bank_transfer(self, callback: ReceiveBankTransfer):
        self.callbacks.append(callback)
        outcome = self.do(callback)
        if outcome.code == "ok":  # the bank holds the money: it is ours to account for
            payment = self._payment_model(outcome.record, callback.method)
            payment.captured = callback.amount
            self.received += callback.amount

    @precondition(lambda self: any(payment.method in BANK_METHODS and not payment.order_id
                                   for payment in self.payments.values()))
    @rule(pick=PICK, asked=st.booleans(), amount=AMOUNTS)
    def bank_transfer_quoting_a_payment(self, pick, asked, amount):
        """The payer's transfer for a QR or bank-transfer payment without an order (a deposit's own included)."""
        payment = self.recent([payment for payment in self.payments.values()
                               if payment.method in BANK_METHODS and not payment.order_id], pick)
        callback_id = self.fresh("cb")
        self._bank_transfer(ReceiveBankTransfer(
            merchant_id=payment.merchant_id, order_id="", callback_id=callback_id,
            amount=payment.amount if asked else amount, currency=CURRENCY, method=payment.method,
            payment_id=f"pay_{callback_id}", transfer_id=f"{payment.merchant_id}:bt-{callback_id}",
            quoted_payment_id=payment.id))

    @precondition(lambda self: self.callbacks)
    @rule(pick=PICK)
    def a_callback_comes_again(self, pick):
        callback = self.callbacks[pick % len(self.callbacks)]
        again = type(callback)(**{name: getattr(callback, name) for name in callback.__struct_fields__})
        answer = {RecordPspResult: self._record_acquirer_answer, ReceiveBankTransfer: self._bank_transfer,
                  ReceiveDepositTransfer: self._deposit_transfer, RecordWithdrawalResult: self._withdrawal_result}
        answer[type(again)](again)

    @precondition(lambda self: any(payment.manual for payment in self.payments.values()))
    @rule(pick=PICK, partial=st.integers(0, 150))
    def capture(self, pick, partial):
        payment = self.recent([payment for payment in self.payments.values() if payment.manual], pick)
        outcome = self.do(CapturePayment(merchant_id=payment.merchant_id, payment_id=payment.id,
                                         transfer_id=self.fresh(f"{payment.merchant_id}:cap"), amount=partial))
        if outcome.code == "ok":
            payment.captured = partial or payment.amount
            self.received += payment.captured
            assert outcome.record.amount_captured == payment.captured

    @precondition(lambda self: self.payments)
    @rule(pick=PICK)
    def cancel_payment(self, pick):
        payment = list(self.payments.values())[pick % len(self.payments)]
        self.do(CancelPayment(merchant_id=payment.merchant_id, payment_id=payment.id,
                              transfer_id=self.fresh(f"{payment.merchant_id}:void")))

    # Wallets

    @rule(wallet=st.sampled_from(WALLETS), method=st.sampled_from(("card", "card", "qr", "bank_transfer", "wallet")),
          amount=AMOUNTS, transfer_window_s=st.sampled_from((30, 3600)))
    def create_deposit(self, wallet, method, amount, transfer_window_s):
        merchant, customer = wallet
        deposit_id, payment_id = self.fresh("d"), self.fresh("p")
        deposit = Deposit(id=deposit_id, merchant_id=merchant, customer_id=customer, amount=amount, currency=CURRENCY,
                          method=method, payment_id="")
        payment = Payment(id=payment_id, merchant_id=merchant, amount=amount, currency=CURRENCY)
        outcome = self.do(CreateDeposit(deposit=deposit, transfer_window_s=transfer_window_s,
                                        payment=CreatePayment(payment=payment, processing_timeout_s=30)))
        if outcome.code == "ok":
            assert outcome.record.payment_id == payment_id
            self.deposits[deposit_id] = DepositModel(deposit_id, merchant, customer, amount, method)
            self.payments[payment_id] = PaymentModel(payment_id, merchant, amount, method, customer_id=customer,
                                                     deposit_id=deposit_id)

    @precondition(lambda self: any(deposit.method in BANK_METHODS for deposit in self.deposits.values()))
    @rule(pick=PICK, asked=st.booleans(), amount=AMOUNTS)
    def deposit_transfer_arrives(self, pick, asked, amount):
        deposit = self.recent([deposit for deposit in self.deposits.values() if deposit.method in BANK_METHODS], pick)
        callback_id = self.fresh("cb")
        self._deposit_transfer(ReceiveDepositTransfer(
            merchant_id=deposit.merchant_id, deposit_id=deposit.id, callback_id=callback_id,
            amount=deposit.amount if asked else amount, currency=CURRENCY,
            transfer_id=f"{deposit.merchant_id}:dt-{callback_id}"))

    def _deposit_transfer(self, callback: ReceiveDepositTransfer):
        self.callbacks.append(callback)
        if self.do(callback).code == "ok":  # the bank holds the money: it is ours to account for
            self.received += callback.amount
            self._credited(self.deposits[callback.deposit_id])

    def _credited(self, deposit: DepositModel):
        assert deposit.id not in self.credited_deposits, deposit
        self.credited_deposits.add(deposit.id)
        self.wallets[deposit.merchant_id, deposit.customer_id] += deposit.amount

    @rule(wallet=st.sampled_from(WALLETS), amount=AMOUNTS, reason=st.sampled_from(("goodwill", "refund", "promo", " ")))
    def adjust(self, wallet, amount, reason):
        merchant, customer = wallet
        adjustment = Adjustment(id=self.fresh("adj"), merchant_id=merchant, customer_id=customer, amount=amount,
                                currency=CURRENCY, reason=reason)
        if self.do(AdjustWallet(adjustment=adjustment, transfer_id=self.fresh(f"{merchant}:adj"))).code == "ok":
            self.received += amount
            self.wallets[wallet] += amount

    @rule(wallet=st.sampled_from(WALLETS), amount=AMOUNTS, all_of_it=st.booleans())
    def withdraw(self, wallet, amount, all_of_it):
        merchant, customer = wallet
        amount = self.wallets[wallet] if all_of_it else amount  # what this test expects the wallet to hold
        withdrawal_id = self.fresh("wd")
        outcome = self.do(CreateWithdrawal(withdrawal=Withdrawal(
            id=withdrawal_id, merchant_id=merchant, customer_id=customer, amount=amount, currency=CURRENCY,
            hold_id=f"{merchant}:hold-{withdrawal_id}")))
        if outcome.code == "ok":
            self.withdrawals[withdrawal_id] = WithdrawalModel(withdrawal_id, merchant, customer, amount)
            self.wallets[wallet] -= amount

    @precondition(lambda self: self.withdrawals)
    @rule(pick=PICK, paid=st.booleans(), stray=st.integers(0, 9))
    def bank_answers_a_withdrawal(self, pick, paid, stray):
        """The bank's word on a withdrawal, now and then on one the engine never took."""
        if stray == 0:
            merchant, withdrawal_id = MERCHANTS[pick % len(MERCHANTS)], self.fresh("wd")
        else:
            withdrawal = self.recent(list(self.withdrawals.values()), pick)
            merchant, withdrawal_id = withdrawal.merchant_id, withdrawal.id
        self._withdrawal_result(RecordWithdrawalResult(
            merchant_id=merchant, withdrawal_id=withdrawal_id, callback_id=self.fresh("bank"), paid=paid,
            transfer_id=self.fresh(f"{merchant}:wd")))

    def _withdrawal_result(self, callback: RecordWithdrawalResult):
        self.callbacks.append(callback)
        if self.do(callback).code == "ok":
            withdrawal = self.withdrawals[callback.withdrawal_id]
            if callback.paid:
                self.sent += withdrawal.amount
            else:  # the hold is voided: the money is back in the wallet
                self.wallets[withdrawal.merchant_id, withdrawal.customer_id] += withdrawal.amount

    @rule(pick=PICK, without_order=st.booleans(), amount=AMOUNTS)
    def pay_from_a_wallet(self, pick, without_order, amount):
        order = self.recent(self.orders, pick) if self.orders and not without_order else None
        merchant = order.merchant_id if order else MERCHANTS[pick % len(MERCHANTS)]
        customer = CUSTOMERS[merchant][pick % len(CUSTOMERS[merchant])]
        outcome = self.do(PayOrderFromWallet(merchant_id=merchant, order_id=order.id if order else "",
                                             customer_id=customer, payment_id=self.fresh("pw"),
                                             transfer_id=self.fresh(f"{merchant}:pw"),
                                             amount=0 if order else amount, currency="" if order else CURRENCY))
        if outcome.code == "ok" and outcome.record.status == "succeeded":
            payment = self._payment_model(outcome.record, "wallet")
            payment.captured = order.amount if order else amount
            assert outcome.record.amount_captured == payment.captured and payment.customer_id == customer
            self.wallets[merchant, customer] -= payment.captured

    # Money out

    @precondition(lambda self: self.payments)
    @rule(pick=PICK, amount=st.integers(0, 150))
    def refund(self, pick, amount):
        payment = self.recent(list(self.payments.values()), pick)
        refund_id = self.fresh("r")
        outcome = self.do(CreateRefund(refund=Refund(id=refund_id, merchant_id=payment.merchant_id,
                                                     payment_id=payment.id, amount=amount),
                                       transfer_id=self.fresh(f"{payment.merchant_id}:rf"),
                                       **self._archived(payment)))
        if outcome.code == "ok":
            refunded = amount or payment.captured - payment.refunded - payment.disputed
            assert outcome.record.amount == refunded
            payment.refunded += refunded
            assert payment.refunded + payment.disputed <= payment.captured
            if payment.method == "wallet":  # back to the wallet: it stays with us
                self.wallets[payment.merchant_id, payment.customer_id] += refunded
            else:  # back to the card or the payer's bank
                self.sent += refunded
            if payment.method == "card":
                self.refunds.append((refund_id, payment.id, refunded))

    def _archived(self, payment: PaymentModel) -> dict:
        """The payment and its order as a cold store holds them, once archived: what the edge sends with a refund."""
        if payment.id in self.engine.commerce.payments.payments or ("payments", payment.id) not in self.cold:
            return {}
        archived = _copy(self.cold["payments", payment.id])
        in_memory = not archived.order_id or archived.order_id in self.engine.commerce.orders.by_id
        return {"archived_payment": archived,
                "archived_order": None if in_memory else _copy(self.cold["orders", archived.order_id])}

    @rule(merchant=st.sampled_from(MERCHANTS), from_sub_account=st.booleans(), amount=st.integers(1, 150))
    def payout(self, merchant, from_sub_account, amount):
        payout_id = self.fresh("po")
        outcome = self.do(CreatePayout(payout=Payout(
            id=payout_id, merchant_id=merchant, amount=amount, currency=CURRENCY,
            sub_account_id=SUB_ACCOUNTS[merchant][0] if from_sub_account else "", hold_id=f"{merchant}:hold-{payout_id}")))
        if outcome.code == "ok":
            self.payouts.append(PayoutModel(payout_id, merchant, amount))

    @precondition(lambda self: self.payouts)
    @rule(pick=PICK, paid=st.booleans())
    def bank_answers_a_payout(self, pick, paid):
        payout = self.recent(self.payouts, pick)
        outcome = self.do(RecordPayoutResult(merchant_id=payout.merchant_id, payout_id=payout.id,
                                             callback_id=self.fresh("bank"), paid=paid,
                                             transfer_id=self.fresh(f"{payout.merchant_id}:po")))
        if outcome.code == "ok" and paid:
            self.sent += payout.amount

    # Settlement and archival

    @precondition(lambda self: any(payment.method == "card" and payment.captured for payment in self.payments.values()))
    @rule(picks=st.lists(PICK, min_size=1, max_size=3), fee=st.integers(0, 3), refunds=st.integers(0, 2),
          chargeback=st.booleans(), mismatch=st.booleans())
    def reconcile(self, picks, fee, refunds, chargeback, mismatch):
        """The acquirer's file for today: some captures (listed twice now and then) and refunds, with its fee; a
        chargeback of what a payment has left; a row for another amount and one no shard knows."""
        captured = [payment for payment in self.payments.values() if payment.method == "card" and payment.captured]
        listed = [self.recent(captured, pick) for pick in picks]
        rows = [SettlementRow(payment.id, payment.captured, "usd", "captured", fee=fee) for payment in listed]
        rows += [SettlementRow(refund_id, amount, "usd", "refunded", fee=fee)
                 for refund_id, _, amount in self.refunds[-refunds:] if refunds]
        charged = listed[0]
        charged_back = charged.captured - charged.refunded - charged.disputed if chargeback else 0
        if charged_back > 0:
            rows.append(SettlementRow(charged.id, charged_back, "usd", "chargeback", fee=fee))
        if mismatch:
            other = listed[-1].captured + 1 if listed[-1].captured < AMOUNT_MAX else 1  # a file's amount is bounded too
            rows.append(SettlementRow(listed[-1].id, other, "usd", "captured"))
        self._reconcile(rows, [SettlementRow("pay_elsewhere", 5, "usd", "captured")] if mismatch else [], charged,
                        charged_back)

    @precondition(lambda self: self._archived_captures())
    @rule(pick=PICK, fee=st.integers(0, 3))
    def late_chargeback(self, pick, fee):
        """A chargeback of a payment archival took since its file settled it: the file's reconciliation carries it
        as the shard's cold store holds it, and posts it as for one in memory."""
        charged = self.recent(self._archived_captures(), pick)
        charged_back = charged.captured - charged.refunded - charged.disputed
        outcome = self._reconcile([SettlementRow(charged.id, charged_back, "usd", "chargeback", fee=fee)], [],
                                  charged, charged_back)
        # Unless what it takes would carry an account past the amount range: then it is refused, moving nothing.
        assert outcome.record.chargebacks == [charged.id] or outcome.record.amount_mismatch == [charged.id]

    def _archived_captures(self) -> list:
        return [payment for payment in self.payments.values()
                if payment.method == "card" and payment.captured - payment.refunded - payment.disputed > 0
                and payment.id not in self.engine.commerce.payments.payments and ("payments", payment.id) in self.cold]

    def _reconcile(self, rows: list[SettlementRow], unknown: list[SettlementRow], charged, charged_back: int):
        """Today's file reconciled, carrying the archived records it names; a chargeback of `charged` counted."""
        wallet = (charged.merchant_id, charged.customer_id) if charged.deposit_id else None
        day = datetime.datetime.fromtimestamp(self.now / S, datetime.timezone.utc).strftime("%Y-%m-%d")
        outcome = self.do(Reconcile(reconciliation_id=self.fresh("rec_"), provider="piggybank", date=day,
                                    request_hash="file", rows=rows, unknown=unknown, **self._archived_rows(rows)))
        assert outcome.code == "ok", outcome
        if outcome.record.chargebacks:  # back to the cardholder: a deposit's wallet pays it first, as far as it holds
            assert outcome.record.chargebacks == [charged.id]
            charged.disputed = charged_back
            self.sent += charged_back
            if wallet is not None:
                self.wallets[wallet] -= min(charged_back, self.wallets[wallet])
        return outcome

    def _archived_rows(self, rows: list[SettlementRow]) -> dict:
        """The archived payments and refunds the rows name (and those refunds' payments, the payments' orders) as a
        cold store holds them: what the reconciliation carries (actors/settlements.py)."""
        commerce = self.engine.commerce
        refunds = [_copy(self.cold["refunds", row.transaction_id]) for row in rows
                   if row.transaction_id not in commerce.payments.refunds
                   and ("refunds", row.transaction_id) in self.cold]
        named = {row.transaction_id for row in rows} | {refund.payment_id for refund in refunds}
        payments = [_copy(self.cold["payments", payment_id]) for payment_id in sorted(named)
                    if payment_id not in commerce.payments.payments and ("payments", payment_id) in self.cold]
        order_ids = sorted({payment.order_id for payment in payments})
        orders = [_copy(self.cold["orders", order_id]) for order_id in order_ids
                  if order_id and order_id not in commerce.orders.by_id and ("orders", order_id) in self.cold]
        return {"archived_payments": payments, "archived_refunds": refunds, "archived_orders": orders}

    @rule(age_s=st.sampled_from((0, 30, 3600, 86_400)), seconds=st.sampled_from((0, 61, 86_401)))
    def archive(self, age_s, seconds):
        """End of day: time moves on, and Archive takes what ended `age_s` ago, as often as it finds more."""
        self.run(seconds=seconds)
        while self.do(Archive(age_s)).record.more:
            pass

    # Notifications: the notifier's word on deliveries, and replays of the dead ones

    @rule(pick=PICK, outcomes=st.lists(st.sampled_from(("delivered", "retry", "dead")), min_size=1, max_size=4))
    def notifier_reports(self, pick, outcomes):
        pending = self.engine.query(PendingDeliveries(limit=len(outcomes))).records
        results = [DeliveryResult(delivery_id=delivery.id, attempt=delivery.attempt_count + 1, attempted_at=self.now,
                                  status_code=200 if outcome == "delivered" else 500, error="", duration_ms=pick % 100,
                                  outcome=outcome, next_attempt_at=self.now + S)
                   for delivery, outcome in zip(pending, outcomes)]
        assert self.do(RecordDeliveryAttempts(results)).count == len(results)

    @rule(merchant=st.sampled_from(("", *MERCHANTS)), limit=st.integers(1, 3))
    def replay_dead_deliveries(self, merchant, limit):
        assert self.do(ReplayDeliveries(merchant_id=merchant, limit=limit)).code == "ok"

    @rule()
    def restart_from_a_snapshot(self):
        self.twin = Engine.restore(self.engine.snapshot())

    # What holds after every step

    def teardown(self):
        """A twin restored on the way holds the same state at the end (hashed once: a hash per step costs too much)."""
        assert self.twin is None or self.twin.state_hash() == self.engine.state_hash()

    def _accounts(self, ids):
        accounts = self.engine.ledger.accounts
        return [accounts[account_id] for account_id in ids if account_id in accounts]

    def _holding_ids(self):
        for merchant in MERCHANTS:
            for name in ("balance", *SUB_ACCOUNTS[merchant]):
                yield system_account_id(merchant, name, CURRENCY)
            for customer in CUSTOMERS[merchant]:
                yield wallet_account_id(merchant, customer, CURRENCY)

    @staticmethod
    def _ids(*names):
        return [system_account_id(merchant, name, CURRENCY) for merchant in MERCHANTS for name in names]

    @invariant()
    def ledger_checks_out(self):
        self.engine.verify()

    @invariant()
    def nothing_below_zero_and_nothing_minted(self):
        for account in self._accounts([*self._holding_ids(), *self._ids("payouts", "withdrawals")]):
            assert account.debits_pending + account.debits_posted <= account.credits_posted, account.id
        for account in self._accounts(self._ids("clearing_piggybank", "clearing_bank", "adjustments")):
            assert account.credits_pending + account.credits_posted <= account.debits_posted, account.id
        assert not self._accounts(self._ids("deposits"))

    @invariant()
    def money_held_is_money_received_less_money_sent(self):
        held = sum(account.credits_posted - account.debits_posted - account.debits_pending
                   for account in self._accounts(self._holding_ids()))
        in_flight = sum(account.credits_pending for account in self._accounts(self._ids("payouts", "withdrawals")))
        owed = sum(account.debits_posted - account.credits_posted for account in self._accounts(self._ids("disputes")))
        assert held + in_flight == self.received - self.sent + owed, (held, in_flight, self.received, self.sent, owed)

    @invariant()
    def wallets_hold_what_came_in_less_what_went_out(self):
        for (merchant, customer), expected in self.wallets.items():
            assert self.engine.ledger.available(wallet_account_id(merchant, customer, CURRENCY)) == expected, customer

    def _all(self, name: str, in_memory: dict) -> dict:
        """Records of a kind by id, in memory or archived: memory's own when it holds one again."""
        return {**{record_id: record for (kind, record_id), record in self.cold.items() if kind == name},
                **in_memory}

    @invariant()
    def deposits_succeed_when_their_money_reaches_the_wallet(self):
        for deposit in self._all("deposits", self.engine.commerce.deposits.deposits).values():
            assert (deposit.status == "succeeded") == (deposit.id in self.credited_deposits), deposit

    @invariant()
    def each_paid_order_has_one_invoice_and_numbers_have_no_gaps(self):
        orders = self._all("orders", self.engine.commerce.orders.by_id)
        in_memory = {merchant: self.engine.query(ListInvoices(merchant_id=merchant, limit=8190)).records
                     for merchant in MERCHANTS}
        invoices = self._all("invoices", {invoice.id: invoice for listed in in_memory.values() for invoice in listed})
        for merchant in MERCHANTS:
            own = [invoice for invoice in invoices.values() if invoice.merchant_id == merchant]
            assert sorted(invoice.number for invoice in own) == list(range(1, len(own) + 1))
            assert {invoice.order_id: invoice.id for invoice in own} == {
                order.id: order.invoice_id for order in orders.values()
                if order.merchant_id == merchant and order.invoice_id}
        assert all(order.invoice_id for order in orders.values()
                   if order.status in ("paid", "partially_refunded", "refunded"))

    @invariant()
    def splits_go_out_at_most_once(self):
        transfers = self._all("transfers", self.engine.ledger.transfers)
        for order in self.orders:
            paid_out = [index for payment_id in order.payment_ids for index in range(len(order.splits))
                        if f"{order.merchant_id}:{payment_id}.split{index}" in transfers]
            assert len(paid_out) in (0, len(order.splits)), (order, paid_out)


def _copy(record):
    """A record as it comes out of a store: decoded anew, shared with nothing here."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=type(record))


def _transfer_ids(command) -> set[str]:
    """The ledger transfer ids a command names: the only ids its refusal may spend."""
    held = getattr(command, "withdrawal", None) or getattr(command, "payout", None)
    return {getattr(command, "transfer_id", ""), getattr(held, "hold_id", "")} - {""}


def test_money_is_conserved():
    run_state_machine_as_test(ConservationMachine, settings=FAST)


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)  # 10,000 examples take far longer than the default run's bound
def test_money_is_conserved_at_length():
    run_state_machine_as_test(ConservationMachine, settings=LONG)
