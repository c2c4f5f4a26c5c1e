"""Engine records as the API shows them: public ids, RFC 3339 times, no secrets."""

import datetime
import functools
import re

import msgspec

from edge import schemas
from engine.records import Adjustment, BlocklistEntry, Customer, Deposit, Merchant, Order, Payment, Payout, Refund, \
    SubAccount, Withdrawal
from engine.types import Account, AccountFlag, Balance, Transfer, TransferFlag

_FLAG_NAMES = tuple(TransferFlag.NAMES.items())
# RFC 3339 with the space and lower case it allows (date, time, fraction, offset); no offset is taken as UTC.
_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})?")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_SECOND = datetime.timedelta(seconds=1)


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


def merchant(record: Merchant) -> schemas.MerchantOut:
    return schemas.MerchantOut(
        id=record.id, object="merchant", name=record.name, email=record.email, status=record.status,
        tier=record.tier, webhook_url=record.webhook_url, require_signature=record.require_signature,
        ip_allowlist=record.ip_allowlist, acquirer=record.acquirer, client_id=record.client_id,
        sub_accounts=[schemas.SubAccountOut(sub.id, sub.name, time_of(sub.created_at)) for sub in record.sub_accounts],
        created_at=time_of(record.created_at), updated_at=time_of(record.updated_at),
        settlement_account=None if record.settlement_account is None else schemas.SettlementAccount(
            **msgspec.structs.asdict(record.settlement_account)),
    )


def sub_account(merchant_id: str, record: SubAccount) -> schemas.SubAccountObjectOut:
    return schemas.SubAccountObjectOut(record.id, "sub_account", merchant_id, record.name, time_of(record.created_at))


def order(record: Order, public_url: str, qr: str | None) -> schemas.OrderOut:
    return schemas.OrderOut(
        id=record.id, object="order", status=record.status, amount=record.amount, currency=record.currency,
        amount_refunded=record.amount_refunded, name=record.name, note=record.note,
        payment_methods=record.payment_methods, payment_sub_type=record.payment_sub_type,
        customer_email=record.customer_email, customer_id=record.customer_id, callback_url=record.callback_url,
        ipn_url=record.ipn_url, metadata=record.metadata, payment_id=record.payment_id or None,
        payment_url=f"{public_url}/pay/{record.id}", qr=qr, created_at=time_of(record.created_at),
        updated_at=time_of(record.updated_at), expires_at=time_of(record.expires_at),
        error_code=record.error_code or None, error_message=record.error_message or None,
    )


def account(record: Account) -> schemas.AccountOut:
    balance = record.credits_posted - record.debits_posted
    return schemas.AccountOut(
        id=public_id(record.id), object="account", currency=record.currency, code=record.code,
        flags={"debits_must_not_exceed_credits": bool(record.flags & AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS),
               "credits_must_not_exceed_debits": bool(record.flags & AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS),
               "history": bool(record.flags & AccountFlag.HISTORY), "closed": bool(record.flags & AccountFlag.CLOSED)},
        debits_pending=record.debits_pending, debits_posted=record.debits_posted,
        credits_pending=record.credits_pending, credits_posted=record.credits_posted, balance=balance,
        available=balance - record.debits_pending, created_at=time_of(record.timestamp),
        metadata=record.metadata or {},
    )


def transfer(record: Transfer) -> schemas.TransferOut:
    return schemas.TransferOut(
        id=public_id(record.id), object="transfer", debit_account_id=public_id(record.debit_account_id),
        credit_account_id=public_id(record.credit_account_id), amount=record.amount, currency=record.currency,
        code=record.code, flags=[name for name, bit in _FLAG_NAMES if record.flags & bit],
        pending_id=public_id(record.pending_id) or None, timeout_s=record.timeout_s,
        created_at=time_of(record.timestamp),
    )


def balance(account_id: str, at: int, record: Balance) -> schemas.BalanceOut:
    return schemas.BalanceOut(account_id, time_of(at), record.debits_pending, record.debits_posted,
                              record.credits_pending, record.credits_posted,
                              record.credits_posted - record.debits_posted)


def customer(record: Customer) -> schemas.CustomerOut:
    return schemas.CustomerOut(record.id, "customer", record.email, record.name, time_of(record.created_at))


def wallet(record: Customer, accounts: list[Account], history: list[Transfer]) -> schemas.WalletOut:
    balances = [schemas.WalletBalance(a.currency, a.credits_posted - a.debits_posted,
                                      a.credits_posted - a.debits_posted - a.debits_pending) for a in accounts]
    return schemas.WalletOut(record.id, "wallet", balances, [transfer(t) for t in history])


# What a payment in requires_action waits for, by payment method: the cardholder at the acquirer's 3-D Secure page,
# or the payer's transfer, which the order's QR code (its image at next_action.url) sets up.
NEXT_ACTIONS = {"card": "redirect_3ds", "qr": "display_qr", "bank_transfer": "display_bank_transfer_qr"}


def payment(record: Payment, token: str = "") -> schemas.PaymentOut:
    card = record.card
    method = schemas.PaymentMethodOut(
        type=record.method,
        card=schemas.CardOut(card.brand, card.last4, card.exp_month, card.exp_year) if card else None,
        customer_id=record.customer_id if record.method == "wallet" else None, token=token or None,
        fingerprint=card.fingerprint or None if card else None)
    next_action = None
    if record.status == "requires_action":
        next_action = schemas.NextAction(NEXT_ACTIONS.get(record.method, "redirect_3ds"), record.next_action_url)
    return schemas.PaymentOut(
        id=record.id, object="payment", order_id=record.order_id or None, status=record.status, amount=record.amount,
        amount_capturable=record.amount_capturable, amount_captured=record.amount_captured,
        amount_refunded=record.amount_refunded, currency=record.currency, capture_method=record.capture_method,
        payment_method=method, next_action=next_action, failure_code=record.failure_code or None,
        failure_message=record.failure_message or None, acquirer=record.acquirer, description=record.description,
        metadata=record.metadata, created_at=time_of(record.created_at), updated_at=time_of(record.updated_at),
    )


def blocklist_entry(record: BlocklistEntry, deleted: bool = False) -> schemas.BlocklistEntryOut:
    return schemas.BlocklistEntryOut(record.id, "blocklist_entry", record.kind, record.value,
                                     record.merchant_id or None, record.reason, time_of(record.created_at), deleted)


def refund(record: Refund) -> schemas.RefundOut:
    return schemas.RefundOut(record.id, "refund", record.payment_id, record.amount, record.currency, record.reason,
                             record.status, time_of(record.created_at))


def payout(record: Payout) -> schemas.PayoutOut:
    return schemas.PayoutOut(record.id, "payout", record.amount, record.currency, record.sub_account_id or None,
                             record.status, record.failure_code or None, time_of(record.created_at),
                             time_of(record.updated_at))


def deposit(record: Deposit) -> schemas.DepositOut:
    next_action = None
    if record.status == "requires_action":
        next_action = schemas.NextAction(NEXT_ACTIONS[record.method], record.next_action_url)
    return schemas.DepositOut(
        id=record.id, object="deposit", status=record.status, amount=record.amount, currency=record.currency,
        customer_id=record.customer_id, payment_id=record.payment_id,
        payment_method=schemas.PaymentMethodOut(type=record.method), next_action=next_action,
        failure_code=record.failure_code or None, failure_message=record.failure_message or None,
        expires_at=time_of(record.expires_at) if record.expires_at else None, created_at=time_of(record.created_at),
        updated_at=time_of(record.updated_at))


def withdrawal(record: Withdrawal) -> schemas.WithdrawalOut:
    return schemas.WithdrawalOut(record.id, "withdrawal", record.status, record.amount, record.currency,
                                 record.customer_id, record.failure_code or None, time_of(record.created_at),
                                 time_of(record.updated_at))


def adjustment(record: Adjustment) -> schemas.AdjustmentOut:
    return schemas.AdjustmentOut(record.id, "adjustment", record.merchant_id, record.customer_id, record.amount,
                                 record.currency, record.reason, time_of(record.created_at))
