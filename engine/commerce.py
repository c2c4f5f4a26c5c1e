"""The commerce state machines: merchants, orders, customers and wallets, idempotency keys, and the risk block list.

Money moves only as ledger transfers. Every command answers an `Outcome`;
a refused command changes nothing. Tenant isolation is enforced here too: a
merchant's command never sees another merchant's order or customer.
"""

import collections

import msgspec

from engine.changes import Changes
from engine.ledger import Ledger
from engine.payments import Payments, move, system_account
from engine.records import (
    AddDashboardUser,
    AddToBlocklist,
    AdmitOrderIp,
    BlocklistEntry,
    CancelOrder,
    CancelPayment,
    CapturePayment,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    RecordPayoutResult,
    ReceiveBankTransfer,
    RecordPspResult,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreateSubAccount,
    Customer,
    Idempotent,
    Merchant,
    MoveWallet,
    Order,
    Outcome,
    PayOrderFromWallet,
    RemoveFromBlocklist,
    UpdateMerchant,
    UpdateOrder,
    wallet_account_id,
)
from engine.types import NANOSECONDS_PER_SECOND, AccountFlag, CreateAccounts, CreateTransfers, Event, Transfer

IDEMPOTENCY_RETENTION_NS = 24 * 3600 * NANOSECONDS_PER_SECOND
MAX_BLOCKLIST_ENTRIES = 100_000
# Stores per merchant: each merchant record (read at every authentication refresh) carries them all.
MAX_SUB_ACCOUNTS = 1_000
ORDER_STATUSES = ("pending", "paid", "failed", "expired", "cancelled", "partially_refunded", "refunded", "exception")
_outcome_encoder = msgspec.msgpack.Encoder()
_outcome_decoder = msgspec.msgpack.Decoder(Outcome)


class IdempotencyRecord(msgspec.Struct, array_like=True):
    request_hash: str
    outcome: bytes  # the first outcome, encoded as it was then
    created_at: int


class Commerce:
    def __init__(self, ledger: Ledger, changes: Changes) -> None:
        # State lives in tracked containers (engine/changes.py): a command that raises is undone whole.
        self.ledger = ledger
        self.merchants: dict[str, Merchant] = changes.dict()
        self.merchant_by_api_key_hash: dict[str, str] = changes.dict()
        self.merchant_by_client_id: dict[str, str] = changes.dict()
        self.merchant_by_sub_account: dict[str, str] = changes.dict()
        self.orders: dict[str, Order] = changes.dict()
        self.orders_by_merchant: dict[str, list[str]] = changes.dict()
        self.order_expiries = changes.heap()  # (expires_at, order id)
        self.customers: dict[str, Customer] = changes.dict()
        # (merchant id, key) -> record, oldest first: pruned from the front as time passes.
        self.idempotency: dict[tuple[str, str], IdempotencyRecord] = changes.dict()
        # client IP -> times of its recent admitted orders; the address admitted longest ago first
        self.order_times_by_ip: dict[str, collections.deque] = changes.dict(ranked=True)  # an address moves to the end
        self.events: list[Event] = changes.event_log()
        self.payments = Payments(ledger, changes, self.merchants, self.orders, self.events)
        # entry id -> entry, oldest first; kept by the shard that owns the block list's routing key
        self.blocklist: dict[str, BlocklistEntry] = changes.dict()

    # Time

    def advance(self, timestamp: int, expired_transfers: list[str]) -> list[Event]:
        """Expire pending orders whose time is up; forget idempotency keys past retention; time out payments."""
        self.payments.advance(timestamp, expired_transfers)
        events = []
        expiries = self.order_expiries
        while expiries and expiries[0][0] <= timestamp:
            expires_at, order_id = expiries.pop()
            order = self.orders[order_id]
            if order.status == "pending" and order.expires_at == expires_at:
                order.status = "expired"
                order.updated_at = timestamp
                events.append(Event("order.expired", order_id, timestamp))
                self.payments.order_closed(order, timestamp)
        records = self.idempotency
        while records:
            key = next(iter(records))
            if records[key].created_at + IDEMPOTENCY_RETENTION_NS > timestamp:
                break
            del records[key]
        return events

    # Commands

    def apply(self, command, timestamp: int) -> Outcome:
        if type(command) is Idempotent:
            return self._idempotent(command, timestamp)
        return _HANDLERS[type(command)](self, command, timestamp)

    def _idempotent(self, command: Idempotent, timestamp: int) -> Outcome:
        key = (command.merchant_id, command.key)
        record = self.idempotency.get(key)
        if record is not None:
            if record.request_hash != command.request_hash:
                return Outcome("idempotency_key_reused")
            outcome = _outcome_decoder.decode(record.outcome)
            outcome.replayed = True
            return outcome
        inner = command.command
        if type(inner) in (CreateAccounts, CreateTransfers):
            outcome = Outcome(codes=self._ledger_command(inner, timestamp))
        else:
            outcome = _HANDLERS[type(inner)](self, inner, timestamp)
        if outcome.code != "rate_limited":  # a refusal for now is not the request's answer for 24 hours
            self.idempotency[key] = IdempotencyRecord(command.request_hash, _outcome_encoder.encode(outcome), timestamp)
        return outcome

    def _ledger_command(self, command, timestamp: int) -> list[int]:
        if type(command) is CreateAccounts:
            return self.ledger.create_accounts(command.accounts, timestamp)
        return self.ledger.create_transfers(command.transfers, timestamp)

    def _create_merchant(self, command: CreateMerchant, timestamp: int) -> Outcome:
        merchant = command.merchant
        if merchant.id in self.merchants:
            return Outcome("exists")
        if merchant.api_key_hash in self.merchant_by_api_key_hash or merchant.client_id in self.merchant_by_client_id:
            return Outcome("credentials_in_use")
        merchant.created_at = merchant.updated_at = timestamp
        self.merchants[merchant.id] = merchant
        if merchant.api_key_hash:
            self.merchant_by_api_key_hash[merchant.api_key_hash] = merchant.id
        if merchant.client_id:
            self.merchant_by_client_id[merchant.client_id] = merchant.id
        return Outcome(record=merchant)

    def _update_merchant(self, command: UpdateMerchant, timestamp: int) -> Outcome:
        merchant = self.merchants.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        for field in ("webhook_url", "tier", "ip_allowlist", "status", "require_signature", "settlement_account"):
            value = getattr(command, field)
            if value is not None:
                setattr(merchant, field, value)
        merchant.updated_at = timestamp
        return Outcome(record=merchant)

    def _create_sub_account(self, command: CreateSubAccount, timestamp: int) -> Outcome:
        merchant = self.merchants.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        if command.sub_account.id in self.merchant_by_sub_account:  # sub-account ids are one namespace per shard
            return Outcome("exists")
        if len(merchant.sub_accounts) >= MAX_SUB_ACCOUNTS:
            return Outcome("sub_account_limit_reached")
        command.sub_account.created_at = timestamp
        merchant.sub_accounts = [*merchant.sub_accounts, command.sub_account]
        self.merchant_by_sub_account[command.sub_account.id] = merchant.id
        merchant.updated_at = timestamp
        return Outcome(record=merchant)

    def _add_dashboard_user(self, command: AddDashboardUser, timestamp: int) -> Outcome:
        merchant = self.merchants.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        others = [user for user in merchant.users if user.email != command.user.email]
        merchant.users = [*others, command.user]
        return Outcome(record=merchant)

    def _create_order(self, command: CreateOrder, timestamp: int) -> Outcome:
        order = command.order
        if order.merchant_id not in self.merchants:
            return Outcome("merchant_not_found")
        if order.id in self.orders:
            return Outcome("exists")
        split_code = self._check_splits(order)
        if split_code:
            return Outcome(split_code)
        retry_after_s = self._admit_ip(command, timestamp)
        if retry_after_s:
            return Outcome("rate_limited", retry_after_s=retry_after_s)
        order.status = "pending"
        order.created_at = order.updated_at = timestamp
        self.orders[order.id] = order
        self.orders_by_merchant.setdefault(order.merchant_id, []).append(order.id)
        self._schedule_expiry(order)
        return Outcome(record=order)

    def _schedule_expiry(self, order: Order) -> None:
        # Zero means the order never expires, as a zero timeout does in the ledger.
        if order.expires_at:
            self.order_expiries.push((order.expires_at, order.id))

    def _check_splits(self, order: Order) -> str:
        """Each share goes to a sub-account of the merchant or to a merchant on this shard; together at most the amount."""
        if not order.splits:
            return ""
        if sum(split.amount for split in order.splits) > order.amount:
            return "splits_exceed_amount"
        for split in order.splits:
            own_sub_account = self.merchant_by_sub_account.get(split.account_id) == order.merchant_id
            if split.amount <= 0 or not (own_sub_account or split.account_id in self.merchants):
                return "split_destination_not_found"
        return ""

    def _admit_order_ip(self, command: AdmitOrderIp, timestamp: int) -> Outcome:
        retry_after_s = self._admit_ip(command, timestamp)
        return Outcome("rate_limited", retry_after_s=retry_after_s) if retry_after_s else Outcome()

    def _admit_ip(self, command: CreateOrder | AdmitOrderIp, timestamp: int) -> int:
        """A sliding window per client IP, in engine time: 0 if admitted (always, without a limit), else seconds
        until a slot frees."""
        if command.ip_limit <= 0:
            return 0
        windows = self.order_times_by_ip
        times = windows.get(command.client_ip) or collections.deque()
        window_ns = command.ip_window_s * NANOSECONDS_PER_SECOND
        horizon = timestamp - window_ns
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= command.ip_limit:
            return max(1, -(-(times[0] + window_ns - timestamp) // NANOSECONDS_PER_SECOND))
        times.append(timestamp)
        windows.pop(command.client_ip, None)
        windows[command.client_ip] = times  # last: addresses stay in the order of their newest admission
        self._forget_idle_ips(horizon)
        return 0

    def _forget_idle_ips(self, horizon: int) -> None:
        """Forget up to two addresses whose newest admission left the window: each admission adds at most one, so
        the windows kept are about as many as the addresses that ordered within the window."""
        windows = self.order_times_by_ip
        for _ in range(2):
            oldest = next(iter(windows), None)
            if oldest is None or (windows[oldest] and windows[oldest][-1] > horizon):
                return
            del windows[oldest]

    def _update_order(self, command: UpdateOrder, timestamp: int) -> Outcome:
        order = self.order_of(command.merchant_id, command.order_id)
        if order is None:
            return Outcome("order_not_found")
        if order.status != "pending":
            return Outcome("order_not_pending", record=order)
        if command.amount is not None and self.payments.payment_in_progress(order):
            return Outcome("payment_in_progress", record=order)  # its payment is for the amount asked then
        for field in ("name", "note", "amount"):
            value = getattr(command, field)
            if value is not None:
                setattr(order, field, value)
        if command.expires_at is not None:
            order.expires_at = command.expires_at
            self._schedule_expiry(order)
        order.updated_at = timestamp
        return Outcome(record=order)

    def _cancel_order(self, command: CancelOrder, timestamp: int) -> Outcome:
        order = self.order_of(command.merchant_id, command.order_id)
        if order is None:
            return Outcome("order_not_found")
        if order.status != "pending":
            return Outcome("order_not_pending", record=order)
        order.status = "cancelled"
        order.updated_at = timestamp
        self.payments.order_closed(order, timestamp)
        return Outcome(record=order)

    def _create_customer(self, command: CreateCustomer, timestamp: int) -> Outcome:
        customer = command.customer
        if customer.merchant_id not in self.merchants:
            return Outcome("merchant_not_found")
        if customer.id in self.customers:
            return Outcome("exists")
        customer.created_at = timestamp
        self.customers[customer.id] = customer
        return Outcome(record=customer)

    def _move_wallet(self, command: MoveWallet, timestamp: int) -> Outcome:
        customer = self.customer_of(command.merchant_id, command.customer_id)
        if customer is None:
            return Outcome("customer_not_found")
        if command.withdrawal and self.ledger.available(wallet_account_id(
                command.merchant_id, command.customer_id, command.currency)) < command.amount:
            return Outcome("insufficient_funds", record=customer)
        wallet = self._ensure_wallet(command.merchant_id, command.customer_id, command.currency, timestamp)
        if command.withdrawal:
            outside = system_account(self.ledger, command.merchant_id, "withdrawals", command.currency, timestamp)
            debit, credit = wallet, outside
        else:
            outside = system_account(self.ledger, command.merchant_id, "deposits", command.currency, timestamp)
            debit, credit = outside, wallet
        code = move(self.ledger, Transfer(command.transfer_id, debit, credit, command.amount, command.currency), timestamp)
        return Outcome(code, record=customer)

    def _pay_order_from_wallet(self, command: PayOrderFromWallet, timestamp: int) -> Outcome:
        order = self.order_of(command.merchant_id, command.order_id)
        if order is None:
            return Outcome("order_not_found")
        if order.status != "pending":
            return Outcome("order_not_pending", record=order)
        if "wallet" not in order.payment_methods:
            return Outcome("payment_method_not_allowed", record=order)
        if self.payments.payment_in_progress(order):
            return Outcome("payment_in_progress", record=order)
        if self.customer_of(command.merchant_id, command.customer_id) is None:
            return Outcome("customer_not_found")
        refusal = self.payments.risk_refusal(command.merchant_id, order.amount, order.currency, command.risk_reason,
                                             command.amount_limits)
        if refusal:
            return Outcome(record=self.payments.record_wallet_payment(command, order, timestamp, refusal))
        # Checked first so that a refused payment leaves no trace (no accounts, no spent transfer id).
        if self.ledger.available(wallet_account_id(command.merchant_id, command.customer_id, order.currency)) < order.amount:
            return Outcome("insufficient_funds", record=order)
        wallet = self._ensure_wallet(command.merchant_id, command.customer_id, order.currency, timestamp)
        balance = system_account(self.ledger, command.merchant_id, "balance", order.currency, timestamp)
        code = move(self.ledger, Transfer(command.transfer_id, wallet, balance, order.amount, order.currency), timestamp)
        if code != "ok":
            return Outcome(code, record=order)
        order.customer_id = command.customer_id
        payment = self.payments.record_wallet_payment(command, order, timestamp)
        return Outcome(record=payment)

    def _add_to_blocklist(self, command: AddToBlocklist, timestamp: int) -> Outcome:
        entry = command.entry
        if entry.id in self.blocklist:
            return Outcome("exists", record=self.blocklist[entry.id])
        if len(self.blocklist) >= MAX_BLOCKLIST_ENTRIES:
            return Outcome("blocklist_full")
        entry.created_at = timestamp
        self.blocklist[entry.id] = entry
        return Outcome(record=entry)

    def _remove_from_blocklist(self, command: RemoveFromBlocklist, timestamp: int) -> Outcome:
        entry = self.blocklist.pop(command.entry_id, None)
        return Outcome(record=entry) if entry is not None else Outcome("blocklist_entry_not_found")

    # Ledger plumbing

    def _ensure_wallet(self, merchant_id: str, customer_id: str, currency: str, timestamp: int) -> str:
        # A wallet may never be overdrawn: the ledger refuses any debit past its credits.
        return self.ledger.ensure_account(wallet_account_id(merchant_id, customer_id, currency), currency,
                                          AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlag.HISTORY, timestamp)

    # Reads

    def order_of(self, merchant_id: str, order_id: str) -> Order | None:
        order = self.orders.get(order_id)
        return order if order is not None and order.merchant_id == merchant_id else None

    def customer_of(self, merchant_id: str, customer_id: str) -> Customer | None:
        customer = self.customers.get(customer_id)
        return customer if customer is not None and customer.merchant_id == merchant_id else None

    def merchants_of_user(self, email: str) -> list[Merchant]:
        return [merchant for merchant in self.merchants.values() if any(user.email == email for user in merchant.users)]

    def list_orders(
        self,
        merchant_id: str,
        name_contains: str = "",
        status: str = "",
        created_gte: int = 0,
        created_lt: int = 2**63 - 1,
        limit: int = 20,
        starting_after: str = "",
    ) -> tuple[list[Order], bool]:
        """A merchant's orders, newest first, filtered; and whether more follow."""
        ids = self.orders_by_merchant.get(merchant_id, [])
        position = len(ids)
        if starting_after:
            after = self.order_of(merchant_id, starting_after)
            if after is None:
                return [], False
            position = ids.index(after.id, 0)
        needle = name_contains.casefold()
        found: list[Order] = []
        for index in range(position - 1, -1, -1):
            order = self.orders[ids[index]]
            if order.created_at < created_gte:
                break  # newest first: everything further is older still
            if order.created_at >= created_lt or (status and order.status != status):
                continue
            if needle and needle not in order.name.casefold():
                continue
            if len(found) == limit:
                return found, True
            found.append(order)
        return found, False

    def list_blocklist(self, limit: int, starting_after: str = "") -> tuple[list[BlocklistEntry], bool]:
        """Block list entries, newest first, and whether more follow."""
        newest_first = reversed(self.blocklist)
        if starting_after:
            if starting_after not in self.blocklist:
                return [], False
            for entry_id in newest_first:
                if entry_id == starting_after:
                    break
        page = [self.blocklist[entry_id] for entry_id, _ in zip(newest_first, range(limit + 1))]
        return page[:limit], len(page) > limit



_HANDLERS = {
    CreateMerchant: Commerce._create_merchant,
    UpdateMerchant: Commerce._update_merchant,
    CreateSubAccount: Commerce._create_sub_account,
    AddDashboardUser: Commerce._add_dashboard_user,
    CreateOrder: Commerce._create_order,
    AdmitOrderIp: Commerce._admit_order_ip,
    UpdateOrder: Commerce._update_order,
    CancelOrder: Commerce._cancel_order,
    CreateCustomer: Commerce._create_customer,
    MoveWallet: Commerce._move_wallet,
    PayOrderFromWallet: Commerce._pay_order_from_wallet,
    CreatePayment: lambda commerce, command, timestamp: commerce.payments.create_payment(command, timestamp),
    RecordPspResult: lambda commerce, command, timestamp: commerce.payments.record_psp_result(command, timestamp),
    ReceiveBankTransfer: lambda commerce, command, timestamp: commerce.payments.receive_bank_transfer(command, timestamp),
    CapturePayment: lambda commerce, command, timestamp: commerce.payments.capture(command, timestamp),
    CancelPayment: lambda commerce, command, timestamp: commerce.payments.cancel(command, timestamp),
    CreateRefund: lambda commerce, command, timestamp: commerce.payments.refund(command, timestamp),
    CreatePayout: lambda commerce, command, timestamp: commerce.payments.create_payout(command, timestamp),
    RecordPayoutResult: lambda commerce, command, timestamp: commerce.payments.record_payout_result(command, timestamp),
    AddToBlocklist: Commerce._add_to_blocklist,
    RemoveFromBlocklist: Commerce._remove_from_blocklist,
}
