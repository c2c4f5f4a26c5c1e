"""Money is conserved under any sequence of the engine's commands (a hypothesis state machine).

Two merchants with sub-accounts and customers take orders with splits and PATCHes; card, QR, bank-transfer and
wallet payments; the acquirer's and the bank's answers in any order (late, duplicated, for closed orders, for other
amounts); captures (partial), cancels, refunds (partial), payouts paid and failed, wallet deposits and withdrawals,
and time passing (order expiries, acquirer deadlines, authorization holds). After every step:

- no exception escapes and the ledger's full check holds;
- no account that holds money (balance, sub-account, wallet) is below zero, and no inflow mirror (clearing) has
  given back more than it took in, checked on the balances themselves, whatever flags the accounts carry;
- money held (what those accounts hold, plus payouts in flight) equals money received from outside less money
  sent outside, both sides computed here from the outside events this test drove and the engine accepted;
- an order's splits went out at most once.
"""

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from engine import Engine
from engine.records import (
    CancelOrder,
    CancelPayment,
    CapturePayment,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    CreateSubAccount,
    Customer,
    Merchant,
    MoveWallet,
    Order,
    Payment,
    PayOrderFromWallet,
    Payout,
    ReceiveBankTransfer,
    RecordPayoutResult,
    RecordPspResult,
    Refund,
    Split,
    SubAccount,
    UpdateOrder,
    system_account_id,
    wallet_account_id,
)
from engine.types import AMOUNT_MAX, NANOSECONDS_PER_SECOND
from ledger_helpers import apply_batch

S = NANOSECONDS_PER_SECOND
T0 = 1_700_000_000 * S
CURRENCY = "USD"
MERCHANTS = ("m1", "m2")
SUB_ACCOUNTS = {"m1": ("sub_a", "sub_b"), "m2": ("sub_c",)}
CUSTOMERS = {"m1": ("c1", "c2"), "m2": ("c3",)}
# Destinations a split may name: merchants, sub-accounts (the order's own or not), and one that does not exist.
DESTINATIONS = ("m1", "m2", "sub_a", "sub_b", "sub_c", "m9")
HUGE = (AMOUNT_MAX, AMOUNT_MAX // 2 + 1)
# Mostly small amounts, one in ten at the edge of the range (to meet the overflow refusals).
AMOUNTS = st.tuples(st.integers(0, 19), st.integers(1, 300)).map(lambda drawn: HUGE[drawn[0]] if drawn[0] < 2 else drawn[1])
PICK = st.integers(0, 10**6)
SOME_SECONDS = st.sampled_from((1, 20, 31, 61, 3600, 8 * 86400))
FAST = settings(max_examples=300, stateful_step_count=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LONG = settings(FAST, max_examples=10_000)


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
    captured: int = 0
    refunded: int = 0


@dataclass
class PayoutModel:
    id: str
    merchant_id: str
    amount: int


class ConservationMachine(RuleBasedStateMachine):
    @initialize()
    def open_shop(self):
        self.engine = Engine()
        self.now = T0
        self.serial = 0
        self.received = 0  # from outside: captures, transfers received, deposits
        self.sent = 0  # to outside: refunds to the acquirer or bank, paid payouts, withdrawals
        self.orders: list[OrderModel] = []
        self.payments: dict[str, PaymentModel] = {}
        self.payouts: list[PayoutModel] = []
        self.callbacks: list = []  # callbacks sent once, to send again
        commands = [CreateMerchant(Merchant(id=mid, name=mid, email=f"{mid}@example.com")) for mid in MERCHANTS]
        commands += [CreateSubAccount(mid, SubAccount(sub, sub)) for mid, subs in SUB_ACCOUNTS.items() for sub in subs]
        commands += [CreateCustomer(Customer(id=cid, merchant_id=mid, email=f"{cid}@example.com"))
                     for mid, cids in CUSTOMERS.items() for cid in cids]
        assert {outcome.code for outcome in self.run(*commands).results} == {"ok"}

    # Driving

    def run(self, *commands, seconds: int = 0):
        self.now += seconds * S or 1_000_000
        return apply_batch(self.engine, self.now, commands)

    def do(self, command):
        return self.run(command).results[0]

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
                                                            manual)
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
        self.callbacks.append(callback)
        self._record_acquirer_answer(callback)

    def _record_acquirer_answer(self, callback: RecordPspResult):
        outcome = self.do(callback)
        if outcome.code == "ok" and outcome.record.status == "succeeded":  # captured at once: the acquirer owes it
            payment = self.payments[callback.payment_id]
            payment.captured = payment.amount
            self.received += payment.amount
            assert outcome.record.amount_captured == payment.amount

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

    @precondition(lambda self: self.callbacks)
    @rule(pick=PICK)
    def a_callback_comes_again(self, pick):
        callback = self.callbacks[pick % len(self.callbacks)]
        again = type(callback)(**{name: getattr(callback, name) for name in callback.__struct_fields__})
        if type(again) is RecordPspResult:
            self._record_acquirer_answer(again)
        else:
            self._bank_transfer(again)

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

    @rule(merchant=st.sampled_from(MERCHANTS), pick=PICK, amount=AMOUNTS, withdrawal=st.booleans())
    def wallet_moves(self, merchant, pick, amount, withdrawal):
        customers = CUSTOMERS[merchant]
        outcome = self.do(MoveWallet(merchant_id=merchant, customer_id=customers[pick % len(customers)],
                                     transfer_id=self.fresh(f"{merchant}:w"), amount=amount, currency=CURRENCY,
                                     withdrawal=withdrawal))
        if outcome.code == "ok":
            if withdrawal:
                self.sent += amount
            else:
                self.received += amount

    @precondition(lambda self: self.orders)
    @rule(pick=PICK)
    def pay_from_a_wallet(self, pick):
        order = self.recent(self.orders, pick)
        customers = CUSTOMERS[order.merchant_id]
        outcome = self.do(PayOrderFromWallet(merchant_id=order.merchant_id, order_id=order.id,
                                             customer_id=customers[pick % len(customers)],
                                             payment_id=self.fresh("pw"), transfer_id=self.fresh(f"{order.merchant_id}:pw")))
        if outcome.code == "ok" and outcome.record.status == "succeeded":
            payment = self._payment_model(outcome.record, "wallet")
            payment.captured = order.amount
            assert outcome.record.amount_captured == order.amount

    # Money out

    @precondition(lambda self: self.payments)
    @rule(pick=PICK, amount=st.integers(0, 150))
    def refund(self, pick, amount):
        payment = self.recent(list(self.payments.values()), pick)
        outcome = self.do(CreateRefund(refund=Refund(id=self.fresh("r"), merchant_id=payment.merchant_id,
                                                     payment_id=payment.id, amount=amount),
                                       transfer_id=self.fresh(f"{payment.merchant_id}:rf")))
        if outcome.code == "ok":
            refunded = amount or payment.captured - payment.refunded
            assert outcome.record.amount == refunded
            payment.refunded += refunded
            assert payment.refunded <= payment.captured
            if payment.method != "wallet":  # back to the card or the payer's bank; a wallet's stays with us
                self.sent += refunded

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

    # What holds after every step

    def _accounts(self, ids):
        accounts = self.engine.ledger.accounts
        return [accounts[account_id] for account_id in ids if account_id in accounts]

    def _holding_ids(self):
        for merchant in MERCHANTS:
            for name in ("balance", *SUB_ACCOUNTS[merchant]):
                yield system_account_id(merchant, name, CURRENCY)
            for customer in CUSTOMERS[merchant]:
                yield wallet_account_id(merchant, customer, CURRENCY)

    @invariant()
    def ledger_checks_out(self):
        self.engine.verify()

    @invariant()
    def nothing_below_zero_and_nothing_minted(self):
        for account in self._accounts(self._holding_ids()):
            assert account.debits_pending + account.debits_posted <= account.credits_posted, account.id
        clearing = [system_account_id(merchant, name, CURRENCY) for merchant in MERCHANTS
                    for name in ("clearing_piggybank", "clearing_bank")]
        for account in self._accounts(clearing):
            assert account.credits_pending + account.credits_posted <= account.debits_posted, account.id

    @invariant()
    def money_held_is_money_received_less_money_sent(self):
        held = sum(account.credits_posted - account.debits_posted - account.debits_pending
                   for account in self._accounts(self._holding_ids()))
        in_flight = sum(account.credits_pending for account in self._accounts(
            system_account_id(merchant, "payouts", CURRENCY) for merchant in MERCHANTS))
        assert held + in_flight == self.received - self.sent, (held, in_flight, self.received, self.sent)

    @invariant()
    def splits_go_out_at_most_once(self):
        transfers = self.engine.ledger.transfers
        for order in self.orders:
            paid_out = [index for payment_id in order.payment_ids for index in range(len(order.splits))
                        if f"{order.merchant_id}:{payment_id}.split{index}" in transfers]
            assert len(paid_out) in (0, len(order.splits)), (order, paid_out)


def test_money_is_conserved():
    run_state_machine_as_test(ConservationMachine, settings=FAST)


@pytest.mark.slow
def test_money_is_conserved_at_length():
    run_state_machine_as_test(ConservationMachine, settings=LONG)
