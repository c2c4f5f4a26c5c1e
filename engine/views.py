"""Engine records as the API shows them: the public response types, and the functions that fill them from records
(public ids, RFC 3339 times, no secrets). Pure (standard library, msgspec and the engine's own types), so that the
edge answering a GET and the notifier sending an event render one object byte for byte alike."""

import datetime
import functools
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from engine.records import (
    Adjustment,
    BlocklistEntry,
    Customer,
    Delivery,
    DeliveryChannel,
    DeliveryKind,
    Deposit,
    EventRecord,
    Invoice,
    Merchant,
    Order,
    Payment,
    Payout,
    Record,
    Refund,
    SubAccount,
    Withdrawal,
)
from engine.states import (
    DeliveryStatus,
    DepositStatus,
    OrderStatus,
    PaymentStatus,
    PayoutStatus,
    RefundStatus,
    WithdrawalStatus,
)
from engine.types import Account, AccountFlag, Balance, Transfer, TransferFlag

_FLAG_NAMES = tuple(TransferFlag.NAMES.items())
# RFC 3339 with the space and lower case it allows (date, time, fraction, offset); no offset is taken as UTC.
_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})?")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_SECOND = datetime.timedelta(seconds=1)


# Times as the API writes and reads them


def time_of(nanoseconds: int) -> str:
    """RFC 3339 in UTC to the millisecond (truncated), as "2026-01-02T03:04:05.678Z"."""
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return f"{_second_of(seconds)}.{rest // 1_000_000:03d}Z"


@functools.lru_cache(maxsize=1024)  # a response's times, and the next response's, mostly share their second
def _second_of(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time_ns(raw: str) -> int | None:
    """Unix seconds below 2**33, or an RFC 3339 time from 1970 to 2262, as exact nanoseconds; else None."""
    raw = raw.strip()[:64]
    if raw.isascii() and raw.isdigit():
        return int(raw) * 1_000_000_000 if int(raw) < 2**33 else None
    match = _RFC3339.fullmatch(raw)
    if match is None:
        return None
    date, clock, fraction, offset = match.groups()
    try:
        moment = datetime.datetime.fromisoformat(f"{date}T{clock}{(offset or 'Z').upper()}")
    except ValueError:  # a month, day, hour or offset out of range
        return None
    # whole seconds by timedelta and the fraction by its digits: a float would round .201 down to .200999...
    nanoseconds = (moment - _EPOCH) // _SECOND * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))
    return nanoseconds if 0 <= nanoseconds < 2**63 else None


def public_id(ledger_id: str) -> str:
    """Ledger ids carry their merchant as a prefix; the merchant never sees it."""
    return ledger_id.partition(":")[2]


# Response types (documented in /openapi.json)


class ErrorBody(Struct):
    type: str
    code: str
    message: str
    param: str | None


class ErrorResponse(Struct):
    error: ErrorBody


class SubAccountOut(Struct):
    id: str
    name: str
    created_at: str


class SubAccountObjectOut(Struct):
    """A sub-account on its own, as its create answers: the merchant's entry for it, its type and its merchant."""

    id: str
    object: str
    merchant_id: str
    name: str
    created_at: str


class SettlementAccountOut(Struct):
    bank: str
    account_number: str
    account_name: str


class MerchantOut(Struct, omit_defaults=True):
    id: str
    object: str
    name: str
    email: str
    status: str
    tier: str
    webhook_url: str
    require_signature: bool
    ip_allowlist: list[str]
    acquirer: str
    client_id: str
    sub_accounts: list[SubAccountOut]
    created_at: str
    updated_at: str
    settlement_account: SettlementAccountOut | None = None
    # Only in the reply that creates the merchant.
    api_key: str | None = None
    signing_secret: str | None = None
    webhook_secret: str | None = None
    client_secret: str | None = None


class OrderOut(Struct):
    id: str
    object: str
    status: OrderStatus
    amount: int
    currency: str
    amount_refunded: int
    name: str
    note: str
    payment_methods: list[str]
    payment_sub_type: str
    customer_email: str
    customer_id: str
    callback_url: str
    ipn_url: str
    metadata: dict[str, str]
    payment_id: str | None
    payment_url: str
    # The EMVCo payload a banking app scans, while the order is pending and takes QR payments.
    qr: str | None
    created_at: str
    updated_at: str
    expires_at: str
    error_code: str | None
    error_message: str | None
    invoice_id: Annotated[str | None, Meta(description="the invoice made when the order was paid")]


class AccountOut(Struct):
    id: str
    object: str
    currency: str
    code: int
    flags: dict[str, bool]
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    balance: int
    available: int
    created_at: str
    metadata: dict[str, str]


class TransferOut(Struct):
    id: str
    object: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    code: int
    flags: list[str]
    pending_id: str | None
    timeout_s: int
    created_at: str


class TransferResult(Struct, gc=False):
    id: str
    result: str


class BalanceOut(Struct):
    account_id: str
    at: str
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    balance: int


class CustomerOut(Struct):
    id: str
    object: str
    email: str
    name: str
    created_at: str


class WalletBalance(Struct):
    currency: str
    balance: int
    available: int


class WalletOut(Struct):
    customer_id: str
    object: str
    balances: list[WalletBalance]
    history: list[TransferOut]


class CardOut(Struct):
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class PaymentMethodOut(Struct, omit_defaults=True):
    type: str
    card: CardOut | None = None
    customer_id: str | None = None
    token: str | None = None
    fingerprint: Annotated[str | None, Meta(description="the card's: the same for the same number at every merchant")] \
        = None


class NextAction(Struct):
    type: str
    url: str


class PaymentOut(Struct):
    id: str
    object: str
    order_id: str | None
    status: PaymentStatus
    amount: int
    amount_capturable: int
    amount_captured: int
    amount_refunded: int
    currency: str
    capture_method: str
    payment_method: PaymentMethodOut
    next_action: NextAction | None
    failure_code: str | None
    failure_message: str | None
    acquirer: str
    description: str
    metadata: dict[str, str]
    created_at: str
    updated_at: str


class PaymentList(Struct):
    object: str
    data: list[PaymentOut]
    has_more: bool


class BlocklistEntryOut(Struct):
    id: str
    object: str
    kind: str
    value: str
    merchant_id: str | None
    reason: str
    created_at: str
    deleted: bool


class BlocklistEntryList(Struct):
    object: str
    data: list[BlocklistEntryOut]
    has_more: bool


class RefundOut(Struct):
    id: str
    object: str
    payment_id: str
    amount: int
    currency: str
    reason: str
    status: RefundStatus
    created_at: str


class OrderList(Struct):
    object: str
    data: list[OrderOut]
    has_more: bool


class RefundList(Struct):
    object: str
    data: list[RefundOut]
    has_more: bool


class MerchantList(Struct):
    object: str
    data: list[MerchantOut]
    has_more: bool


class TransferList(Struct):
    object: str
    data: list[TransferOut]
    has_more: bool




class PayoutOut(Struct):
    id: str
    object: str
    amount: int
    currency: str
    sub_account_id: str | None
    status: PayoutStatus
    failure_code: str | None
    created_at: str
    updated_at: str


class PayoutList(Struct):
    object: str
    data: list[PayoutOut]
    has_more: bool


class DepositOut(Struct):
    id: str
    object: str
    status: DepositStatus
    amount: int
    currency: str
    customer_id: str
    payment_id: Annotated[str, Meta(description="the payment that funds the deposit")]
    payment_method: PaymentMethodOut
    next_action: NextAction | None
    failure_code: str | None
    failure_message: str | None
    expires_at: Annotated[str | None, Meta(description="a QR or bank transfer deposit fails if no transfer quoting "
                                                       "it came by then")]
    created_at: str
    updated_at: str


class WithdrawalOut(Struct):
    id: str
    object: str
    status: WithdrawalStatus
    amount: int
    currency: str
    customer_id: str
    failure_code: str | None
    created_at: str
    updated_at: str


class AdjustmentOut(Struct):
    id: str
    object: str
    merchant_id: str
    customer_id: str
    amount: int
    currency: str
    reason: str
    created_at: str


class QrOut(Struct):
    payload: str
    png_url: str


class ApiKeyOut(Struct, omit_defaults=True):
    """A credential set; its secrets only in the reply that creates it."""

    id: str
    object: str
    client_id: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    api_key: str | None = None
    client_secret: str | None = None
    signing_secret: str | None = None
    webhook_secret: str | None = None


class ApiKeyList(Struct):
    object: str
    data: list[ApiKeyOut]
    has_more: bool


class TokenOut(Struct):
    access_token: str
    token_type: str
    expires_in: int


class EventData(Struct):
    object: Annotated[Any, Meta(description="the event's object (an order, payment, refund, payout, deposit or "
                                            "withdrawal) as its GET rendered it when the event happened")]


class EventOut(Struct):
    id: str
    object: str
    type: str
    created: str
    data: EventData


class EventList(Struct):
    object: str
    data: list[EventOut]
    has_more: bool


class DeliveryAttemptOut(Struct):
    attempted_at: str
    status_code: Annotated[int | None, Meta(description="the HTTP (or SMTP) reply code; null when none came")]
    error: str | None
    duration_ms: int


class DeliveryOut(Struct):
    id: str
    object: str
    event_id: str
    channel: DeliveryChannel
    kind: DeliveryKind
    target: Annotated[str, Meta(description="the URL posted to, or the e-mail address")]
    status: DeliveryStatus
    attempts: Annotated[list[DeliveryAttemptOut], Meta(description="the latest attempts, oldest first")]
    attempt_count: int
    next_attempt_at: str | None
    dead_reason: Annotated[str | None, Meta(description="backlog_full: made dead untried, the queue being full; "
                                                      "no_webhook_url: the merchant removed its webhook_url")]
    created_at: str
    updated_at: str


class DeliveryList(Struct):
    object: str
    data: list[DeliveryOut]
    has_more: bool


class QueuedOut(Struct):
    """What a redelivery or a replay queued."""

    object: str
    queued: int
    has_more: Annotated[bool, Meta(description="more dead deliveries matched than one call replays")]


class InvoicePaymentMethodOut(Struct):
    type: str
    brand: str | None
    last4: str | None


class InvoiceOut(Struct):
    id: str
    object: str
    number: Annotated[int, Meta(description="per merchant, from 1, without gaps")]
    merchant_id: str
    merchant_name: str
    order_id: str
    order_name: str
    amount: int
    currency: str
    payment_id: str
    payment_method: InvoicePaymentMethodOut
    pdf_url: str
    created_at: str


class InvoiceList(Struct):
    object: str
    data: list[InvoiceOut]
    has_more: bool


# Records as shown


def merchant(record: Merchant) -> MerchantOut:
    return MerchantOut(
        id=record.id, object="merchant", name=record.name, email=record.email, status=record.status,
        tier=record.tier, webhook_url=record.webhook_url, require_signature=record.require_signature,
        ip_allowlist=record.ip_allowlist, acquirer=record.acquirer, client_id=record.client_id,
        sub_accounts=[SubAccountOut(sub.id, sub.name, time_of(sub.created_at)) for sub in record.sub_accounts],
        created_at=time_of(record.created_at), updated_at=time_of(record.updated_at),
        settlement_account=None if record.settlement_account is None else SettlementAccountOut(
            **msgspec.structs.asdict(record.settlement_account)),
    )


def sub_account(merchant_id: str, record: SubAccount) -> SubAccountObjectOut:
    return SubAccountObjectOut(record.id, "sub_account", merchant_id, record.name, time_of(record.created_at))


def order(record: Order, public_url: str, qr: str | None) -> OrderOut:
    return OrderOut(
        id=record.id, object="order", status=record.status, amount=record.amount, currency=record.currency,
        amount_refunded=record.amount_refunded, name=record.name, note=record.note,
        payment_methods=record.payment_methods, payment_sub_type=record.payment_sub_type,
        customer_email=record.customer_email, customer_id=record.customer_id, callback_url=record.callback_url,
        ipn_url=record.ipn_url, metadata=record.metadata, payment_id=record.payment_id or None,
        payment_url=f"{public_url}/pay/{record.id}", qr=qr, created_at=time_of(record.created_at),
        updated_at=time_of(record.updated_at), expires_at=time_of(record.expires_at),
        error_code=record.error_code or None, error_message=record.error_message or None,
        invoice_id=record.invoice_id or None,
    )


def account(record: Account) -> AccountOut:
    balance = record.credits_posted - record.debits_posted
    return AccountOut(
        id=public_id(record.id), object="account", currency=record.currency, code=record.code,
        flags={"debits_must_not_exceed_credits": bool(record.flags & AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS),
               "credits_must_not_exceed_debits": bool(record.flags & AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS),
               "history": bool(record.flags & AccountFlag.HISTORY), "closed": bool(record.flags & AccountFlag.CLOSED)},
        debits_pending=record.debits_pending, debits_posted=record.debits_posted,
        credits_pending=record.credits_pending, credits_posted=record.credits_posted, balance=balance,
        available=balance - record.debits_pending, created_at=time_of(record.timestamp),
        metadata=record.metadata or {},
    )


def transfer(record: Transfer) -> TransferOut:
    return TransferOut(
        id=public_id(record.id), object="transfer", debit_account_id=public_id(record.debit_account_id),
        credit_account_id=public_id(record.credit_account_id), amount=record.amount, currency=record.currency,
        code=record.code, flags=[name for name, bit in _FLAG_NAMES if record.flags & bit],
        pending_id=public_id(record.pending_id) or None, timeout_s=record.timeout_s,
        created_at=time_of(record.timestamp),
    )


def balance(account_id: str, at: int, record: Balance) -> BalanceOut:
    return BalanceOut(account_id, time_of(at), record.debits_pending, record.debits_posted,
                              record.credits_pending, record.credits_posted,
                              record.credits_posted - record.debits_posted)


def customer(record: Customer) -> CustomerOut:
    return CustomerOut(record.id, "customer", record.email, record.name, time_of(record.created_at))


def wallet(record: Customer, accounts: list[Account], history: list[Transfer]) -> WalletOut:
    balances = [WalletBalance(a.currency, a.credits_posted - a.debits_posted,
                                      a.credits_posted - a.debits_posted - a.debits_pending) for a in accounts]
    return WalletOut(record.id, "wallet", balances, [transfer(t) for t in history])


# What a payment in requires_action waits for, by payment method: the cardholder at the acquirer's 3-D Secure page,
# or the payer's transfer, which the order's QR code (its image at next_action.url) sets up.
NEXT_ACTIONS = {"card": "redirect_3ds", "qr": "display_qr", "bank_transfer": "display_bank_transfer_qr"}


def payment(record: Payment, token: str = "") -> PaymentOut:
    card = record.card
    method = PaymentMethodOut(
        type=record.method,
        card=CardOut(card.brand, card.last4, card.exp_month, card.exp_year) if card else None,
        customer_id=record.customer_id if record.method == "wallet" else None, token=token or None,
        fingerprint=card.fingerprint or None if card else None)
    next_action = None
    if record.status == "requires_action":
        next_action = NextAction(NEXT_ACTIONS.get(record.method, "redirect_3ds"), record.next_action_url)
    return PaymentOut(
        id=record.id, object="payment", order_id=record.order_id or None, status=record.status, amount=record.amount,
        amount_capturable=record.amount_capturable, amount_captured=record.amount_captured,
        amount_refunded=record.amount_refunded, currency=record.currency, capture_method=record.capture_method,
        payment_method=method, next_action=next_action, failure_code=record.failure_code or None,
        failure_message=record.failure_message or None, acquirer=record.acquirer, description=record.description,
        metadata=record.metadata, created_at=time_of(record.created_at), updated_at=time_of(record.updated_at),
    )


def blocklist_entry(record: BlocklistEntry, deleted: bool = False) -> BlocklistEntryOut:
    return BlocklistEntryOut(record.id, "blocklist_entry", record.kind, record.value,
                                     record.merchant_id or None, record.reason, time_of(record.created_at), deleted)


def refund(record: Refund) -> RefundOut:
    return RefundOut(record.id, "refund", record.payment_id, record.amount, record.currency, record.reason,
                             record.status, time_of(record.created_at))


def payout(record: Payout) -> PayoutOut:
    return PayoutOut(record.id, "payout", record.amount, record.currency, record.sub_account_id or None,
                             record.status, record.failure_code or None, time_of(record.created_at),
                             time_of(record.updated_at))


def deposit(record: Deposit) -> DepositOut:
    next_action = None
    if record.status == "requires_action":
        next_action = NextAction(NEXT_ACTIONS[record.method], record.next_action_url)
    return DepositOut(
        id=record.id, object="deposit", status=record.status, amount=record.amount, currency=record.currency,
        customer_id=record.customer_id, payment_id=record.payment_id,
        payment_method=PaymentMethodOut(type=record.method), next_action=next_action,
        failure_code=record.failure_code or None, failure_message=record.failure_message or None,
        expires_at=time_of(record.expires_at) if record.expires_at else None, created_at=time_of(record.created_at),
        updated_at=time_of(record.updated_at))


def withdrawal(record: Withdrawal) -> WithdrawalOut:
    return WithdrawalOut(record.id, "withdrawal", record.status, record.amount, record.currency,
                                 record.customer_id, record.failure_code or None, time_of(record.created_at),
                                 time_of(record.updated_at))


def adjustment(record: Adjustment) -> AdjustmentOut:
    return AdjustmentOut(record.id, "adjustment", record.merchant_id, record.customer_id, record.amount,
                                 record.currency, record.reason, time_of(record.created_at))


_record_decoder = msgspec.msgpack.Decoder(Record)
_json_encoder = msgspec.json.Encoder()


def event(record: EventRecord, public_url: str) -> EventOut:
    """The event with its object as the object's GET rendered it then (an order shown by an event is never pending,
    so it has no QR payload)."""
    stored = _record_decoder.decode(record.data)
    kind = type(stored)
    if kind is Order:
        shown = order(stored, public_url, None)
    elif kind is Payment:
        shown = payment(stored)
    else:
        shown = _EVENT_OBJECT_VIEWS[kind](stored)
    return EventOut(record.id, "event", record.kind, time_of(record.created_at), EventData(shown))


_EVENT_OBJECT_VIEWS = {Refund: refund, Payout: payout, Deposit: deposit, Withdrawal: withdrawal}


def event_body(record: EventRecord, public_url: str) -> bytes:
    """The event's JSON, byte for byte what GET /v1/events/{id} answers and what its deliveries post."""
    return _json_encoder.encode(event(record, public_url))


def delivery(record: Delivery) -> DeliveryOut:
    attempts = [DeliveryAttemptOut(time_of(attempt.attempted_at), attempt.status_code or None, attempt.error or None,
                                   attempt.duration_ms) for attempt in record.attempts]
    return DeliveryOut(
        id=record.id, object="webhook_delivery", event_id=record.event_id, channel=record.channel, kind=record.kind,
        target=record.target, status=record.status, attempts=attempts, attempt_count=record.attempt_count,
        next_attempt_at=time_of(record.next_attempt_at) if record.next_attempt_at else None,
        dead_reason=record.dead_reason or None, created_at=time_of(record.created_at),
        updated_at=time_of(record.updated_at))


def invoice(record: Invoice, public_url: str) -> InvoiceOut:
    method = InvoicePaymentMethodOut(record.payment_method, record.card_brand or None, record.card_last4 or None)
    return InvoiceOut(
        id=record.id, object="invoice", number=record.number, merchant_id=record.merchant_id,
        merchant_name=record.merchant_name, order_id=record.order_id, order_name=record.order_name,
        amount=record.amount, currency=record.currency, payment_id=record.payment_id, payment_method=method,
        pdf_url=f"{public_url}/v1/invoices/{record.id}.pdf", created_at=time_of(record.created_at))
