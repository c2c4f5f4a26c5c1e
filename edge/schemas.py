"""The public request and response types: they validate requests and generate /openapi.json."""

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from engine.currencies import CURRENCY_EXPONENTS, CURRENCY_NUMBERS  # noqa: F401 (the edge's names for them)
from engine.notifications import MAX_REPLAY_LIMIT
from engine.orders import MAX_SPLITS
from engine.types import AMOUNT_MAX

# Patterns end in \Z: msgspec matches with Python's re, whose `$` also matches before a trailing newline
# (/openapi.json shows them with JSON Schema's `$`, which does not).
# The enum only documents (msgspec validates the pattern; check_currency in edge/app.py refuses other codes).
Currency = Annotated[str, Meta(pattern=r"^[a-z]{3}\Z", description="ISO 4217 code in lower case",
                               extra_json_schema={"enum": sorted(CURRENCY_EXPONENTS)})]
Amount = Annotated[int, Meta(gt=0, le=AMOUNT_MAX, description="integer in minor units")]
LedgerAmount = Annotated[int, Meta(ge=0, le=AMOUNT_MAX)]
ClientId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]{1,48}\Z")]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Text = Annotated[str, Meta(max_length=2000)]
Email = Annotated[str, Meta(pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}\Z")]
OptionalEmail = Annotated[str, Meta(pattern=r"^([^@\s]{1,64}@[^@\s]{1,190})?\Z")]
Url = Annotated[str, Meta(max_length=2000, pattern=r"^(https?://\S+)?\Z")]
Metadata = Annotated[dict[str, Annotated[str, Meta(max_length=500)]], Meta(max_length=50)]
Tier = Literal["basic", "standard", "premium"]
PaymentMethodType = Literal["card", "qr", "wallet", "bank_transfer"]
ExpiresIn = Annotated[int, Meta(ge=60, le=30 * 86400)]
Code = Annotated[int, Meta(ge=0, le=65535)]
TransferFlagName = Literal["linked", "pending", "post_pending", "void_pending", "balancing_debit", "balancing_credit",
                           "closing_debit", "closing_credit"]
IpEntry = Annotated[str, Meta(max_length=64)]
IpAddress = Annotated[str, Meta(max_length=45, description="an IPv4 or IPv6 address")]


class Request(Struct, forbid_unknown_fields=True):
    """A request body: unknown fields are refused, never ignored."""


class SettlementAccount(Request):
    """The merchant's own bank account, where its pay-outs go."""

    bank: Annotated[str, Meta(min_length=1, max_length=64)]
    account_number: Annotated[str, Meta(pattern=r"^[0-9A-Za-z]{4,34}\Z")]
    account_name: Annotated[str, Meta(max_length=200)] = ""


class MerchantCreate(Request):
    name: Name
    email: Email
    webhook_url: Url = ""
    require_signature: bool = False
    ip_allowlist: Annotated[list[IpEntry], Meta(max_length=100)] = []
    tier: Tier = "standard"
    acquirer: Literal["piggybank"] = "piggybank"
    settlement_account: SettlementAccount | None = None


class MerchantUpdate(Request):
    webhook_url: Url | None = None
    tier: Tier | None = None
    ip_allowlist: Annotated[list[IpEntry], Meta(max_length=100)] | None = None
    status: Literal["active", "suspended"] | None = None
    require_signature: bool | None = None
    settlement_account: SettlementAccount | None = None


class ApiKeyCreate(Request):
    # How long the sets live before this one keep working, in seconds: 0 revokes them at once.
    expires_in: Annotated[int, Meta(ge=0, le=30 * 86400)] = 86400


class SubAccountCreate(Request):
    name: Name


class DashboardUserCreate(Request):
    email: Email
    password: Annotated[str, Meta(min_length=10, max_length=200)]


class Login(Request):
    email: Email
    password: Annotated[str, Meta(max_length=200)]


class SplitIn(Request):
    """A share of the order for one destination: exactly one of merchant_id and sub_account_id."""

    amount: Amount
    merchant_id: str = ""
    sub_account_id: str = ""


class OrderCreate(Request):
    name: Name
    amount: Amount
    currency: Currency
    note: Text = ""
    payment_methods: Annotated[list[PaymentMethodType], Meta(min_length=1, max_length=4)] = msgspec.field(
        default_factory=lambda: ["card", "qr", "wallet", "bank_transfer"])
    payment_sub_type: Literal["one_time", "recurring"] = "one_time"
    customer_email: OptionalEmail = ""
    customer_id: Annotated[str, Meta(max_length=64)] = ""
    callback_url: Url = ""
    ipn_url: Url = ""
    expires_in: ExpiresIn = 900
    splits: Annotated[list[SplitIn], Meta(max_length=MAX_SPLITS)] = []
    metadata: Metadata = {}


class OrderUpdate(Request):
    name: Name | None = None
    note: Text | None = None
    amount: Amount | None = None
    expires_in: ExpiresIn | None = None


class AccountFlags(Request, frozen=True):
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False
    history: bool = False


class AccountCreate(Request):
    currency: Currency
    id: ClientId | None = None
    code: Code = 0
    flags: AccountFlags = AccountFlags()
    metadata: Metadata = {}


MAX_TRANSFERS_PER_REQUEST = 8190
# Transfers come 8190 to a request: their ids and currency are checked by `client_id_valid` and the
# currency table rather than by a regex per field, which costs more than the rest of decoding.
BatchClientId = Annotated[str, Meta(max_length=48, extra_json_schema={"pattern": r"^[A-Za-z0-9_\-]{0,48}$"})]


class TransferCreate(Request, gc=False):  # thousands per batch; text and numbers only, so never in a cycle
    id: Annotated[str, Meta(min_length=1, max_length=48, extra_json_schema={"pattern": r"^[A-Za-z0-9_\-]{1,48}$"})]
    debit_account_id: BatchClientId = ""
    credit_account_id: BatchClientId = ""
    amount: LedgerAmount = 0
    currency: Annotated[str, Meta(max_length=3, description="empty: the pending transfer's currency",
                                  extra_json_schema={"enum": ["", *sorted(CURRENCY_EXPONENTS)]})] = ""
    code: Code = 0
    flags: Annotated[list[TransferFlagName], Meta(max_length=8)] = []
    pending_id: BatchClientId = ""
    timeout_s: Annotated[int, Meta(ge=0, le=2**31)] = 0


class CustomerCreate(Request):
    email: Email
    name: Annotated[str, Meta(max_length=200)] = ""


class WithdrawalCreate(Request):
    amount: Amount
    currency: Currency


class AdjustmentCreate(Request):
    """An operator's manual credit of a wallet (admin only), funded from the merchant's `adjustments` account."""

    amount: Amount
    currency: Currency
    reason: Annotated[str, Meta(min_length=1, max_length=500, pattern=r"\S",
                                description="why the wallet is credited: kept with the adjustment")]


class CardIn(Request):
    number: Annotated[str, Meta(min_length=12, max_length=23)]
    exp_month: Annotated[int, Meta(ge=1, le=12)]
    exp_year: Annotated[int, Meta(ge=2000, le=2100)]
    cvc: Annotated[str, Meta(pattern=r"^[0-9]{3,4}\Z")]
    holder_name: Annotated[str, Meta(max_length=200)] = ""


class CardMethod(Request, tag="card", tag_field="type"):
    """A new card (`card`) or a saved one (`token`)."""

    card: CardIn | None = None
    token: Annotated[str, Meta(pattern=r"^tok_[a-f0-9]{24}\Z")] | None = None


class WalletMethod(Request, tag="wallet", tag_field="type"):
    customer_id: Annotated[str, Meta(max_length=64)]


class QrMethod(Request, tag="qr", tag_field="type"):
    """The payer scans the order's dynamic QR code in a banking app."""


class BankTransferMethod(Request, tag="bank_transfer", tag_field="type"):
    """The payer sends a bank transfer quoting the order's reference (the one its QR code carries)."""


PaymentMethodIn = CardMethod | WalletMethod | QrMethod | BankTransferMethod


# A deposit is paid by a real payment: a card (new or saved), or the payer's transfer quoting the deposit.
DepositMethodIn = CardMethod | QrMethod | BankTransferMethod


class DepositCreate(Request):
    amount: Amount
    currency: Currency
    payment_method: DepositMethodIn
    customer_ip: Annotated[IpAddress, Meta(description="the payer's IP address as the merchant saw it, for the risk "
                                                       "rules")] = ""


class PaymentCreate(Request):
    payment_method: PaymentMethodIn
    order_id: Annotated[str, Meta(max_length=64)] = ""
    amount: Amount | None = None
    currency: Currency | None = None
    capture_method: Literal["automatic", "manual"] = "automatic"
    description: Text = ""
    metadata: Metadata = {}
    # The API is called by the merchant's server: the payer's own address comes from the merchant.
    customer_ip: Annotated[IpAddress, Meta(description="the payer's IP address as the merchant saw it, for the risk "
                                                       "rules (block list, attempts per address)")] = ""


class CaptureIn(Request):
    amount: Amount | None = None


class RefundCreate(Request):
    payment_id: Annotated[str, Meta(max_length=64)]
    amount: Amount | None = None
    reason: Annotated[str, Meta(max_length=200)] = ""


class PayoutCreate(Request):
    amount: Amount
    currency: Currency
    sub_account_id: Annotated[str, Meta(max_length=64)] = ""


class DynamicQrCreate(Request):
    order_id: Annotated[str, Meta(max_length=64)]


class StaticQrCreate(Request):
    sub_account_id: Annotated[str, Meta(max_length=64)] = ""


class BlockIn(Request, kw_only=True):
    """An entry of the risk block list; payments it names fail with `risk_rejected`."""

    merchant_id: Annotated[str, Meta(max_length=64, description="only at this merchant; empty: at every merchant")] = ""
    reason: Annotated[str, Meta(max_length=500)] = ""


class BlockCardIn(BlockIn, tag="card_fingerprint", tag_field="kind"):
    value: Annotated[str, Meta(pattern=r"^[0-9A-Za-z]{24}\Z",
                               description="a card payment's payment_method.fingerprint")]


class BlockIpIn(BlockIn, tag="ip", tag_field="kind"):
    value: IpAddress


class BlockEmailIn(BlockIn, tag="email", tag_field="kind"):
    value: Email


class BlockCustomerIn(BlockIn, tag="customer", tag_field="kind"):
    """Customer ids are each merchant's own: the entry names its merchant."""

    value: Annotated[str, Meta(min_length=1, max_length=64)]
    merchant_id: Annotated[str, Meta(min_length=1, max_length=64)]


BlocklistEntryCreate = BlockCardIn | BlockIpIn | BlockEmailIn | BlockCustomerIn


# A time in a body: unix seconds (below 2**33), or an RFC 3339 time from 1970 to 2262 (parse_time_ns reads both).
BodyTime = Annotated[int, Meta(ge=0, lt=2**33)] | Annotated[str, Meta(max_length=64)]


class DeliveriesReplay(Request):
    """Queue dead deliveries again, the oldest first: those made in [created_gte, created_lt), at most `limit`. Dead
    deliveries archived with their event (a day old) are not replayed: redeliver their event."""

    status: Literal["dead"]
    created_gte: BodyTime | None = None
    created_lt: BodyTime | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_REPLAY_LIMIT)] = MAX_REPLAY_LIMIT


class ProviderCallback(Struct):
    """What a provider posts to /v1/psp/{provider}/webhook (signed)."""

    callback_id: Annotated[str, Meta(min_length=1, max_length=64)]
    kind: Literal["authorization", "transfer_received", "payout"] = "authorization"
    reference: Annotated[str, Meta(max_length=64)] = ""
    amount: Annotated[int, Meta(ge=0, le=AMOUNT_MAX)] = 0
    currency: Annotated[str, Meta(max_length=3)] = ""
    bank_reference: Annotated[str, Meta(max_length=64)] = ""
    payout_id: Annotated[str, Meta(max_length=64)] = ""
    paid: bool = False
    payment_id: Annotated[str, Meta(max_length=64)] = ""
    merchant_id: Annotated[str, Meta(max_length=64)] = ""
    psp_reference: Annotated[str, Meta(max_length=64)] = ""
    result: Literal["authorized", "requires_action", "declined", "error", ""] = ""
    failure_code: Annotated[str, Meta(max_length=64)] = ""
    failure_message: Annotated[str, Meta(max_length=500)] = ""
    action_url: Annotated[str, Meta(max_length=2000)] = ""


class TokenRequest(Struct):
    """The form fields of POST /oauth/token (documentation only: the handler reads the form itself)."""

    grant_type: Literal["client_credentials"]
    client_id: str
    client_secret: str


_CLIENT_ID_CHARACTERS = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def client_id_valid(value: str) -> bool:
    """Letters, digits, "_" and "-" only (empty allowed): what a regex would check, at a tenth of the cost."""
    return not value.translate(_CLIENT_ID_CHARACTERS)


def decode(body: bytes, kind: type):
    """Validate a JSON body against a request type (raises msgspec errors for the middleware)."""
    return msgspec.json.decode(body, type=kind)
