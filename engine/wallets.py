"""Customers and their wallets: wallet checkouts, and the legacy wallet moves older journals replay."""

from engine.changes import Changes
from engine.ledger import Ledger
from engine.merchants import Merchants
from engine.orders import Orders
from engine.payments import Payments, ensure_wallet, move, system_account
from engine.records import (
    CreateCustomer,
    Customer,
    MoveWallet,
    Order,
    Outcome,
    PayOrderFromWallet,
    wallet_account_id,
)
from engine.types import Transfer


class Wallets:
    def __init__(self, ledger: Ledger, changes: Changes, merchants: Merchants, orders: Orders,
                 payments: Payments) -> None:
        self.ledger = ledger
        self.merchants = merchants
        self.orders = orders
        self.payments = payments
        self.customers: dict[str, Customer] = changes.dict()
        # An index, derived from the customers (restore rebuilds it): (merchant id, e-mail in lower case) -> the id
        # of the first customer made with that address.
        self.by_email: dict[tuple[str, str], str] = changes.dict(ordered=False)

    # Commands

    def create_customer(self, command: CreateCustomer, timestamp: int) -> Outcome:
        customer = command.customer
        if customer.merchant_id not in self.merchants.by_id:
            return Outcome("merchant_not_found")
        if customer.id in self.customers:
            return Outcome("exists")
        customer.created_at = timestamp
        self._add(customer)
        return Outcome(record=customer)

    def move_wallet(self, command: MoveWallet, timestamp: int) -> Outcome:
        """Legacy, for replay only: journals written before deposits were funded by real payments hold MoveWallet
        commands, applied exactly as then (a deposit from the unlimited `deposits` account) so that they replay to
        the same state. Nothing sends it any more: deposits are CreateDeposit, withdrawals CreateWithdrawal."""
        customer = self.customer_of(command.merchant_id, command.customer_id)
        if customer is None:
            return Outcome("customer_not_found")
        if command.withdrawal and self.ledger.available(wallet_account_id(
                command.merchant_id, command.customer_id, command.currency)) < command.amount:
            return Outcome("insufficient_funds", record=customer)
        wallet = ensure_wallet(self.ledger, command.merchant_id, command.customer_id, command.currency, timestamp)
        if command.withdrawal:
            outside = system_account(self.ledger, command.merchant_id, "withdrawals", command.currency, timestamp)
            debit, credit = wallet, outside
        else:
            outside = system_account(self.ledger, command.merchant_id, "deposits", command.currency, timestamp)
            debit, credit = outside, wallet
        transfer = Transfer(command.transfer_id, debit, credit, command.amount, command.currency)
        code = move(self.ledger, transfer, timestamp)
        return Outcome(code, record=customer)

    def pay_order_from_wallet(self, command: PayOrderFromWallet, timestamp: int) -> Outcome:
        order = self.orders.order_of(command.merchant_id, command.order_id) if command.order_id else None
        refused = self._wallet_payment_refusal(command, order)
        if refused is not None:
            return refused
        if order is not None:
            command.amount, command.currency = order.amount, order.currency
        refusal = self.payments.risk_refusal(command.merchant_id, command.amount, command.currency,
                                             command.risk_reason, command.amount_limits)
        if refusal:
            return self.payments.refuse_wallet_payment(command, order, refusal, timestamp)
        # Checked first so that a refused payment leaves no trace (no accounts, no spent transfer id).
        wallet_id = wallet_account_id(command.merchant_id, command.customer_id, command.currency)
        if self.ledger.available(wallet_id) < command.amount:
            return Outcome("insufficient_funds", record=order)
        wallet = ensure_wallet(self.ledger, command.merchant_id, command.customer_id, command.currency, timestamp)
        return self.payments.pay_from_wallet(command, order, wallet, timestamp)

    def _wallet_payment_refusal(self, command: PayOrderFromWallet, order: Order | None) -> Outcome | None:
        """Why a wallet payment cannot start (None: it can): the order's state, or without one, the amount."""
        if command.order_id:
            if order is None:
                return Outcome("order_not_found")
            if order.status != "pending":
                return Outcome("order_not_pending", record=order)
            if "wallet" not in order.payment_methods:
                return Outcome("payment_method_not_allowed", record=order)
            if self.payments.payment_in_progress(order):
                return Outcome("payment_in_progress", record=order)
        elif command.amount <= 0:
            return Outcome("amount_must_not_be_zero")
        if self.customer_of(command.merchant_id, command.customer_id) is None:
            return Outcome("customer_not_found")
        if command.payment_id in self.payments.payments:
            return Outcome("exists")
        return None

    # Reads

    def customer_of(self, merchant_id: str, customer_id: str) -> Customer | None:
        customer = self.customers.get(customer_id)
        return customer if customer is not None and customer.merchant_id == merchant_id else None

    def customer_with_email(self, merchant_id: str, email: str) -> str:
        """The id of the merchant's first customer made with this e-mail address, in any case ("" if none)."""
        return self.by_email.get((merchant_id, email.lower()), "") if email else ""

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"customers": list(self.customers.values())}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot, rebuilding the index."""
        for customer in snapshot.customers:
            self._add(customer)

    def _add(self, customer: Customer) -> None:
        self.customers[customer.id] = customer
        self.by_email.setdefault((customer.merchant_id, customer.email.lower()), customer.id)
