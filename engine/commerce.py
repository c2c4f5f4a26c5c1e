"""The commerce state machines, composed: each command type goes to the one concern that handles it.

Merchants (engine/merchants.py), orders (orders.py), customers and wallets (wallets.py), idempotency keys
(idempotency.py), per-IP order windows (ip_windows.py), the risk block list (blocklist.py), payments (payments.py)
and deposits (deposits.py) each own their state. Money moves only as ledger transfers; every command answers an
`Outcome`, and a refused command changes nothing. Tenant isolation is enforced in each: a merchant's command never
sees another merchant's order or customer.
"""

from engine.archival import Archival
from engine.blocklist import Blocklist
from engine.changes import Changes
from engine.credentials import Credentials
from engine.deposits import Deposits
from engine.idempotency import IdempotencyKeys
from engine.invoices import Invoices
from engine.ip_windows import IpWindows
from engine.ledger import Ledger
from engine.merchants import Merchants
from engine.notifications import Notifications
from engine.orders import Orders
from engine.payments import Payments
from engine.reconciliations import Reconciliations
from engine.records import (
    AddDashboardUser,
    AddToBlocklist,
    AdjustWallet,
    AdmitOrderIp,
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
    Idempotent,
    MoveWallet,
    Outcome,
    PayOrderFromWallet,
    Reconcile,
    ReceiveBankTransfer,
    ReceiveDepositTransfer,
    RecordPayoutResult,
    RecordPspResult,
    RecordDeliveryAttempts,
    RecordWithdrawalResult,
    RedeliverEvent,
    RemoveFromBlocklist,
    ReplayDeliveries,
    RotateCredentials,
    Signed,
    TouchCredentials,
    ResealCards,
    UpdateMerchant,
    UpdateOrder,
)
from engine.types import CreateAccounts, CreateTransfers, Event
from engine.wallets import Wallets


class Commerce:
    def __init__(self, ledger: Ledger, changes: Changes) -> None:
        # State lives in tracked containers (engine/changes.py): a command that raises is undone whole.
        self.ledger = ledger
        self.events: list[Event] = changes.event_log()
        # Records that left memory in the batch outside an Archive (events pruned past their cap), for the cold store.
        self.leaving: list = changes.event_log()
        self.merchants = Merchants(changes)
        self.ip_windows = IpWindows(changes)
        self.orders = Orders(changes, self.merchants, self.ip_windows, self.events)
        self.payments = Payments(ledger, changes, self.merchants.by_id, self.orders.by_id, self.events,
                                 self.orders.bring_back)
        self.wallets = Wallets(ledger, changes, self.merchants, self.orders, self.payments)
        self.deposits = Deposits(ledger, changes, self.payments, self.wallets.customer_of, self.events)
        self.idempotency = IdempotencyKeys(changes)
        self.blocklist = Blocklist(changes)  # kept by the shard that owns the block list's routing key
        self.credentials = Credentials(self.merchants.by_id, changes)
        self.reconciliations = Reconciliations(ledger, changes, self.payments, self.events)
        self.invoices = Invoices(changes, self.merchants.by_id, self.payments.payments)
        stores = {"order": self.orders.by_id, "payment": self.payments.payments, "refund": self.payments.refunds,
                  "payout": self.payments.payouts, "deposit": self.deposits.deposits,
                  "withdrawal": self.deposits.withdrawals}
        self.notifications = Notifications(changes, self.merchants.by_id, stores, self.invoices, self.events,
                                           self.leaving)
        self.archival = Archival(ledger, changes, self.orders, self.payments, self.deposits, self.invoices,
                                 self.notifications, self.reconciliations)

    # Time

    def advance(self, timestamp: int, expired_transfers: list[str]) -> list[Event]:
        """Expire pending orders and waiting deposits whose time is up; forget idempotency keys past retention; time
        out payments."""
        first_event = len(self.events)
        self.payments.advance(timestamp, expired_transfers)
        self.deposits.advance(timestamp)
        self.deposits.follow_payments(first_event, timestamp)
        events = self.orders.expire(timestamp, self.payments)
        self.idempotency.forget_before(timestamp)
        return events

    # Commands

    def apply(self, command, timestamp: int) -> Outcome:
        first_event = len(self.events)
        if type(command) is Idempotent:
            outcome = self._idempotent(command, timestamp)
        else:
            outcome = _HANDLERS[type(command)](self, command, timestamp)
        self.deposits.follow_payments(first_event, timestamp)  # a deposit's payment moved on: so does the deposit
        self.reconciliations.follow(first_event)  # a card capture or refund waits for its settlement
        self.notifications.record(first_event, timestamp)
        return outcome

    def _update_merchant(self, command: UpdateMerchant, timestamp: int) -> Outcome:
        """A merchant's settings; pending webhooks follow a new webhook_url."""
        outcome = self.merchants.update(command, timestamp)
        if outcome.code == "ok" and command.webhook_url is not None:
            self.notifications.webhook_changed(command.merchant_id, timestamp)
        return outcome

    def _idempotent(self, command: Idempotent, timestamp: int) -> Outcome:
        first = self.idempotency.first_outcome(command)
        if first is not None:
            return first
        outcome = self._run(command.command, timestamp)
        self.idempotency.remember(command, outcome, timestamp)
        return outcome

    def _signed(self, command: Signed, timestamp: int) -> Outcome:
        refusal = self.credentials.admit_signature(command, timestamp)
        return Outcome(refusal) if refusal else self._run(command.command, timestamp)

    def _run(self, command, timestamp: int) -> Outcome:
        """A command wrapped in an Idempotent or a Signed one: a ledger command answers its codes in an Outcome."""
        if type(command) is CreateAccounts:
            return Outcome(codes=self.ledger.create_accounts(command.accounts, timestamp))
        if type(command) is CreateTransfers:
            return Outcome(codes=self.ledger.create_transfers(command.transfers, timestamp))
        return _HANDLERS[type(command)](self, command, timestamp)

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field: each concern's own."""
        return {field: value for concern in self._concerns() for field, value in concern.snapshot().items()}

    def restore(self, snapshot) -> None:
        """Fill every concern from the engine's snapshot."""
        for concern in self._concerns():
            concern.restore(snapshot)

    def _concerns(self) -> tuple:
        return (self.merchants, self.orders, self.wallets, self.idempotency, self.ip_windows, self.payments,
                self.blocklist, self.deposits, self.credentials, self.invoices, self.notifications,
                self.reconciliations)


_HANDLERS = {
    CreateMerchant: lambda commerce, command, timestamp: commerce.merchants.create(command, timestamp),
    UpdateMerchant: Commerce._update_merchant,
    CreateSubAccount: lambda commerce, command, timestamp: commerce.merchants.create_sub_account(command, timestamp),
    AddDashboardUser: lambda commerce, command, timestamp: commerce.merchants.add_dashboard_user(command, timestamp),
    CreateOrder: lambda commerce, command, timestamp: commerce.orders.create(command, timestamp),
    AdmitOrderIp: lambda commerce, command, timestamp: commerce.ip_windows.admit_order_ip(command, timestamp),
    UpdateOrder: lambda commerce, command, timestamp: commerce.orders.update(command, timestamp, commerce.payments),
    CancelOrder: lambda commerce, command, timestamp: commerce.orders.cancel(command, timestamp, commerce.payments),
    CreateCustomer: lambda commerce, command, timestamp: commerce.wallets.create_customer(command, timestamp),
    MoveWallet: lambda commerce, command, timestamp: commerce.wallets.move_wallet(command, timestamp),
    PayOrderFromWallet: lambda commerce, command, timestamp: commerce.wallets.pay_order_from_wallet(
        command, timestamp),
    CreatePayment: lambda commerce, command, timestamp: commerce.payments.create_payment(command, timestamp),
    RecordPspResult: lambda commerce, command, timestamp: commerce.payments.record_psp_result(command, timestamp),
    ResealCards: lambda commerce, command, timestamp: commerce.payments.reseal_cards(command),
    ReceiveBankTransfer: lambda commerce, command, timestamp: commerce.payments.receive_bank_transfer(
        command, timestamp),
    CapturePayment: lambda commerce, command, timestamp: commerce.payments.capture(command, timestamp),
    CancelPayment: lambda commerce, command, timestamp: commerce.payments.cancel(command, timestamp),
    CreateRefund: lambda commerce, command, timestamp: commerce.payments.refund(command, timestamp),
    CreatePayout: lambda commerce, command, timestamp: commerce.payments.create_payout(command, timestamp),
    RecordPayoutResult: lambda commerce, command, timestamp: commerce.payments.record_payout_result(command, timestamp),
    AddToBlocklist: lambda commerce, command, timestamp: commerce.blocklist.add(command, timestamp),
    CreateDeposit: lambda commerce, command, timestamp: commerce.deposits.create_deposit(command, timestamp),
    ReceiveDepositTransfer: lambda commerce, command, timestamp: commerce.deposits.receive_transfer(command, timestamp),
    CreateWithdrawal: lambda commerce, command, timestamp: commerce.deposits.create_withdrawal(command, timestamp),
    RecordWithdrawalResult: lambda commerce, command, timestamp: commerce.deposits.record_withdrawal_result(
        command, timestamp),
    AdjustWallet: lambda commerce, command, timestamp: commerce.deposits.adjust(command, timestamp),
    RemoveFromBlocklist: lambda commerce, command, timestamp: commerce.blocklist.remove(command, timestamp),
    RotateCredentials: lambda commerce, command, timestamp: commerce.credentials.rotate(command, timestamp),
    TouchCredentials: lambda commerce, command, timestamp: commerce.credentials.touch(command, timestamp),
    Reconcile: lambda commerce, command, timestamp: commerce.reconciliations.reconcile(command, timestamp),
    Archive: lambda commerce, command, timestamp: commerce.archival.archive(command, timestamp),
    RecordDeliveryAttempts: lambda commerce, command, timestamp: commerce.notifications.record_attempts(
        command, timestamp),
    RedeliverEvent: lambda commerce, command, timestamp: commerce.notifications.redeliver(command, timestamp),
    ReplayDeliveries: lambda commerce, command, timestamp: commerce.notifications.replay(command, timestamp),
    Signed: Commerce._signed,
}
