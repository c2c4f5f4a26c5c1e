"""Merchants, orders and customers as the engine keeps them, and the commands that change them.

Ids, secrets' hashes and times are chosen outside the engine and arrive inside
the commands, so applying a command is deterministic. Ledger ids owned by a
merchant start with "<merchant id>:", which is also what routes them to a shard.
"""

import msgspec

from engine.types import CreateAccounts, CreateTransfers

SYSTEM_MARK = "."  # system account ids contain it; merchant-chosen ids may not


class SubAccount(msgspec.Struct, array_like=True):
    id: str
    name: str
    created_at: int = 0


class DashboardUser(msgspec.Struct, array_like=True):
    email: str
    password_hash: str


class Merchant(msgspec.Struct, tag=True, kw_only=True):
    id: str
    name: str
    email: str
    status: str = "active"
    tier: str = "standard"
    webhook_url: str = ""
    require_signature: bool = False
    ip_allowlist: list[str] = []
    acquirer: str = "piggybank"
    api_key_hash: str = ""
    client_id: str = ""
    client_secret_hash: str = ""
    signing_secret: str = ""
    webhook_secret: str = ""
    sub_accounts: list[SubAccount] = []
    users: list[DashboardUser] = []
    created_at: int = 0
    updated_at: int = 0


class Split(msgspec.Struct, array_like=True):
    account_id: str  # a merchant id or a sub-account id
    amount: int


class Order(msgspec.Struct, tag=True, kw_only=True):
    id: str
    merchant_id: str
    name: str
    amount: int
    currency: str
    note: str = ""
    payment_methods: list[str] = []
    payment_sub_type: str = "one_time"
    customer_email: str = ""
    customer_id: str = ""
    callback_url: str = ""
    ipn_url: str = ""
    splits: list[Split] = []
    metadata: dict[str, str] = {}
    status: str = "pending"
    amount_refunded: int = 0
    payment_id: str = ""
    error_code: str = ""
    error_message: str = ""
    expires_at: int = 0
    created_at: int = 0
    updated_at: int = 0


class Customer(msgspec.Struct, tag=True, kw_only=True):
    id: str
    merchant_id: str
    email: str
    name: str = ""
    created_at: int = 0


Record = Merchant | Order | Customer


class Outcome(msgspec.Struct, tag="outcome", omit_defaults=True):
    """What a command did: `ok` with the record as it now stands, or the reason it changed nothing."""

    code: str = "ok"
    record: Record | None = None
    # For ledger commands run under an idempotency key: one code per item.
    codes: list[int] | None = None
    replayed: bool = False
    # For a rate-limited command: when to try again.
    retry_after_s: int = 0


# Commands


class CreateMerchant(msgspec.Struct, tag="create_merchant", array_like=True):
    merchant: Merchant


class UpdateMerchant(msgspec.Struct, tag="update_merchant", array_like=True, kw_only=True):
    """Fields left None stay as they are."""

    merchant_id: str
    webhook_url: str | None = None
    tier: str | None = None
    ip_allowlist: list[str] | None = None
    status: str | None = None
    require_signature: bool | None = None


class CreateSubAccount(msgspec.Struct, tag="create_sub_account", array_like=True):
    merchant_id: str
    sub_account: SubAccount


class AddDashboardUser(msgspec.Struct, tag="add_dashboard_user", array_like=True):
    merchant_id: str
    user: DashboardUser


class CreateOrder(msgspec.Struct, tag="create_order", array_like=True, kw_only=True):
    order: Order
    # Per client IP, at most `ip_limit` orders in any `ip_window_s` (0: no limit).
    client_ip: str = ""
    ip_limit: int = 0
    ip_window_s: int = 600


class UpdateOrder(msgspec.Struct, tag="update_order", array_like=True, kw_only=True):
    """Fields left None stay as they are."""

    merchant_id: str
    order_id: str
    name: str | None = None
    note: str | None = None
    amount: int | None = None
    expires_at: int | None = None


class CancelOrder(msgspec.Struct, tag="cancel_order", array_like=True):
    merchant_id: str
    order_id: str


class CreateCustomer(msgspec.Struct, tag="create_customer", array_like=True):
    customer: Customer


class MoveWallet(msgspec.Struct, tag="move_wallet", array_like=True, kw_only=True):
    """A deposit into, or a withdrawal from, a customer's wallet."""

    merchant_id: str
    customer_id: str
    transfer_id: str
    amount: int
    currency: str
    withdrawal: bool = False


class PayOrderFromWallet(msgspec.Struct, tag="pay_order_from_wallet", array_like=True, kw_only=True):
    merchant_id: str
    order_id: str
    customer_id: str
    transfer_id: str


CommerceCommand = (
    CreateMerchant
    | UpdateMerchant
    | CreateSubAccount
    | AddDashboardUser
    | CreateOrder
    | UpdateOrder
    | CancelOrder
    | CreateCustomer
    | MoveWallet
    | PayOrderFromWallet
)


class Idempotent(msgspec.Struct, tag="idempotent", array_like=True, kw_only=True):
    """A command under a client's idempotency key: run once; the same key and request answer the first outcome again."""

    merchant_id: str
    key: str
    request_hash: str
    command: CommerceCommand | CreateAccounts | CreateTransfers


def system_account_id(merchant_id: str, name: str, currency: str) -> str:
    return f"{merchant_id}:{SYSTEM_MARK}{name}{SYSTEM_MARK}{currency}"


def wallet_account_id(merchant_id: str, customer_id: str, currency: str) -> str:
    return f"{merchant_id}:{customer_id}{SYSTEM_MARK}wallet{SYSTEM_MARK}{currency}"
