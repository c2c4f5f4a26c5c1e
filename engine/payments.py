"""Payments, refunds and payouts: state machines whose money moves are the ledger's own transfers.

A card authorization held for manual capture is a pending transfer from the
acquirer's clearing account to the merchant's balance, so capture, partial
capture, void and release on timeout are the ledger's two-phase operations.
A refund moves money back and never past what was captured; a payout holds
the merchant's balance until the bank answers, and a failure returns it.
"""

from itertools import takewhile
from typing import Callable

from engine.changes import Changes
from engine.check import check
from engine.codes import TransferCode, transfer_outcome
from engine.days import DAY_NS, days_since_epoch
from engine.ledger import Ledger
from engine.listing import Listing, list_cursor, made_in_order
from engine.records import (
    CancelPayment,
    CapturePayment,
    CardDetails,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    Deposit,
    Merchant,
    Order,
    Outcome,
    PayOrderFromWallet,
    Payment,
    Payout,
    RecordPayoutResult,
    ReceiveBankTransfer,
    ReceiveDepositTransfer,
    RecordPspResult,
    Refund,
    ResealCards,
    VaultedCard,
    system_account_id,
    wallet_account_id,
)
from engine.states import transition
from engine.types import NANOSECONDS_PER_SECOND, TIMESTAMP_MAX, AccountFlag, Event, Transfer, TransferFlag

OPEN_STATUSES = ("processing", "requires_action")
# An order's payment in one of these may still take its money: a second payment must not charge it too.
IN_PROGRESS_STATUSES = (*OPEN_STATUSES, "requires_capture")
# Paid by the payer's own bank transfer quoting the order: such a payment waits (requires_action) for the money.
BANK_METHODS = ("qr", "bank_transfer")
# An order whose paying payment is refunded says how much of it went back.
REFUND_MARKED_STATUSES = ("paid", "partially_refunded")
# A payment whose money came, settled or not, disputed in part or not: what chargebacks left of it may go back.
REFUNDABLE_STATUSES = ("succeeded", "settled", "disputed")
RISK_REJECTED = "risk_rejected"
CALLBACK_REPLAYED = "callback_replayed"
# A provider's signature is good for 300 s either side of the clock: one seen is remembered for twice that.
CALLBACK_REPLAY_WINDOW_NS = 600 * NANOSECONDS_PER_SECOND
MAX_RESEALED_CARDS = 10_000  # per command: a batch the shard journals and replicates at once
MAX_CALLBACK_SIGNATURES = 100_000  # beyond it the oldest is forgotten: a bound, well above any provider's rate
# New signatures between two walks that forget the old ones: a walk from the front passes every slot the dict keeps
# for the keys removed before it, so one per callback would cost the dict's length.
SIGNATURE_PRUNE_BATCH = 1024
MAX_CALLBACKS_PER_PAYMENT = 32  # a payment hears of its provider a few times: 3-D Secure, then the verdict

# The chart of accounts (engine/ACCOUNTS.md): the flags an account is made with, by its name. Money of merchants and
# customers never goes below zero; only the mirrors of a real inflow may run a debit balance, and money goes back
# out through them only up to what came in.
HOLDS_MONEY = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlag.HISTORY
MIRRORS_INFLOW = AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS | AccountFlag.HISTORY
ACCOUNT_FLAGS = {
    "balance": HOLDS_MONEY,
    "wallet": HOLDS_MONEY,
    "payouts": HOLDS_MONEY,
    "withdrawals": HOLDS_MONEY,
    "clearing_piggybank": MIRRORS_INFLOW,
    "clearing_bank": MIRRORS_INFLOW,
    "adjustments": MIRRORS_INFLOW,  # the admin's named manual credits: debit-normal, counted as an inflow
    # Settlement (engine/reconciliations.py): what the acquirer paid into our bank and the fees it kept mirror the
    # bank's statement, whatever it says (debit-normal, no limit); refunds of settled payments are owed to the
    # acquirer until it deducts them; a chargeback's money not yet recovered from the merchant is owed by it.
    "settled_piggybank": AccountFlag.HISTORY,
    "fees_piggybank": AccountFlag.HISTORY,
    "refunds_piggybank": HOLDS_MONEY,
    "disputes": MIRRORS_INFLOW,
    "deposits": AccountFlag.HISTORY,  # legacy: the unfunded source of journaled MoveWallet deposits, replayed as then
}
SUB_ACCOUNT_FLAGS = HOLDS_MONEY


class Payments:
    def __init__(self, ledger: Ledger, changes: Changes, merchants: dict[str, Merchant], orders: dict[str, Order],
                 events: list[Event], bring_back_order: Callable[[Order], None]) -> None:
        self.ledger = ledger
        self.merchants = merchants
        self.orders = orders
        self.bring_back_order = bring_back_order  # Orders.bring_back: an archived order a refund brings back
        self.events = events
        self.payments: dict[str, Payment] = changes.dict()
        self.by_merchant = Listing(changes)  # each merchant's payment ids (derived: restore rebuilds it)
        # token id -> a card sealed by the edge; the engine never sees a card number in clear
        self.cards: dict[str, VaultedCard] = changes.dict()
        # position -> token id, and back, in the order cards were vaulted (a card forgotten gives its place to the
        # last one), for paging; token id -> the end of its card's expiry month, when it is forgotten (all derived:
        # restore rebuilds them)
        self.card_ids: dict[int, str] = changes.dict(ordered=False)
        self.card_places: dict[str, int] = changes.dict(ordered=False)
        self.card_expiries = changes.schedule()
        self.refunds: dict[str, Refund] = changes.dict()
        self.payouts: dict[str, Payout] = changes.dict()
        # Derived, oldest first (restore rebuilds them): order id -> its payment ids, payment id -> its refund ids,
        # merchant id -> its payout ids.
        self.by_order = Listing(changes)
        self.refunds_by_payment = Listing(changes)
        self.payouts_by_merchant = Listing(changes)
        # signature -> when its callback came (engine time), oldest first; one seen again after the window moves to
        # the end (by rank)
        self.callback_signatures: dict[str, int] = changes.dict(ranked=True)
        self.deadlines = changes.schedule()  # payment id -> its deadline_at
        # pending transfer id -> payment id, to hear of an authorization that timed out
        self.payment_by_hold: dict[str, str] = changes.dict(ordered=False)
        # Payments back from the cold store for a refund (engine/archival.py): the cold store lists them, the
        # listings here do not.
        self.unlisted: dict[str, None] = changes.dict(ordered=False)

    # Time

    def advance(self, timestamp: int, expired_transfers: list[str]) -> None:
        """Fail payments the provider left unanswered; cancel authorizations the ledger released."""
        for payment_id in self.deadlines.pop_due(timestamp):
            payment = self.payments[payment_id]
            if payment.status in OPEN_STATUSES and payment.method in BANK_METHODS:
                self._stop_waiting(payment, timestamp)  # the payer sent no transfer in time
            elif payment.status in OPEN_STATUSES:
                self._fail(payment, "processing_timeout", "the acquirer did not answer in time", timestamp)
        for token_id in self.card_expiries.pop_due(timestamp):
            self._forget_card(token_id)
        for transfer_id in expired_transfers:
            payment_id = self.payment_by_hold.pop(transfer_id, None)
            if payment_id is not None and self.payments[payment_id].status == "requires_capture":
                payment = self.payments[payment_id]
                transition(payment, "cancelled")
                payment.amount_capturable = 0
                payment.updated_at = timestamp
                self.events.append(Event("payment.cancelled", payment.id, timestamp))

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
        if payment.deposit_id:
            customer_id = payment.customer_id  # the wallet its money goes to
        if not payment.order_id and payment.amount <= 0:
            return Outcome("amount_must_not_be_zero")
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
                        updated_at=timestamp, deposit_id=payment.deposit_id)
        if fresh.method in BANK_METHODS:
            transition(fresh, "requires_action")
            fresh.acquirer, fresh.next_action_url = "bank", payment.next_action_url
        payment = self.add(fresh)
        if payment.order_id:
            order = self.orders[payment.order_id]
            order.payment_id = payment.id  # the order's latest attempt
            if payment.method in BANK_METHODS:
                self.order_closed(order, timestamp)  # a payment started again: the one before it is superseded
                order.transfer_payment_id = payment.id
        if command.sealed_card:
            self.vault(payment.token_id, VaultedCard(payment.merchant_id, payment.card, command.sealed_card))
        self.events.append(Event("payment.created", payment.id, timestamp))
        refusal = self.risk_refusal(payment.merchant_id, payment.amount, payment.currency, command.risk_reason,
                                    command.amount_limits)
        if refusal:
            self._fail(payment, RISK_REJECTED, refusal, timestamp)
            return Outcome(record=payment)
        if payment.method in BANK_METHODS:
            self.events.append(Event("payment.requires_action", payment.id, timestamp))
        # A transfer for an order waits as long as the order does; every other payment has a deadline of its own.
        if command.processing_timeout_s and not (payment.method in BANK_METHODS and payment.order_id):
            payment.deadline_at = timestamp + command.processing_timeout_s * NANOSECONDS_PER_SECOND
            self.deadlines.set(payment.id, payment.deadline_at)
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
            self._stop_waiting(payment, timestamp)

    def _stop_waiting(self, payment: Payment, timestamp: int) -> None:
        """A payment waiting for the payer's transfer waits no more: it is cancelled."""
        transition(payment, "cancelled")
        payment.next_action_url, payment.updated_at = "", timestamp
        self.events.append(Event("payment.cancelled", payment.id, timestamp))

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
        """Whether a callback's signature was seen within the replay window; a new one is remembered (one seen
        before the window is new again)."""
        if not signature:
            return False
        seen = self.callback_signatures
        horizon = timestamp - CALLBACK_REPLAY_WINDOW_NS
        seen_at = seen.get(signature)
        if seen_at is not None and seen_at > horizon:
            return True
        if seen_at is not None:
            del seen[signature]  # to the end, with its new time
        if len(seen) >= MAX_CALLBACK_SIGNATURES or len(seen) % SIGNATURE_PRUNE_BATCH == 0:
            self._forget_signatures(horizon)
        seen[signature] = timestamp
        return False

    def _forget_signatures(self, horizon: int) -> None:
        """Forget the signatures seen before `horizon`, and the oldest past the bound, in one walk from the front."""
        seen = self.callback_signatures
        expired = sum(1 for _ in takewhile(lambda item: item[1] <= horizon, dict.items(seen)))
        seen.take_first(max(expired, len(seen) - MAX_CALLBACK_SIGNATURES + 1))

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
        if len(payment.callback_ids) >= MAX_CALLBACKS_PER_PAYMENT:
            return Outcome("too_many_callbacks", record=payment)
        payment.callback_ids = [*payment.callback_ids, command.callback_id]
        payment.psp_reference = command.psp_reference or payment.psp_reference
        payment.updated_at = timestamp
        result = command.result
        if result == "requires_action":
            transition(payment, "requires_action")
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
        balance = self.credit_account(payment, timestamp)
        manual = payment.capture_method == "manual"
        transfer = Transfer(command.transfer_id, clearing, balance, payment.amount, payment.currency,
                            timeout_s=command.hold_timeout_s if manual else 0,
                            flags=TransferFlag.PENDING if manual else 0)
        code = move(self.ledger, transfer, timestamp) if manual else self._collect(payment, transfer, timestamp)
        if code != "ok":
            self._fail(payment, code, "the ledger refused the authorization", timestamp)
            return Outcome(record=payment)
        if manual:
            transition(payment, "requires_capture")
            payment.amount_capturable = payment.amount
            payment.authorization_id = command.transfer_id
            self.payment_by_hold[command.transfer_id] = payment.id
            self.events.append(Event("payment.requires_capture", payment.id, timestamp))
        return Outcome(record=payment)

    def receive_bank_transfer(self, command: ReceiveBankTransfer, timestamp: int) -> Outcome:
        """Money in from the bank for an order: a payment that succeeds at once (the order decides paid or exception)."""
        if self.replayed(command.signature, timestamp):
            return Outcome(CALLBACK_REPLAYED)
        if command.quoted_payment_id:
            return self._receive_on_payment(command, timestamp)
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
        incoming, refusal = self._bank_inflow(command.transfer_id, order.merchant_id, "balance", command.amount,
                                              order.currency, timestamp)
        if refusal:
            return Outcome(refusal, record=order)
        code = self._collect(payment, incoming, timestamp)
        if code != "ok":
            return Outcome(code, record=order)
        if awaiting is None:
            self.add(payment)
        order.transfer_payment_id = ""
        payment.amount, payment.psp_reference, payment.next_action_url = command.amount, command.bank_reference, ""
        payment.callback_ids = [*payment.callback_ids, command.callback_id]
        return Outcome(record=payment)

    def _receive_on_payment(self, command: ReceiveBankTransfer, timestamp: int) -> Outcome:
        """Money in quoting a payment without an order that waits for it: its amount, in its currency, completes it;
        anything else the bank returns to the payer."""
        payment = self._payment_of(command.merchant_id, command.quoted_payment_id)
        # A deposit's payment is paid by a transfer quoting the deposit, into its wallet: never into the balance.
        if payment is None or payment.order_id or payment.deposit_id or payment.method not in BANK_METHODS:
            return Outcome("payment_not_found")
        refused = awaited_transfer_refusal(payment, command, "payment_not_open", payment)
        if refused is not None:
            return refused
        incoming, refusal = self._bank_inflow(command.transfer_id, payment.merchant_id, "balance", payment.amount,
                                              payment.currency, timestamp)
        if refusal:
            return Outcome(refusal, record=payment)
        code = self._collect(payment, incoming, timestamp)
        if code != "ok":
            return Outcome(code, record=payment)
        payment.psp_reference, payment.next_action_url = command.bank_reference, ""
        payment.callback_ids = [*payment.callback_ids, command.callback_id]
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
        incoming, refusal = self._bank_inflow(command.transfer_id, merchant.id, command.sub_account_id or "balance",
                                              command.amount, command.currency, timestamp)
        if refusal:
            return Outcome(refusal)
        payment = Payment(id=command.payment_id, merchant_id=merchant.id, amount=command.amount,
                          currency=command.currency, method=command.method, acquirer="bank",
                          psp_reference=command.bank_reference, callback_ids=[command.callback_id],
                          metadata={"sub_account_id": command.sub_account_id} if command.sub_account_id else {},
                          sub_account_id=command.sub_account_id, created_at=timestamp, updated_at=timestamp)
        code = self._collect(payment, incoming, timestamp)
        if code != "ok":
            return Outcome(code)
        self.add(payment)
        return Outcome(record=payment)

    def _bank_inflow(self, transfer_id: str, merchant_id: str, name: str, amount: int, currency: str,
                     timestamp: int) -> tuple[Transfer, str]:
        """Money the bank received, from `clearing_bank` to the merchant's `name` account, and '' if the ledger would
        take it (its accounts then made); else the refusal, and no account made."""
        incoming = Transfer(transfer_id, system_account_id(merchant_id, "clearing_bank", currency),
                            system_account_id(merchant_id, name, currency), amount, currency)
        refusal = move_refusal(self.ledger, incoming)
        if not refusal:
            system_account(self.ledger, merchant_id, "clearing_bank", currency, timestamp)
            system_account(self.ledger, merchant_id, name, currency, timestamp)
        return incoming, refusal

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
        code = self._collect(payment, post, timestamp)
        if code != "ok":
            return Outcome(code, record=payment)
        self.payment_by_hold.pop(payment.authorization_id, None)
        payment.amount_capturable = 0
        self.events.append(Event("payment.captured", payment.id, timestamp))
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
            return Outcome("payment_not_cancellable", record=payment)
        transition(payment, "cancelled")
        payment.amount_capturable = 0
        payment.updated_at = timestamp
        self.events.append(Event("payment.cancelled", payment.id, timestamp))
        return Outcome(record=payment)

    def refund(self, command: CreateRefund, timestamp: int) -> Outcome:
        refund = command.refund
        if refund.id in self.refunds:
            return Outcome("exists")
        payment = self._payment_of(refund.merchant_id, refund.payment_id) or self._archived_payment(command)
        if payment is None:
            return Outcome("payment_not_found")
        # A deposit's money is the customer's, in the wallet.
        if payment.status not in REFUNDABLE_STATUSES or payment.deposit_id:
            return Outcome("payment_not_refundable", record=payment)
        refundable = payment.amount_captured - payment.amount_refunded - payment.amount_disputed
        amount = refund.amount or refundable
        if amount <= 0 or amount > refundable:
            return Outcome("amount_too_large", record=payment)
        # The money goes back out of the account it came into.
        balance = system_account_id(payment.merchant_id, payment.sub_account_id or "balance", payment.currency)
        if self.ledger.available(balance) < amount:  # money already paid out or held for a payout
            return Outcome("insufficient_funds", record=payment)
        # The money goes back the way it came: to the wallet, or to the acquirer for the card: what it still owes
        # for the payment, or once it has settled it, what we owe it until its next settlement deducts the refund.
        if payment.method == "wallet":
            source = wallet_account_id(payment.merchant_id, payment.customer_id, payment.currency)
        else:
            name = f"{'refunds' if payment.settled_at else 'clearing'}_{payment.acquirer}"
            source = system_account_id(payment.merchant_id, name, payment.currency)
        back = Transfer(command.transfer_id, balance, source, amount, payment.currency)
        refusal = move_refusal(self.ledger, back)  # before a refunds account is made: a refusal leaves none
        if refusal:
            return Outcome(refusal, record=payment)
        if payment is command.archived_payment:
            self.bring_back(payment)
            if payment.order_id and payment.order_id not in self.orders:
                self.bring_back_order(command.archived_order)
        if payment.settled_at:
            system_account(self.ledger, payment.merchant_id, f"refunds_{payment.acquirer}", payment.currency, timestamp)
        code = move(self.ledger, back, timestamp)
        if code != "ok":
            return Outcome(code, record=payment)
        refund.amount, refund.currency, refund.created_at = amount, payment.currency, timestamp
        refund.status, refund.settled_at, refund.after_settlement = "succeeded", 0, bool(payment.settled_at)
        self._add_refund(refund)
        payment.amount_refunded += amount
        payment.updated_at = timestamp
        self.events.append(Event("refund.succeeded", refund.id, timestamp))
        self._mark_order_refunded(payment, amount, timestamp)
        return Outcome(record=refund)

    def _archived_payment(self, command: CreateRefund) -> Payment | None:
        """The archived payment a refund carries, if it is the refund's and the engine holds it no more, with its
        order unless the engine holds that."""
        payment, order = command.archived_payment, command.archived_order
        if payment is None or payment.id in self.payments or (payment.id, payment.merchant_id) != (
                command.refund.payment_id, command.refund.merchant_id):
            return None
        if not payment.order_id or payment.order_id in self.orders:
            return payment
        return payment if order is not None and (order.id, order.merchant_id) == (
            payment.order_id, payment.merchant_id) else None

    def create_payout(self, command: CreatePayout, timestamp: int) -> Outcome:
        payout = command.payout
        if payout.id in self.payouts:
            return Outcome("exists")
        merchant = self.merchants.get(payout.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        # Only the merchant's balance or one of its sub-accounts pays out: never a system account named as one.
        if payout.sub_account_id and all(sub.id != payout.sub_account_id for sub in merchant.sub_accounts):
            return Outcome("sub_account_not_found")
        balance = system_account_id(payout.merchant_id, payout.sub_account_id or "balance", payout.currency)
        if payout.amount <= 0:
            return Outcome("amount_must_not_be_zero")
        if self.ledger.available(balance) < payout.amount:
            return Outcome("insufficient_funds")
        hold = Transfer(payout.hold_id, balance, system_account_id(payout.merchant_id, "payouts", payout.currency),
                        payout.amount, payout.currency, flags=TransferFlag.PENDING)
        code = move_into(self.ledger, hold, payout.merchant_id, "payouts", timestamp)
        if code != "ok":
            return Outcome(code)
        payout.status = "pending"
        payout.created_at = payout.updated_at = timestamp
        self._add_payout(payout)
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
        transition(payout, "paid" if command.paid else "failed")
        payout.failure_code = command.failure_code
        payout.updated_at = timestamp
        self.events.append(Event(f"payout.{payout.status}", payout.id, timestamp))
        return Outcome(record=payout)

    def pay_from_wallet(self, command: PayOrderFromWallet, order: Order | None, wallet: str,
                        timestamp: int) -> Outcome:
        """A wallet checkout: the amount moves from the wallet to the merchant's balance, and the payment succeeds at
        once (paying the order, if any)."""
        payment = _wallet_payment(command, order, timestamp)
        balance = system_account(self.ledger, command.merchant_id, "balance", command.currency, timestamp)
        code = self._collect(payment, Transfer(command.transfer_id, wallet, balance, command.amount, command.currency),
                             timestamp)
        if code != "ok":
            return Outcome(code, record=order)
        self.add(payment)
        if order is not None:
            order.customer_id = command.customer_id
        return Outcome(record=payment)

    def refuse_wallet_payment(self, command: PayOrderFromWallet, order: Order | None, refusal: str,
                              timestamp: int) -> Outcome:
        """A wallet checkout the risk rules refuse: recorded failed, with the reason; nothing moves."""
        payment = self.add(_wallet_payment(command, order, timestamp))
        self._fail(payment, RISK_REJECTED, refusal, timestamp)
        return Outcome(record=payment)

    def credit_account(self, payment: Payment, timestamp: int) -> str:
        """Where a payment's money lands: the customer's wallet for a deposit's payment, else the merchant's balance."""
        if payment.deposit_id:
            return ensure_wallet(self.ledger, payment.merchant_id, payment.customer_id, payment.currency, timestamp)
        return system_account(self.ledger, payment.merchant_id, "balance", payment.currency, timestamp)

    def succeed(self, payment: Payment, amount: int, timestamp: int) -> None:
        """Money the ledger has just moved for `payment` arrived (a deposit's transfer): it succeeds."""
        self._succeed(payment, amount, timestamp)

    def fail(self, payment: Payment, code: str, message: str, timestamp: int) -> None:
        """`payment` will take no money any more (a deposit's transfer that did not come in time)."""
        self._fail(payment, code, message, timestamp)

    # Effects

    def _collect(self, payment: Payment, incoming: Transfer, timestamp: int) -> str:
        """Book money that came for `payment` by `incoming`; the ledger's code for it (anything but ok moved nothing).

        Money that pays a pending order exactly pays it, and its splits go out of it in the same command. Money
        that comes for an order no longer pending, or for another amount than asked (a partial capture too), is
        an exception: it stays in the merchant's balance, refundable, and is never split.
        """
        code = move(self.ledger, incoming, timestamp)
        if code != "ok":
            return code
        amount = incoming.amount  # the ledger filled in what a post of "all of it" took
        order = self.orders.get(payment.order_id)
        if order is None:
            self._succeed(payment, amount, timestamp)
            return "ok"
        if order.status != "pending":
            exception = ("order_not_pending", f"money came for an order already {order.status}")
        elif amount != order.amount:
            exception = ("amount_mismatch", f"{amount} came for an order of {order.amount}")
        else:
            split_code = self._pay_splits(payment, order, timestamp) if order.splits else ""
            exception = (split_code, "the splits could not be paid") if split_code else None
        self._succeed(payment, amount, timestamp)
        self._book_to_order(payment, order, exception, timestamp)
        return "ok"

    def _succeed(self, payment: Payment, amount: int, timestamp: int) -> None:
        transition(payment, "succeeded")
        payment.amount_captured = amount
        payment.updated_at = payment.captured_at = timestamp
        self.events.append(Event("payment.succeeded", payment.id, timestamp))

    def _book_to_order(self, payment: Payment, order: Order, exception: tuple[str, str] | None,
                       timestamp: int) -> None:
        """The order is paid, or (`exception`: its code and message) holds money for a person to settle."""
        # The order goes on naming the payment that paid it; money after that is flagged, never lost.
        if order.status == "pending" or not order.payment_id:
            order.payment_id = payment.id
        if exception is None:
            transition(order, "paid")
        else:
            transition(order, "exception")
            order.error_code, order.error_message = exception
        order.updated_at = timestamp
        self.events.append(Event(f"order.{order.status}", order.id, timestamp))

    def _pay_splits(self, payment: Payment, order: Order, timestamp: int) -> str:
        """The order's shares move from the merchant's balance, just credited with the order's amount (at least
        their sum), to their owners: all of them or none (linked). '' if paid, else the ledger's refusal."""
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
        if not any(codes):
            return ""
        refusals = [TransferCode.name(code) for code in codes if code and code != TransferCode.linked_event_failed]
        # Validated at create and at every amount change, shares can only fail on a destination's full balance.
        check(all(code.startswith("overflows_") for code in refusals), f"split transfers refused: {refusals}")
        return refusals[0]

    def _fail(self, payment: Payment, code: str, message: str, timestamp: int) -> None:
        transition(payment, "failed")
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
        order.updated_at = timestamp
        # An exception waits for a person whatever is refunded; a paid order follows the payment that paid it.
        if order.status in REFUND_MARKED_STATUSES and order.payment_id == payment.id:
            fully = payment.amount_refunded >= payment.amount_captured
            transition(order, "refunded" if fully else "partially_refunded")
            self.events.append(Event(f"order.{order.status}", order.id, timestamp))

    def reseal_cards(self, command: ResealCards) -> Outcome:
        """Each card replaced by its new sealing if it still holds the one the sealer read; the others stay."""
        if len(command.cards) > MAX_RESEALED_CARDS:
            return Outcome("too_many_cards")
        for item in command.cards:
            vaulted = self.cards.get(item.token_id)
            if vaulted is not None and vaulted.sealed == item.previous and item.sealed:
                vaulted.sealed = item.sealed
        return Outcome()

    # Reads

    def vault(self, token_id: str, card: VaultedCard) -> None:
        self.card_ids[len(self.cards)] = token_id
        self.card_places[token_id] = len(self.cards)
        self.cards[token_id] = card
        self.card_expiries.set(token_id, card_expires_at(card.card))

    def _forget_card(self, token_id: str) -> None:
        """No acquirer takes the card any more: out of the vault, the last card into its place."""
        place = self.card_places.pop(token_id)
        last = self.card_ids.pop(len(self.cards) - 1)
        if last != token_id:
            self.card_ids[place] = last
            self.card_places[last] = place
        del self.cards[token_id]

    def vaulted_cards(self, start: int, limit: int) -> list[tuple[str, VaultedCard]]:
        """Up to `limit` cards from the `start`-th in the order they were vaulted, found by position whatever `start`
        is. A card forgotten meanwhile gives its place to the last one, which a walk may then miss: `paygate
        rotate-kek` walks again until a walk finds nothing to reseal."""
        return [(self.card_ids[position], self.cards[self.card_ids[position]])
                for position in range(start, min(start + limit, len(self.cards)))]

    def card_of(self, merchant_id: str, token_id: str) -> VaultedCard | None:
        vaulted = self.cards.get(token_id)
        return vaulted if vaulted is not None and vaulted.merchant_id == merchant_id else None

    def record_of(self, merchant_id: str, kind: str, record_id: str) -> Payment | Refund | Payout | None:
        records = {"payment": self.payments, "refund": self.refunds, "payout": self.payouts}.get(kind, {})
        record = records.get(record_id)
        return record if record is not None and record.merchant_id == merchant_id else None

    def list_payments(self, merchant_id: str, limit: int, starting_after: str, status: str = "", order_id: str = "",
                      starting_after_created_at: int = -1) -> tuple[list[Payment], bool]:
        """A merchant's payments (of one order, if given), newest first, only those in `status` if given; and
        whether more follow. A cursor the engine no longer holds is placed by its `starting_after_created_at`."""
        listing, owner = (self.by_order, order_id) if order_id else (self.by_merchant, merchant_id)
        return _newest_first(listing, owner, self.payments, merchant_id, limit,
                             list_cursor(self.payments, merchant_id, starting_after, starting_after_created_at),
                             lambda payment: not status or payment.status == status)

    def list_refunds(self, merchant_id: str, payment_id: str, limit: int, starting_after: str,
                     starting_after_created_at: int = -1) -> tuple[list[Refund], bool]:
        """A payment's refunds, newest first; and whether more follow."""
        return _newest_first(self.refunds_by_payment, payment_id, self.refunds, merchant_id, limit,
                             list_cursor(self.refunds, merchant_id, starting_after, starting_after_created_at))

    def list_payouts(self, merchant_id: str, limit: int, starting_after: str,
                     starting_after_created_at: int = -1) -> tuple[list[Payout], bool]:
        return _newest_first(self.payouts_by_merchant, merchant_id, self.payouts, merchant_id, limit,
                             list_cursor(self.payouts, merchant_id, starting_after, starting_after_created_at))

    # Archival (engine/archival.py)

    def unlist(self, payment: Payment) -> None:
        """A payment archived leaves its lists (unless it came back unlisted)."""
        if payment.id in self.unlisted:
            del self.unlisted[payment.id]
            return
        self.by_merchant.remove(payment.merchant_id, payment.id)
        if payment.order_id:
            self.by_order.remove(payment.order_id, payment.id)

    def bring_back(self, payment: Payment) -> None:
        """An archived payment in memory again, as the cold store keeps it, unlisted: the cold store lists it."""
        self.payments[payment.id] = payment
        self.unlisted[payment.id] = None

    def add(self, payment: Payment) -> Payment:
        self.payments[payment.id] = payment
        self._list(payment)
        return payment

    def _list(self, payment: Payment) -> None:
        self.by_merchant.add(payment.merchant_id, payment.id)
        if payment.order_id:
            self.by_order.add(payment.order_id, payment.id)

    def _add_refund(self, refund: Refund) -> None:
        self.refunds[refund.id] = refund
        self.refunds_by_payment.add(refund.payment_id, refund.id)

    def _add_payout(self, payout: Payout) -> None:
        self.payouts[payout.id] = payout
        self.payouts_by_merchant.add(payout.merchant_id, payout.id)

    def _payment_of(self, merchant_id: str, payment_id: str) -> Payment | None:
        payment = self.payments.get(payment_id)
        return payment if payment is not None and payment.merchant_id == merchant_id else None

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"payments": list(self.payments.values()), "refunds": list(self.refunds.values()),
                "payouts": list(self.payouts.values()), "cards": list(self.cards.items()),
                "callback_signatures": list(self.callback_signatures.items()),
                "unlisted_payments": sorted(self.unlisted)}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot: deadlines and authorization holds follow from the payments themselves,
        the listings from the order records were made in."""
        self.payments.load((payment.id, payment) for payment in snapshot.payments)
        self.unlisted.load((payment_id, None) for payment_id in snapshot.unlisted_payments)
        for payment in made_in_order(snapshot.payments, self.unlisted):
            self._list(payment)
        self.refunds.load((refund.id, refund) for refund in snapshot.refunds)
        for refund in made_in_order(snapshot.refunds, ()):
            self.refunds_by_payment.add(refund.payment_id, refund.id)
        self.payouts.load((payout.id, payout) for payout in snapshot.payouts)
        for payout in made_in_order(snapshot.payouts, ()):
            self.payouts_by_merchant.add(payout.merchant_id, payout.id)
        for token_id, card in snapshot.cards:
            self.vault(token_id, card)
        self.callback_signatures.load(snapshot.callback_signatures)
        # A payment for an order waits for its transfer with no deadline of its own.
        self.deadlines.load((payment.deadline_at, payment.id) for payment in snapshot.payments
                            if payment.status in OPEN_STATUSES and payment.deadline_at)
        for payment in snapshot.payments:
            if payment.status == "requires_capture":
                self.payment_by_hold[payment.authorization_id] = payment.id


def card_expires_at(card: CardDetails) -> int:
    """The first instant (engine ns, UTC) after the card's expiry month: from then on no acquirer takes it."""
    month = min(max(card.exp_month, 1), 12)
    year, month = (card.exp_year + 1, 1) if month == 12 else (card.exp_year, month + 1)
    return min(days_since_epoch(year, month, 1) * DAY_NS, TIMESTAMP_MAX)


def _newest_first(listing: Listing, owner: str, records: dict, merchant_id: str, limit: int,
                  cursor: tuple[int, str] | None | bool, wanted=lambda record: True) -> tuple[list, bool]:
    """A page of the merchant's records listed under `owner`, newest first before `cursor` (False: none), those
    `wanted`; and whether more follow."""
    found: list = []
    if cursor is False:
        return found, False
    for record in listing.by_key(owner, records, cursor):
        if record.merchant_id != merchant_id or not wanted(record):
            continue
        if len(found) == limit:
            return found, True
        found.append(record)
    return found, False


def _wallet_payment(command: PayOrderFromWallet, order: Order | None, timestamp: int) -> Payment:
    """The payment of a wallet checkout: the order's amount (set on the command), or the command's own."""
    return Payment(id=command.payment_id, merchant_id=command.merchant_id, amount=command.amount,
                   currency=command.currency, order_id=command.order_id, method="wallet",
                   customer_id=command.customer_id, customer_email=order.customer_email if order else "",
                   customer_ip=command.customer_ip, acquirer="wallet", created_at=timestamp, updated_at=timestamp)


def awaited_transfer_refusal(payment: Payment, command: ReceiveBankTransfer | ReceiveDepositTransfer, not_open: str,
                             record: Payment | Deposit) -> Outcome | None:
    """Why money quoting a payment that waits for the payer's transfer is not taken (None: it is). Anything but the
    awaited amount in its currency, once, is refused: the bank returns it to the payer. `record` goes with the
    refusal, `not_open` is its code for a payment that waits no more."""
    if command.callback_id in payment.callback_ids:
        return Outcome("duplicate", record=record)
    if payment.status != "requires_action":
        return Outcome(not_open, record=record)
    if command.currency != payment.currency:
        return Outcome("currency_mismatch", record=record)
    if command.amount != payment.amount:
        return Outcome("amount_mismatch", record=record)
    return None


def move(ledger: Ledger, transfer: Transfer, timestamp: int) -> str:
    """One transfer, its result as a commerce outcome code."""
    return transfer_outcome(ledger.move(transfer, timestamp))


def move_refusal(ledger: Ledger, transfer: Transfer) -> str:
    """'' if the ledger would take `transfer` once its missing accounts are made, else its refusal (an outcome code)."""
    code = ledger.move_refusal(transfer)
    return transfer_outcome(code) if code else ""


def move_into(ledger: Ledger, transfer: Transfer, merchant_id: str, name: str, timestamp: int) -> str:
    """`transfer` into the merchant's `name` account, which is made on first use only once the ledger is known to
    take the transfer: a refusal (a reused transfer id, say) leaves no account behind."""
    refusal = move_refusal(ledger, transfer)
    if refusal:
        return refusal
    system_account(ledger, merchant_id, name, transfer.currency, timestamp)
    return move(ledger, transfer, timestamp)


def ensure_wallet(ledger: Ledger, merchant_id: str, customer_id: str, currency: str, timestamp: int) -> str:
    """A customer's wallet in `currency`, made on first use. It may never be overdrawn: the ledger refuses any debit
    past its credits."""
    return ledger.ensure_account(wallet_account_id(merchant_id, customer_id, currency), currency,
                                 ACCOUNT_FLAGS["wallet"], timestamp)


def system_account(ledger: Ledger, merchant_id: str, name: str, currency: str, timestamp: int) -> str:
    """A merchant's own account for `name` in `currency` (balance, clearing, payouts...), made on first use with
    the chart's flags for its name; any name the chart does not list is a sub-account's."""
    flags = ACCOUNT_FLAGS.get(name, SUB_ACCOUNT_FLAGS)
    return ledger.ensure_account(system_account_id(merchant_id, name, currency), currency, flags, timestamp)
