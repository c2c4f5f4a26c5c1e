"""The commerce state machines: merchants, orders, customers and wallets, idempotency keys, and the risk block list.

Money moves only as ledger transfers. Every command answers an `Outcome`;
a refused command changes nothing. Tenant isolation is enforced here too: a
merchant's command never sees another merchant's order or customer.
"""

import collections

import msgspec

from engine.changes import Changes
from engine.credentials import Credentials
from engine.ledger import Ledger
from engine.deposits import Deposits
from engine.payments import ACCOUNT_FLAGS, Payments, ensure_wallet, move, system_account
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
    ResealCards,
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
    SYSTEM_MARK,
    Split,
    UpdateMerchant,
    UpdateOrder,
    wallet_account_id,
)
from engine.records import RotateCredentials, Signed, TouchCredentials
from engine.records import AdjustWallet, CreateDeposit, CreateWithdrawal, ReceiveDepositTransfer, RecordWithdrawalResult
from engine.states import transition
from engine.types import AMOUNT_MAX, NANOSECONDS_PER_SECOND, TIMESTAMP_MAX, CreateAccounts, CreateTransfers, Event, \
    Transfer

IDEMPOTENCY_RETENTION_NS = 24 * 3600 * NANOSECONDS_PER_SECOND
MAX_BLOCKLIST_ENTRIES = 100_000
# Stores per merchant: each merchant record (read at every authentication refresh) carries them all.
MAX_SUB_ACCOUNTS = 1_000
MAX_SPLITS = 10
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
        self.deposits = Deposits(ledger, changes, self.payments, self.customer_of, self.events)
        # entry id -> entry, oldest first; kept by the shard that owns the block list's routing key
        self.blocklist: dict[str, BlocklistEntry] = changes.dict()
        self.credentials = Credentials(self.merchants, changes)

    # Time

    def advance(self, timestamp: int, expired_transfers: list[str]) -> list[Event]:
        """Expire pending orders whose time is up; forget idempotency keys past retention; time out payments."""
        first_event = len(self.events)
        self.payments.advance(timestamp, expired_transfers)
        self.deposits.advance(timestamp)
        self.deposits.follow_payments(first_event, timestamp)
        events = []
        expiries = self.order_expiries
        while expiries and expiries[0][0] <= timestamp:
            expires_at, order_id = expiries.pop()
            order = self.orders[order_id]
            if order.status == "pending" and order.expires_at == expires_at:
                transition(order, "expired")
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
        first_event = len(self.events)
        if type(command) is Idempotent:
            outcome = self._idempotent(command, timestamp)
        else:
            outcome = _HANDLERS[type(command)](self, command, timestamp)
        self.deposits.follow_payments(first_event, timestamp)  # a deposit's payment moved on: so does the deposit
        return outcome

    def _idempotent(self, command: Idempotent, timestamp: int) -> Outcome:
        key = (command.merchant_id, command.key)
        record = self.idempotency.get(key)
        if record is not None:
            if record.request_hash != command.request_hash:
                return Outcome("idempotency_key_reused")
            outcome = _outcome_decoder.decode(record.outcome)
            outcome.replayed = True
            return outcome
        outcome = self._run(command.command, timestamp)
        if outcome.code != "rate_limited":  # a refusal for now is not the request's answer for 24 hours
            self.idempotency[key] = IdempotencyRecord(command.request_hash, _outcome_encoder.encode(outcome), timestamp)
        return outcome

    def _run(self, command, timestamp: int) -> Outcome:
        if type(command) in (CreateAccounts, CreateTransfers):
            return Outcome(codes=self._ledger_command(command, timestamp))
        return _HANDLERS[type(command)](self, command, timestamp)

    def _signed(self, command: Signed, timestamp: int) -> Outcome:
        refusal = self.credentials.admit_signature(command, timestamp)
        return Outcome(refusal) if refusal else self._run(command.command, timestamp)

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
        if command.sub_account.id in ACCOUNT_FLAGS or SYSTEM_MARK in command.sub_account.id:
            return Outcome("sub_account_id_invalid")  # its balance would be, or look like, a system account
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
        if command.replaces_password_hash and not any(
                user.email == command.user.email and user.password_hash == command.replaces_password_hash
                for user in merchant.users):
            return Outcome("password_changed")  # set anew meanwhile: a re-hash of the old one must not undo that
        others = [user for user in merchant.users if user.email != command.user.email]
        merchant.users = [*others, command.user]
        return Outcome(record=merchant)

    def _create_order(self, command: CreateOrder, timestamp: int) -> Outcome:
        order = command.order
        if order.merchant_id not in self.merchants:
            return Outcome("merchant_not_found")
        if order.id in self.orders:
            return Outcome("exists")
        refusal = self._check_amount(order.merchant_id, order.amount, order.splits)
        if refusal:
            return Outcome(refusal)
        if not duration_fits(command.expires_in_s, timestamp):
            return Outcome("expires_in_invalid")
        retry_after_s = self._admit_ip(command, timestamp)
        if retry_after_s:
            return Outcome("rate_limited", retry_after_s=retry_after_s)
        order.status = "pending"
        order.created_at = order.updated_at = timestamp
        if command.expires_in_s is not None:
            order.expires_at = timestamp + command.expires_in_s * NANOSECONDS_PER_SECOND
        self.orders[order.id] = order
        self.orders_by_merchant.setdefault(order.merchant_id, []).append(order.id)
        self._schedule_expiry(order)
        return Outcome(record=order)

    def _schedule_expiry(self, order: Order) -> None:
        # Zero means the order never expires, as a zero timeout does in the ledger.
        if order.expires_at:
            self.order_expiries.push((order.expires_at, order.id))

    def _check_amount(self, merchant_id: str, amount: int, splits: list[Split]) -> str:
        """An order's amount and its shares: '' if they hold, else the refusal's code.

        Each share is positive and goes once to a merchant of this shard other than the order's own, or to one of
        the order merchant's sub-accounts; at most MAX_SPLITS, together at most the amount. A share has no
        currency of its own: it is paid in the order's.
        """
        if not 0 < amount <= AMOUNT_MAX:
            return "amount_out_of_range"
        if len(splits) > MAX_SPLITS:
            return "splits_too_many"
        if any(split.amount <= 0 for split in splits):
            return "split_amount_must_be_positive"
        if sum(split.amount for split in splits) > amount:
            return "splits_exceed_amount"
        destinations = set()
        for split in splits:
            if split.account_id == merchant_id:
                return "split_to_own_merchant"
            own_sub_account = self.merchant_by_sub_account.get(split.account_id) == merchant_id
            if not (own_sub_account or split.account_id in self.merchants):
                return "split_destination_not_found"
            if split.account_id in destinations:
                return "split_destination_duplicated"
            destinations.add(split.account_id)
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
        if not duration_fits(command.expires_in_s, timestamp):
            return Outcome("expires_in_invalid", record=order)
        if command.amount is not None:
            refusal = self._check_amount(order.merchant_id, command.amount, order.splits)
            if refusal:
                return Outcome(refusal, record=order)
        for field in ("name", "note", "amount"):
            value = getattr(command, field)
            if value is not None:
                setattr(order, field, value)
        expires_at = command.expires_at
        if command.expires_in_s is not None:
            expires_at = timestamp + command.expires_in_s * NANOSECONDS_PER_SECOND
        if expires_at is not None:
            order.expires_at = expires_at
            self._schedule_expiry(order)
        order.updated_at = timestamp
        return Outcome(record=order)

    def _cancel_order(self, command: CancelOrder, timestamp: int) -> Outcome:
        order = self.order_of(command.merchant_id, command.order_id)
        if order is None:
            return Outcome("order_not_found")
        if order.status != "pending":
            return Outcome("order_not_pending", record=order)
        transition(order, "cancelled")
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
        code = move(self.ledger, Transfer(command.transfer_id, debit, credit, command.amount, command.currency), timestamp)
        return Outcome(code, record=customer)

    def _pay_order_from_wallet(self, command: PayOrderFromWallet, timestamp: int) -> Outcome:
        order = self.order_of(command.merchant_id, command.order_id) if command.order_id else None
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



def duration_fits(duration_s: int | None, timestamp: int) -> bool:
    """A duration from the batch's time (None: none given) is not negative and ends within the engine's clock."""
    return duration_s is None or 0 <= duration_s <= (TIMESTAMP_MAX - timestamp) // NANOSECONDS_PER_SECOND


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
    ResealCards: lambda commerce, command, timestamp: commerce.payments.reseal_cards(command),
    ReceiveBankTransfer: lambda commerce, command, timestamp: commerce.payments.receive_bank_transfer(command, timestamp),
    CapturePayment: lambda commerce, command, timestamp: commerce.payments.capture(command, timestamp),
    CancelPayment: lambda commerce, command, timestamp: commerce.payments.cancel(command, timestamp),
    CreateRefund: lambda commerce, command, timestamp: commerce.payments.refund(command, timestamp),
    CreatePayout: lambda commerce, command, timestamp: commerce.payments.create_payout(command, timestamp),
    RecordPayoutResult: lambda commerce, command, timestamp: commerce.payments.record_payout_result(command, timestamp),
    AddToBlocklist: Commerce._add_to_blocklist,
    CreateDeposit: lambda commerce, command, timestamp: commerce.deposits.create_deposit(command, timestamp),
    ReceiveDepositTransfer: lambda commerce, command, timestamp: commerce.deposits.receive_transfer(command, timestamp),
    CreateWithdrawal: lambda commerce, command, timestamp: commerce.deposits.create_withdrawal(command, timestamp),
    RecordWithdrawalResult: lambda commerce, command, timestamp: commerce.deposits.record_withdrawal_result(
        command, timestamp),
    AdjustWallet: lambda commerce, command, timestamp: commerce.deposits.adjust(command, timestamp),
    RemoveFromBlocklist: Commerce._remove_from_blocklist,
    RotateCredentials: lambda commerce, command, timestamp: commerce.credentials.rotate(command, timestamp),
    TouchCredentials: lambda commerce, command, timestamp: commerce.credentials.touch(command, timestamp),
    Signed: Commerce._signed,
}
