"""Payments, refunds and payouts: state machines whose money moves are the ledger's own transfers.

A card authorization held for manual capture is a pending transfer from the
acquirer's clearing account to the merchant's balance, so capture, partial
capture, void and release on timeout are the ledger's two-phase operations.
A refund moves money back and never past what was captured; a payout holds
the merchant's balance until the bank answers, and a failure returns it.
"""

from engine.changes import Changes
from engine.codes import transfer_outcome
from engine.ledger import Ledger
from engine.records import (
    CancelPayment,
    CapturePayment,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    Merchant,
    Order,
    Outcome,
    Payment,
    Payout,
    RecordPayoutResult,
    ReceiveBankTransfer,
    RecordPspResult,
    Refund,
    VaultedCard,
    system_account_id,
    wallet_account_id,
)
from engine.types import NANOSECONDS_PER_SECOND, AccountFlag, Event, Transfer, TransferFlag

# Every status a payment takes; a refund leaves it succeeded (amount_refunded says how much went back).
PAYMENT_STATUSES = ("processing", "requires_action", "requires_capture", "succeeded", "failed", "cancelled")
OPEN_STATUSES = ("processing", "requires_action")
# An order's payment in one of these may still take its money: a second payment must not charge it too.
IN_PROGRESS_STATUSES = (*OPEN_STATUSES, "requires_capture")
# Paid by the payer's own bank transfer quoting the order: such a payment waits (requires_action) for the money.
BANK_METHODS = ("qr", "bank_transfer")
RISK_REJECTED = "risk_rejected"
CALLBACK_REPLAYED = "callback_replayed"
# A provider's signature is good for 300 s either side of the clock: one seen is remembered for twice that.
CALLBACK_REPLAY_WINDOW_NS = 600 * NANOSECONDS_PER_SECOND
MAX_CALLBACK_SIGNATURES = 100_000  # beyond it the oldest is forgotten: a bound, well above any provider's rate


class Payments:
    def __init__(self, ledger: Ledger, changes: Changes, merchants: dict[str, Merchant], orders: dict[str, Order],
                 events: list[Event]) -> None:
        self.ledger = ledger
        self.merchants = merchants
        self.orders = orders
        self.events = events
        self.payments: dict[str, Payment] = changes.dict()
        # merchant id -> its payment ids, oldest first (derived: restore rebuilds it)
        self.by_merchant: dict[str, list[str]] = changes.dict()
        # token id -> a card sealed by the edge; the engine never sees a card number in clear
        self.cards: dict[str, VaultedCard] = changes.dict()
        self.refunds: dict[str, Refund] = changes.dict()
        self.payouts: dict[str, Payout] = changes.dict()
        # signature -> when its callback came (engine time), oldest first
        self.callback_signatures: dict[str, int] = changes.dict()
        self.deadlines = changes.heap()  # (deadline_at, payment id)
        # pending transfer id -> payment id, to hear of an authorization that timed out
        self.payment_by_hold: dict[str, str] = changes.dict(ordered=False)

    # Time

    def advance(self, timestamp: int, expired_transfers: list[str]) -> None:
        """Fail payments the provider left unanswered; cancel authorizations the ledger released."""
        while self.deadlines and self.deadlines[0][0] <= timestamp:
            _, payment_id = self.deadlines.pop()
            payment = self.payments[payment_id]
            if payment.status in OPEN_STATUSES:
                self._fail(payment, "processing_timeout", "the acquirer did not answer in time", timestamp)
        for transfer_id in expired_transfers:
            payment_id = self.payment_by_hold.pop(transfer_id, None)
            if payment_id is not None and self.payments[payment_id].status == "requires_capture":
                payment = self.payments[payment_id]
                payment.status = "cancelled"
                payment.amount_capturable = 0
                payment.updated_at = timestamp
                self.events.append(Event("payment.canceled", payment.id, timestamp))

    # Commands

    def create_payment(self, command: CreatePayment, timestamp: int) -> Outcome:
        payment = command.payment
        if payment.merchant_id not in self.merchants:
            return Outcome("merchant_not_found")
        if payment.id in self.payments:
            return Outcome("exists")
        if command.sealed_card and (payment.card is None or not payment.token_id or payment.token_id in self.cards):
            return Outcome("card_invalid")
        if payment.token_id and not command.sealed_card:
            vaulted = self.cards.get(payment.token_id)
            if vaulted is None or vaulted.merchant_id != payment.merchant_id:
                return Outcome("token_not_found")
            payment.card = vaulted.card
        customer_id = customer_email = ""
        if payment.method in BANK_METHODS and not payment.order_id:
            return Outcome("order_not_found")  # a transfer quotes an order: there is nothing else to quote
        if payment.order_id:
            order = self.orders.get(payment.order_id)
            if order is None or order.merchant_id != payment.merchant_id:
                return Outcome("order_not_found")
            if order.status != "pending":
                return Outcome("order_not_pending", record=order)
            if payment.method not in order.payment_methods:
                return Outcome("payment_method_not_allowed", record=order)
            if self.payment_in_progress(order):
                return Outcome("payment_in_progress", record=order)
            payment.amount, payment.currency = order.amount, order.currency
            customer_id, customer_email = order.customer_id, order.customer_email
        # Everything but what the client chose starts from nothing, whatever was sent.
        fresh = Payment(id=payment.id, merchant_id=payment.merchant_id, amount=payment.amount, currency=payment.currency,
                        order_id=payment.order_id, method=payment.method, card=payment.card, token_id=payment.token_id,
                        customer_id=customer_id, customer_email=customer_email, customer_ip=payment.customer_ip,
                        capture_method=payment.capture_method, acquirer=payment.acquirer,
                        description=payment.description, metadata=payment.metadata, created_at=timestamp,
                        updated_at=timestamp)
        if fresh.method in BANK_METHODS:
            fresh.status, fresh.acquirer, fresh.next_action_url = "requires_action", "bank", payment.next_action_url
        payment = self.add(fresh)
        if payment.order_id:
            order = self.orders[payment.order_id]
            order.payment_id = payment.id  # the order's latest attempt
            if payment.method in BANK_METHODS:
                self.order_closed(order, timestamp)  # a payment started again: the one before it is superseded
                order.transfer_payment_id = payment.id
        if command.sealed_card:
            self.cards[payment.token_id] = VaultedCard(payment.merchant_id, payment.card, command.sealed_card)
        self.events.append(Event("payment.created", payment.id, timestamp))
        refusal = self.risk_refusal(payment.merchant_id, payment.amount, payment.currency, command.risk_reason,
                                    command.amount_limits)
        if refusal:
            self._fail(payment, RISK_REJECTED, refusal, timestamp)
        elif payment.method in BANK_METHODS:
            self.events.append(Event("payment.requires_action", payment.id, timestamp))
        elif command.processing_timeout_s:
            payment.deadline_at = timestamp + command.processing_timeout_s * NANOSECONDS_PER_SECOND
            self.deadlines.push((payment.deadline_at, payment.id))
        return Outcome(record=payment)

    def payment_in_progress(self, order: Order) -> bool:
        """A payment of the order may still take its money. Not one waiting for a bank transfer: the payer may turn
        to a card instead, and a transfer that comes all the same is kept (the order then says `exception`)."""
        current = self.payments.get(order.payment_id) if order.payment_id else None
        return current is not None and current.status in IN_PROGRESS_STATUSES and current.method not in BANK_METHODS

    def awaiting_transfer(self, order: Order) -> Payment | None:
        payment = self.payments.get(order.transfer_payment_id) if order.transfer_payment_id else None
        return payment if payment is not None and payment.status == "requires_action" else None

    def order_closed(self, order: Order, timestamp: int) -> None:
        """The order expired or was cancelled: a payment waiting for its transfer waits no more."""
        payment = self.awaiting_transfer(order)
        order.transfer_payment_id = ""
        if payment is not None:
            payment.status, payment.next_action_url, payment.updated_at = "cancelled", "", timestamp
            self.events.append(Event("payment.canceled", payment.id, timestamp))

    def risk_refusal(self, merchant_id: str, amount: int, currency: str, risk_reason: str,
                     amount_limits: dict[str, int]) -> str:
        """Why the risk rules refuse a payment ('' if they do not): the edge's reason, or an amount over the limit."""
        if risk_reason:
            return risk_reason
        amount_limit = amount_limits.get(currency, 0)
        if amount_limit and amount > amount_limit:
            tier = self.merchants[merchant_id].tier
            return f"the amount {amount} {currency} is above the {tier} tier's limit of {amount_limit}"
        return ""

    def replayed(self, signature: str, timestamp: int) -> bool:
        """Whether a callback's signature was seen within the replay window; a new one is remembered."""
        seen = self.callback_signatures
        while seen:
            oldest = next(iter(seen))
            if len(seen) < MAX_CALLBACK_SIGNATURES and seen[oldest] > timestamp - CALLBACK_REPLAY_WINDOW_NS:
                break
            del seen[oldest]
        if not signature:
            return False
        if signature in seen:
            return True
        seen[signature] = timestamp
        return False

    def record_psp_result(self, command: RecordPspResult, timestamp: int) -> Outcome:
        if self.replayed(command.signature, timestamp):
            return Outcome(CALLBACK_REPLAYED)
        payment = self._payment_of(command.merchant_id, command.payment_id)
        if payment is None or command.acquirer not in ("", payment.acquirer):  # not a payment this provider has
            return Outcome("payment_not_found")
        if command.callback_id in payment.callback_ids:
            return Outcome("duplicate", record=payment)
        if payment.status not in OPEN_STATUSES:
            return Outcome("payment_not_open", record=payment)
        payment.callback_ids = [*payment.callback_ids, command.callback_id]
        payment.psp_reference = command.psp_reference or payment.psp_reference
        payment.updated_at = timestamp
        result = command.result
        if result == "requires_action":
            payment.status = "requires_action"
            payment.next_action_url = command.action_url
            self.events.append(Event("payment.requires_action", payment.id, timestamp))
            return Outcome(record=payment)
        if result != "authorized":
            default_code = "card_declined" if result == "declined" else "processing_error"
            self._fail(payment, command.failure_code or default_code, command.failure_message, timestamp)
            return Outcome(record=payment)
        return self._authorized(payment, command, timestamp)

    def _authorized(self, payment: Payment, command: RecordPspResult, timestamp: int) -> Outcome:
        clearing = system_account(self.ledger, payment.merchant_id, f"clearing_{payment.acquirer}", payment.currency, timestamp)
        balance = system_account(self.ledger, payment.merchant_id, "balance", payment.currency, timestamp)
        manual = payment.capture_method == "manual"
        transfer = Transfer(command.transfer_id, clearing, balance, payment.amount, payment.currency,
                            timeout_s=command.hold_timeout_s if manual else 0,
                            flags=TransferFlag.PENDING if manual else 0)
        code = move(self.ledger, transfer, timestamp)
        if code != "ok":
            self._fail(payment, code, "the ledger refused the authorization", timestamp)
            return Outcome(record=payment)
        if manual:
            payment.status = "requires_capture"
            payment.amount_capturable = payment.amount
            payment.authorization_id = command.transfer_id
            self.payment_by_hold[command.transfer_id] = payment.id
            self.events.append(Event("payment.requires_capture", payment.id, timestamp))
            return Outcome(record=payment)
        self._succeed(payment, payment.amount, timestamp)
        return Outcome(record=payment)

    def receive_bank_transfer(self, command: ReceiveBankTransfer, timestamp: int) -> Outcome:
        """Money in from the bank for an order: a payment that succeeds at once (the order decides paid or exception)."""
        if self.replayed(command.signature, timestamp):
            return Outcome(CALLBACK_REPLAYED)
        if not command.order_id:
            return self._receive_on_static_code(command, timestamp)
        order = self.orders.get(command.order_id)
        if order is None or order.merchant_id != command.merchant_id:
            return Outcome("order_not_found")
        if command.payment_id in self.payments:
            return Outcome("duplicate", record=self.payments[command.payment_id])
        if command.currency != order.currency:
            return Outcome("currency_mismatch", record=order)
        # The payment the payer started for this transfer, else a new one. A repeated callback finds neither new:
        # its transfer id (from the callback) is spent, and the ledger refuses it below.
        awaiting = self.awaiting_transfer(order)
        payment = awaiting or Payment(id=command.payment_id, merchant_id=order.merchant_id, amount=command.amount,
                                      currency=order.currency, order_id=order.id, method=command.method,
                                      acquirer="bank", created_at=timestamp)
        clearing = system_account(self.ledger, order.merchant_id, "clearing_bank", order.currency, timestamp)
        balance = system_account(self.ledger, order.merchant_id, "balance", order.currency, timestamp)
        code = move(self.ledger, Transfer(command.transfer_id, clearing, balance, command.amount, order.currency), timestamp)
        if code != "ok":
            return Outcome(code, record=order)
        if awaiting is None:
            self.add(payment)
        order.transfer_payment_id = ""
        payment.amount, payment.psp_reference, payment.next_action_url = command.amount, command.bank_reference, ""
        payment.callback_ids = [*payment.callback_ids, command.callback_id]
        if command.amount != order.amount and order.status == "pending":
            order.status = "exception"  # paid, but not the amount asked: kept and flagged for a person to settle
        self._succeed(payment, command.amount, timestamp)
        return Outcome(record=payment)

    def _receive_on_static_code(self, command: ReceiveBankTransfer, timestamp: int) -> Outcome:
        """Money in on a static code: no order, whatever amount the payer chose, to the merchant or a sub-account."""
        merchant = self.merchants.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        if command.sub_account_id and all(sub.id != command.sub_account_id for sub in merchant.sub_accounts):
            return Outcome("sub_account_not_found")
        if command.payment_id in self.payments:
            return Outcome("duplicate", record=self.payments[command.payment_id])
        clearing = system_account(self.ledger, merchant.id, "clearing_bank", command.currency, timestamp)
        balance = system_account(self.ledger, merchant.id, command.sub_account_id or "balance", command.currency,
                                 timestamp)
        code = move(self.ledger, Transfer(command.transfer_id, clearing, balance, command.amount, command.currency),
                    timestamp)
        if code != "ok":
            return Outcome(code)
        payment = Payment(id=command.payment_id, merchant_id=merchant.id, amount=command.amount,
                          currency=command.currency, method=command.method, acquirer="bank",
                          psp_reference=command.bank_reference, callback_ids=[command.callback_id],
                          metadata={"sub_account_id": command.sub_account_id} if command.sub_account_id else {},
                          created_at=timestamp, updated_at=timestamp)
        self.add(payment)
        self._succeed(payment, command.amount, timestamp)
        return Outcome(record=payment)

    def capture(self, command: CapturePayment, timestamp: int) -> Outcome:
        payment = self._payment_of(command.merchant_id, command.payment_id)
        if payment is None:
            return Outcome("payment_not_found")
        if payment.status != "requires_capture":
            return Outcome("payment_not_capturable", record=payment)
        amount = command.amount or payment.amount_capturable
        if amount > payment.amount_capturable:
            return Outcome("amount_too_large", record=payment)
        post = Transfer(command.transfer_id, amount=amount, pending_id=payment.authorization_id,
                        flags=TransferFlag.POST_PENDING)
        code = move(self.ledger, post, timestamp)
        if code != "ok":
            return Outcome(code, record=payment)
        self.payment_by_hold.pop(payment.authorization_id, None)
        payment.amount_capturable = 0
        self._succeed(payment, amount, timestamp)
        return Outcome(record=payment)

    def cancel(self, command: CancelPayment, timestamp: int) -> Outcome:
        payment = self._payment_of(command.merchant_id, command.payment_id)
        if payment is None:
            return Outcome("payment_not_found")
        if payment.status == "requires_capture":
            void = Transfer(command.transfer_id, pending_id=payment.authorization_id, flags=TransferFlag.VOID_PENDING)
            code = move(self.ledger, void, timestamp)
            if code != "ok":
                return Outcome(code, record=payment)
            self.payment_by_hold.pop(payment.authorization_id, None)
        elif payment.status not in OPEN_STATUSES:
            return Outcome("payment_not_cancelable", record=payment)
        payment.status = "cancelled"
        payment.amount_capturable = 0
        payment.updated_at = timestamp
        self.events.append(Event("payment.canceled", payment.id, timestamp))
        return Outcome(record=payment)

    def refund(self, command: CreateRefund, timestamp: int) -> Outcome:
        refund = command.refund
        if refund.id in self.refunds:
            return Outcome("exists")
        payment = self._payment_of(refund.merchant_id, refund.payment_id)
        if payment is None:
            return Outcome("payment_not_found")
        if payment.status != "succeeded":
            return Outcome("payment_not_refundable", record=payment)
        amount = refund.amount or payment.amount_captured - payment.amount_refunded
        if amount <= 0 or payment.amount_refunded + amount > payment.amount_captured:
            return Outcome("amount_too_large", record=payment)
        balance = system_account_id(payment.merchant_id, "balance", payment.currency)
        if self.ledger.available(balance) < amount:  # money already paid out or held for a payout
            return Outcome("insufficient_funds", record=payment)
        # The money goes back the way it came: to the wallet, or to the acquirer for the card.
        source = (wallet_account_id(payment.merchant_id, payment.customer_id, payment.currency)
                  if payment.method == "wallet"
                  else system_account_id(payment.merchant_id, f"clearing_{payment.acquirer}", payment.currency))
        code = move(self.ledger, Transfer(command.transfer_id, balance, source, amount, payment.currency), timestamp)
        if code != "ok":
            return Outcome(code, record=payment)
        refund.amount, refund.currency, refund.status, refund.created_at = amount, payment.currency, "succeeded", timestamp
        self.refunds[refund.id] = refund
        payment.amount_refunded += amount
        payment.updated_at = timestamp
        self._mark_order_refunded(payment, amount, timestamp)
        self.events.append(Event("refund.succeeded", refund.id, timestamp))
        return Outcome(record=refund)

    def create_payout(self, command: CreatePayout, timestamp: int) -> Outcome:
        payout = command.payout
        if payout.id in self.payouts:
            return Outcome("exists")
        balance = system_account_id(payout.merchant_id, payout.sub_account_id or "balance", payout.currency)
        if payout.amount <= 0:
            return Outcome("amount_must_not_be_zero")
        if self.ledger.available(balance) < payout.amount:
            return Outcome("insufficient_funds")
        payouts = system_account(self.ledger, payout.merchant_id, "payouts", payout.currency, timestamp)
        hold = Transfer(payout.hold_id, balance, payouts, payout.amount, payout.currency, flags=TransferFlag.PENDING)
        code = move(self.ledger, hold, timestamp)
        if code != "ok":
            return Outcome(code)
        payout.status = "pending"
        payout.created_at = payout.updated_at = timestamp
        self.payouts[payout.id] = payout
        self.events.append(Event("payout.created", payout.id, timestamp))
        return Outcome(record=payout)

    def record_payout_result(self, command: RecordPayoutResult, timestamp: int) -> Outcome:
        if self.replayed(command.signature, timestamp):
            return Outcome(CALLBACK_REPLAYED)
        payout = self.payouts.get(command.payout_id)
        if payout is None or payout.merchant_id != command.merchant_id:
            return Outcome("payout_not_found")
        if payout.status != "pending":
            return Outcome("duplicate", record=payout)
        flags = TransferFlag.POST_PENDING if command.paid else TransferFlag.VOID_PENDING
        code = move(self.ledger, Transfer(command.transfer_id, pending_id=payout.hold_id, flags=flags), timestamp)
        if code != "ok":
            return Outcome(code, record=payout)
        payout.status = "paid" if command.paid else "failed"
        payout.failure_code = command.failure_code
        payout.updated_at = timestamp
        self.events.append(Event(f"payout.{payout.status}", payout.id, timestamp))
        return Outcome(record=payout)

    def record_wallet_payment(self, command, order: Order, timestamp: int, refusal: str = "") -> Payment:
        """A wallet checkout the ledger has just moved succeeds at once and pays the order; one the risk rules
        refuse (`refusal`) fails, and nothing moved."""
        payment = Payment(id=command.payment_id, merchant_id=order.merchant_id, amount=order.amount,
                          currency=order.currency, order_id=order.id, method="wallet", customer_id=command.customer_id,
                          customer_email=order.customer_email, customer_ip=command.customer_ip, acquirer="wallet",
                          created_at=timestamp, updated_at=timestamp)
        self.add(payment)
        if refusal:
            self._fail(payment, RISK_REJECTED, refusal, timestamp)
        else:
            self._succeed(payment, order.amount, timestamp)
        return payment

    # Effects

    def _succeed(self, payment: Payment, amount: int, timestamp: int) -> None:
        payment.status = "succeeded"
        payment.amount_captured = amount
        payment.updated_at = timestamp
        self.events.append(Event("payment.succeeded", payment.id, timestamp))
        order = self.orders.get(payment.order_id)
        if order is None:
            return
        # Money that arrives after the order expired, was cancelled or was paid is kept and flagged, never lost;
        # the order goes on naming the payment that paid it.
        if order.status == "pending" or not order.payment_id:
            order.payment_id = payment.id
        order.status = "paid" if order.status == "pending" else "exception"
        order.updated_at = timestamp
        self.events.append(Event(f"order.{order.status}", order.id, timestamp))
        if order.splits:
            self._pay_splits(payment, order, timestamp)

    def _pay_splits(self, payment: Payment, order: Order, timestamp: int) -> None:
        """The order's shares move from the merchant's balance to their owners, all of them or none (linked)."""
        balance = system_account_id(order.merchant_id, "balance", order.currency)
        transfers = []
        for index, split in enumerate(order.splits):
            owner, name = ((split.account_id, "balance") if split.account_id in self.merchants
                           else (order.merchant_id, split.account_id))
            destination = system_account(self.ledger, owner, name, order.currency, timestamp)
            transfers.append(Transfer(f"{order.merchant_id}:{payment.id}.split{index}", balance, destination,
                                      split.amount, order.currency, flags=TransferFlag.LINKED))
        transfers[-1].flags = 0
        codes = self.ledger.create_transfers(transfers, timestamp)
        assert not any(codes), codes  # the balance was just credited with at least their sum

    def _fail(self, payment: Payment, code: str, message: str, timestamp: int) -> None:
        payment.status = "failed"
        payment.failure_code = code
        payment.failure_message = message
        payment.updated_at = timestamp
        self.events.append(Event("payment.failed", payment.id, timestamp))
        order = self.orders.get(payment.order_id)
        if order is not None and order.status == "pending":
            order.error_code, order.error_message, order.updated_at = code, message, timestamp

    def _mark_order_refunded(self, payment: Payment, amount: int, timestamp: int) -> None:
        order = self.orders.get(payment.order_id)
        if order is None:
            return
        order.amount_refunded += amount
        order.status = "refunded" if order.amount_refunded >= payment.amount_captured else "partially_refunded"
        order.updated_at = timestamp

    # Reads

    def card_of(self, merchant_id: str, token_id: str) -> VaultedCard | None:
        vaulted = self.cards.get(token_id)
        return vaulted if vaulted is not None and vaulted.merchant_id == merchant_id else None

    def record_of(self, merchant_id: str, kind: str, record_id: str) -> Payment | Refund | Payout | None:
        records = {"payment": self.payments, "refund": self.refunds, "payout": self.payouts}.get(kind, {})
        record = records.get(record_id)
        return record if record is not None and record.merchant_id == merchant_id else None

    def list_payments(self, merchant_id: str, limit: int, starting_after: str,
                      status: str = "") -> tuple[list[Payment], bool]:
        """A merchant's payments, newest first, only those in `status` if given; and whether more follow."""
        ids = self.by_merchant.get(merchant_id, [])
        end = len(ids)
        if starting_after:
            after = self._payment_of(merchant_id, starting_after)
            if after is None:
                return [], False
            end = ids.index(after.id)
        found: list[Payment] = []
        for index in range(end - 1, -1, -1):
            payment = self.payments[ids[index]]
            if status and payment.status != status:
                continue
            if len(found) == limit:
                return found, True
            found.append(payment)
        return found, False

    def add(self, payment: Payment) -> Payment:
        self.payments[payment.id] = payment
        self.by_merchant.setdefault(payment.merchant_id, []).append(payment.id)
        return payment

    def _payment_of(self, merchant_id: str, payment_id: str) -> Payment | None:
        payment = self.payments.get(payment_id)
        return payment if payment is not None and payment.merchant_id == merchant_id else None


def move(ledger: Ledger, transfer: Transfer, timestamp: int) -> str:
    """One transfer, its result as a commerce outcome code."""
    return transfer_outcome(ledger.move(transfer, timestamp))


def system_account(ledger: Ledger, merchant_id: str, name: str, currency: str, timestamp: int) -> str:
    """A merchant's own account for `name` in `currency` (balance, clearing, payouts...), made on first use."""
    return ledger.ensure_account(system_account_id(merchant_id, name, currency), currency, AccountFlag.HISTORY, timestamp)
