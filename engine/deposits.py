"""Money into and out of customers' wallets: deposits, withdrawals and operators' adjustments.

Money enters a wallet only from a real inflow. A deposit owns a payment of its own (card, QR or bank transfer),
handled by the payment machinery like any other, except that its money lands in the wallet: the acquirer's
authorization moves it from the acquirer's clearing account (`clearing_piggybank`), the bank's transfer quoting the deposit from `clearing_bank`.
The deposit follows its payment's status (engine/states.py). A withdrawal holds wallet money towards the
`withdrawals` account until the bank says paid (the hold is posted) or failed (voided: the money is back). An
adjustment is an operator's named credit from the merchant's `adjustments` account, which conservation counts as
an inflow. Every command checks all it can before it changes anything.
"""

from typing import Callable

from engine.changes import Changes
from engine.ledger import Ledger
from engine.payments import (
    BANK_METHODS,
    CALLBACK_REPLAYED,
    Payments,
    awaited_transfer_refusal,
    ensure_wallet,
    move,
    move_into,
    move_refusal,
    system_account,
)
from engine.records import (
    AdjustWallet,
    Adjustment,
    CreateDeposit,
    CreateWithdrawal,
    Customer,
    Deposit,
    Outcome,
    Payment,
    ReceiveDepositTransfer,
    RecordWithdrawalResult,
    Withdrawal,
    system_account_id,
    wallet_account_id,
)
from engine.states import DEPOSIT_STATUS_OF_PAYMENT, is_final, transition
from engine.types import AMOUNT_MAX, NANOSECONDS_PER_SECOND, Event, Transfer, TransferFlag

DEPOSIT_METHODS = ("card", *BANK_METHODS)
MAX_REASON_CHARS = 500
DEPOSIT_EXPIRED = "deposit_expired"
MAX_TRANSFER_WINDOW_S = 30 * 86400


class Deposits:
    def __init__(self, ledger: Ledger, changes: Changes, payments: Payments,
                 customer_of: Callable[[str, str], Customer | None], events: list[Event]) -> None:
        # State lives in tracked containers (engine/changes.py): a command that raises is undone whole.
        self.ledger = ledger
        self.payments = payments
        self.customer_of = customer_of
        self.events = events
        self.deposits: dict[str, Deposit] = changes.dict()
        self.withdrawals: dict[str, Withdrawal] = changes.dict()
        self.adjustments: dict[str, Adjustment] = changes.dict()
        # payment id -> the deposit it funds, while that deposit is open (derived: restore rebuilds it)
        self.open_by_payment: dict[str, str] = changes.dict(ordered=False)
        # (expires_at, deposit id) of deposits waiting for a transfer (derived: restore rebuilds it)
        self.expiries = changes.heap()

    # Time

    def advance(self, timestamp: int) -> None:
        """Fail the QR and bank transfer deposits whose transfer did not come in time: nothing stays open for ever."""
        while self.expiries and self.expiries[0][0] <= timestamp:
            _, deposit_id = self.expiries.pop()
            deposit = self.deposits[deposit_id]
            if deposit.status == "requires_action":
                self.payments.fail(self.payments.payments[deposit.payment_id], DEPOSIT_EXPIRED,
                                   "no transfer quoting the deposit came in time", timestamp)

    # Deposits

    def create_deposit(self, command: CreateDeposit, timestamp: int) -> Outcome:
        deposit, payment = command.deposit, command.payment.payment
        refusal = self._deposit_refusal(deposit, payment, command.transfer_window_s)
        if refusal:
            return Outcome(refusal)
        # The payment is the deposit's, whatever was sent: its amount, its wallet, captured at once.
        payment.amount, payment.currency, payment.customer_id = deposit.amount, deposit.currency, deposit.customer_id
        payment.method, payment.order_id, payment.deposit_id = deposit.method, "", deposit.id
        payment.capture_method = "automatic"
        first_event = len(self.events)
        deposit.expires_at = 0
        if deposit.method == "card":
            outcome = self.payments.create_payment(command.payment, timestamp)
            if outcome.code != "ok":
                return outcome
        else:
            self._await_transfer(payment, timestamp)
            deposit.expires_at = timestamp + command.transfer_window_s * NANOSECONDS_PER_SECOND
            self.expiries.push((deposit.expires_at, deposit.id))
        deposit.payment_id = payment.id
        deposit.status = "requires_action" if deposit.method in BANK_METHODS else "processing"
        deposit.next_action_url = payment.next_action_url if deposit.method in BANK_METHODS else ""
        deposit.failure_code = deposit.failure_message = ""
        deposit.created_at = deposit.updated_at = timestamp
        self.deposits[deposit.id] = deposit
        self.open_by_payment[payment.id] = deposit.id
        self.events.append(Event("deposit.created", deposit.id, timestamp))
        self.follow_payments(first_event, timestamp)  # a payment the risk rules refused fails its deposit at once
        return Outcome(record=deposit)

    def _deposit_refusal(self, deposit: Deposit, payment: Payment, transfer_window_s: int) -> str:
        if self.customer_of(deposit.merchant_id, deposit.customer_id) is None:
            return "customer_not_found"
        if deposit.id in self.deposits or payment.id in self.payments.payments:
            return "exists"
        if deposit.method not in DEPOSIT_METHODS or payment.merchant_id != deposit.merchant_id:
            return "payment_method_not_allowed"
        if not 0 < transfer_window_s <= MAX_TRANSFER_WINDOW_S:
            return "transfer_window_out_of_range"
        return _amount_refusal(deposit.amount)

    def _await_transfer(self, payment: Payment, timestamp: int) -> None:
        """A QR or bank transfer deposit's payment: it waits for the payer's transfer quoting the deposit."""
        funded = Payment(id=payment.id, merchant_id=payment.merchant_id, amount=payment.amount,
                         currency=payment.currency, method=payment.method, customer_id=payment.customer_id,
                         acquirer="bank", status="requires_action", next_action_url=payment.next_action_url,
                         description=payment.description, metadata=payment.metadata, deposit_id=payment.deposit_id,
                         created_at=timestamp, updated_at=timestamp)
        self.payments.add(funded)
        self.events.append(Event("payment.requires_action", funded.id, timestamp))

    def receive_transfer(self, command: ReceiveDepositTransfer, timestamp: int) -> Outcome:
        """Money the bank received quoting a deposit: credited to the wallet from `clearing_bank`, once."""
        if self.payments.replayed(command.signature, timestamp):
            return Outcome(CALLBACK_REPLAYED)
        deposit = self.deposits.get(command.deposit_id)
        if deposit is None or deposit.merchant_id != command.merchant_id or deposit.method not in BANK_METHODS:
            return Outcome("deposit_not_found")
        payment = self.payments.payments[deposit.payment_id]  # its status, amount and currency are the deposit's
        refused = awaited_transfer_refusal(payment, command, "deposit_not_open", deposit)
        if refused is not None:
            return refused
        incoming = Transfer(command.transfer_id,
                            system_account_id(deposit.merchant_id, "clearing_bank", deposit.currency),
                            wallet_account_id(deposit.merchant_id, deposit.customer_id, deposit.currency),
                            deposit.amount, deposit.currency)
        refusal = move_refusal(self.ledger, incoming)  # before its accounts are made: a refusal leaves none
        if refusal:
            return Outcome(refusal, record=deposit)
        first_event = len(self.events)
        system_account(self.ledger, deposit.merchant_id, "clearing_bank", deposit.currency, timestamp)
        ensure_wallet(self.ledger, deposit.merchant_id, deposit.customer_id, deposit.currency, timestamp)
        code = move(self.ledger, incoming, timestamp)
        if code != "ok":
            return Outcome(code, record=deposit)
        payment.callback_ids = [*payment.callback_ids, command.callback_id]
        payment.psp_reference, payment.next_action_url = command.bank_reference, ""
        self.payments.succeed(payment, deposit.amount, timestamp)
        self.follow_payments(first_event, timestamp)
        return Outcome(record=deposit)

    def follow_payments(self, first_event: int, timestamp: int) -> None:
        """Bring open deposits in line with their payments, from the payment events since `first_event`."""
        if not self.open_by_payment:
            return
        for event in self.events[first_event:]:
            deposit_id = self.open_by_payment.get(event.object_id)
            if deposit_id is not None and event.kind.startswith("payment."):
                self._follow(self.deposits[deposit_id], self.payments.payments[event.object_id], timestamp)

    def _follow(self, deposit: Deposit, payment: Payment, timestamp: int) -> None:
        status = DEPOSIT_STATUS_OF_PAYMENT[payment.status]
        if status == deposit.status:
            return
        transition(deposit, status)
        deposit.updated_at = timestamp
        deposit.next_action_url = payment.next_action_url if status == "requires_action" else ""
        if status == "failed":
            deposit.failure_code = payment.failure_code or payment.status
            deposit.failure_message = payment.failure_message
        if is_final(deposit):
            del self.open_by_payment[payment.id]
            self.events.append(Event(f"deposit.{status}", deposit.id, timestamp))

    # Withdrawals

    def create_withdrawal(self, command: CreateWithdrawal, timestamp: int) -> Outcome:
        withdrawal = command.withdrawal
        if withdrawal.id in self.withdrawals:
            return Outcome("exists")
        if self.customer_of(withdrawal.merchant_id, withdrawal.customer_id) is None:
            return Outcome("customer_not_found")
        refusal = _amount_refusal(withdrawal.amount)
        if refusal:
            return Outcome(refusal)
        wallet = wallet_account_id(withdrawal.merchant_id, withdrawal.customer_id, withdrawal.currency)
        if self.ledger.available(wallet) < withdrawal.amount:
            return Outcome("insufficient_funds")
        hold = Transfer(withdrawal.hold_id, wallet,
                        system_account_id(withdrawal.merchant_id, "withdrawals", withdrawal.currency),
                        withdrawal.amount, withdrawal.currency, flags=TransferFlag.PENDING)
        code = move_into(self.ledger, hold, withdrawal.merchant_id, "withdrawals", timestamp)
        if code != "ok":
            return Outcome(code)
        withdrawal.status, withdrawal.failure_code = "pending", ""
        withdrawal.created_at = withdrawal.updated_at = timestamp
        self.withdrawals[withdrawal.id] = withdrawal
        self.events.append(Event("withdrawal.created", withdrawal.id, timestamp))
        return Outcome(record=withdrawal)

    def record_withdrawal_result(self, command: RecordWithdrawalResult, timestamp: int) -> Outcome:
        if self.payments.replayed(command.signature, timestamp):
            return Outcome(CALLBACK_REPLAYED)
        withdrawal = self.withdrawals.get(command.withdrawal_id)
        if withdrawal is None or withdrawal.merchant_id != command.merchant_id:
            return Outcome("withdrawal_not_found")
        if is_final(withdrawal):
            return Outcome("duplicate", record=withdrawal)
        flags = TransferFlag.POST_PENDING if command.paid else TransferFlag.VOID_PENDING
        code = move(self.ledger, Transfer(command.transfer_id, pending_id=withdrawal.hold_id, flags=flags), timestamp)
        if code != "ok":
            return Outcome(code, record=withdrawal)
        transition(withdrawal, "paid" if command.paid else "failed")
        withdrawal.updated_at = timestamp
        withdrawal.failure_code = "" if command.paid else command.failure_code or "withdrawal_failed"
        self.events.append(Event(f"withdrawal.{withdrawal.status}", withdrawal.id, timestamp))
        return Outcome(record=withdrawal)

    # Adjustments

    def adjust(self, command: AdjustWallet, timestamp: int) -> Outcome:
        adjustment = command.adjustment
        if adjustment.id in self.adjustments:
            return Outcome("exists")
        if self.customer_of(adjustment.merchant_id, adjustment.customer_id) is None:
            return Outcome("customer_not_found")
        if not adjustment.reason.strip() or len(adjustment.reason) > MAX_REASON_CHARS:
            return Outcome("reason_required")
        refusal = _amount_refusal(adjustment.amount)
        if refusal:
            return Outcome(refusal)
        credit = Transfer(command.transfer_id,
                          system_account_id(adjustment.merchant_id, "adjustments", adjustment.currency),
                          wallet_account_id(adjustment.merchant_id, adjustment.customer_id, adjustment.currency),
                          adjustment.amount, adjustment.currency)
        refusal = move_refusal(self.ledger, credit)  # before its accounts are made: a refusal leaves none
        if refusal:
            return Outcome(refusal)
        # Debit-normal (the chart's flags): it runs a debit balance, and only up to that may money go back out.
        system_account(self.ledger, adjustment.merchant_id, "adjustments", adjustment.currency, timestamp)
        ensure_wallet(self.ledger, adjustment.merchant_id, adjustment.customer_id, adjustment.currency, timestamp)
        code = move(self.ledger, credit, timestamp)
        if code != "ok":
            return Outcome(code)
        adjustment.created_at = timestamp
        self.adjustments[adjustment.id] = adjustment
        self.events.append(Event("adjustment.created", adjustment.id, timestamp))
        return Outcome(record=adjustment)

    # Reads

    def record_of(self, merchant_id: str, kind: str, record_id: str) -> Deposit | Withdrawal | Adjustment | None:
        records = {"deposit": self.deposits, "withdrawal": self.withdrawals, "adjustment": self.adjustments}
        record = records.get(kind, {}).get(record_id)
        return record if record is not None and record.merchant_id == merchant_id else None

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"deposits": list(self.deposits.values()), "withdrawals": list(self.withdrawals.values()),
                "adjustments": list(self.adjustments.values())}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot, rebuilding the open deposits' indexes."""
        deposits = snapshot.deposits
        self.deposits.load((deposit.id, deposit) for deposit in deposits)
        self.withdrawals.load((withdrawal.id, withdrawal) for withdrawal in snapshot.withdrawals)
        self.adjustments.load((adjustment.id, adjustment) for adjustment in snapshot.adjustments)
        self.open_by_payment.load((deposit.payment_id, deposit.id) for deposit in deposits
                                  if not is_final(deposit))
        self.expiries.load((deposit.expires_at, deposit.id) for deposit in deposits
                           if deposit.status == "requires_action" and deposit.expires_at)


def _amount_refusal(amount: int) -> str:
    if amount <= 0:
        return "amount_must_not_be_zero"
    return "amount_exceeds_maximum" if amount > AMOUNT_MAX else ""
