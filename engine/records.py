"""Merchants, orders and customers as the engine keeps them, and the commands that change them.

Ids, secrets' hashes and times are chosen outside the engine and arrive inside
the commands, so applying a command is deterministic. Ledger ids owned by a
merchant start with "<merchant id>:", which is also what routes them to a shard.
"""

from typing import Literal

import msgspec

from engine.states import (
    DeliveryStatus,
    DepositStatus,
    OrderStatus,
    PaymentStatus,
    PayoutStatus,
    RefundStatus,
    WithdrawalStatus,
)
from engine.types import TIMESTAMP_MAX, Balance, CreateAccounts, CreateTransfers, Transfer

SYSTEM_MARK = "."  # system account ids contain it; merchant-chosen ids may not


class SubAccount(msgspec.Struct, array_like=True):
    id: str
    name: str
    created_at: int = 0


class DashboardUser(msgspec.Struct, array_like=True):
    email: str
    password_hash: str


class SettlementAccount(msgspec.Struct, kw_only=True):
    """The merchant's own bank account, where its pay-outs go."""

    bank: str
    account_number: str
    account_name: str = ""


class Credential(msgspec.Struct, array_like=True, kw_only=True):
    """One set of a merchant's credentials: secrets come hashed (API key, client secret) or sealed by the edge
    (signing and webhook secrets, which must be recovered to check and make HMACs); empty sealed secrets are the
    ones the edge derives from its gateway key (a merchant's first set)."""

    id: str  # key_...
    api_key_hash: str
    client_secret_hash: str
    sealed_signing_secret: bytes = b""
    sealed_webhook_secret: bytes = b""
    created_at: int = 0
    expires_at: int = 0  # 0: until a rotation sets it
    last_used_at: int = 0


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
    # The first credential set (see credentials): its hashes, and the merchant's client id, which never changes.
    api_key_hash: str = ""
    client_id: str = ""
    client_secret_hash: str = ""
    # Legacy: journals from before credential sets hold these in clear; the first rotation or reported use empties them.
    signing_secret: str = ""
    webhook_secret: str = ""
    sub_accounts: list[SubAccount] = []
    users: list[DashboardUser] = []
    created_at: int = 0
    updated_at: int = 0
    settlement_account: SettlementAccount | None = None
    # Empty for a merchant never rotated: its one set is the derived one its legacy fields above describe.
    credentials: list[Credential] = []


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
    status: OrderStatus = "pending"
    amount_refunded: int = 0
    payment_id: str = ""
    # A payment waiting for the payer's bank transfer quoting this order (a QR or bank transfer payment).
    transfer_payment_id: str = ""
    error_code: str = ""
    error_message: str = ""
    expires_at: int = 0
    created_at: int = 0
    updated_at: int = 0
    invoice_id: str = ""  # the invoice made when the order was paid


class Customer(msgspec.Struct, tag=True, kw_only=True):
    id: str
    merchant_id: str
    email: str
    name: str = ""
    created_at: int = 0


class CardDetails(msgspec.Struct, array_like=True):
    """What may be shown of a card: never its number or CVC."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    # A keyed hash of the number, the same for the same card anywhere on the gateway: what risk rules know it by.
    fingerprint: str = ""


class Payment(msgspec.Struct, tag=True, kw_only=True):
    id: str
    merchant_id: str
    amount: int
    currency: str
    order_id: str = ""
    method: str = "card"  # card | wallet | qr | bank_transfer
    card: CardDetails | None = None
    token_id: str = ""
    customer_id: str = ""  # the paying customer: the wallet's owner for a wallet payment, else the order's customer
    capture_method: str = "automatic"  # automatic | manual
    acquirer: str = "piggybank"
    status: PaymentStatus = "processing"
    amount_capturable: int = 0
    amount_captured: int = 0
    amount_refunded: int = 0
    psp_reference: str = ""
    next_action_url: str = ""
    failure_code: str = ""
    failure_message: str = ""
    description: str = ""
    metadata: dict[str, str] = {}
    # The ledger's pending transfer that holds an authorization, when captured manually.
    authorization_id: str = ""
    callback_ids: list[str] = []
    deadline_at: int = 0
    created_at: int = 0
    updated_at: int = 0
    # What the risk rules know the payer by, besides the card and the customer: the order's email, the payer's IP.
    customer_email: str = ""
    customer_ip: str = ""
    # The deposit this payment funds: its money lands in the customer's wallet, not in the merchant's balance.
    deposit_id: str = ""
    # Its money came (engine time), and the acquirer's settlement file listed it: engine/reconciliations.py.
    captured_at: int = 0
    settled_at: int = 0
    # What its settlement moved from the acquirer's clearing account to the bank's, refunds settled before it less.
    amount_settled: int = 0
    # What chargebacks took back.
    amount_disputed: int = 0
    # The merchant's sub-account the payment's money went to (a static code's), '' for its balance: a refund goes
    # back out of there. Set by the engine only, never from `metadata`, which the merchant writes.
    sub_account_id: str = ""


class BlocklistEntry(msgspec.Struct, tag=True, kw_only=True):
    """What the risk rules refuse: a card fingerprint, an IP address, an email or a customer (of one merchant)."""

    id: str
    kind: str  # card_fingerprint | ip | email | customer
    value: str
    merchant_id: str = ""  # empty: at every merchant
    reason: str = ""
    created_at: int = 0


class Refund(msgspec.Struct, tag=True, kw_only=True):
    id: str
    merchant_id: str
    payment_id: str
    amount: int
    currency: str = ""
    reason: str = ""
    status: RefundStatus = "succeeded"
    created_at: int = 0
    settled_at: int = 0
    # Made once its payment was settled: owed to the acquirer (its `refunds_` account) until a settlement deducts it.
    after_settlement: bool = False


class Payout(msgspec.Struct, tag=True, kw_only=True):
    id: str
    merchant_id: str
    amount: int
    currency: str
    sub_account_id: str = ""
    status: PayoutStatus = "pending"
    failure_code: str = ""
    hold_id: str = ""
    created_at: int = 0
    updated_at: int = 0


class Deposit(msgspec.Struct, tag=True, kw_only=True):
    """A top-up of a customer's wallet, funded by its own payment (`payment_id`): credited when that succeeds."""

    id: str
    merchant_id: str
    customer_id: str
    amount: int
    currency: str
    method: str  # card | qr | bank_transfer
    payment_id: str
    status: DepositStatus = "processing"
    next_action_url: str = ""
    failure_code: str = ""
    failure_message: str = ""
    # A QR or bank transfer deposit waits for its transfer until then (engine time), and fails after.
    expires_at: int = 0
    created_at: int = 0
    updated_at: int = 0


class Withdrawal(msgspec.Struct, tag=True, kw_only=True):
    """Wallet money sent to the customer's bank: held (`hold_id`) until the bank says paid, returned if it fails."""

    id: str
    merchant_id: str
    customer_id: str
    amount: int
    currency: str
    hold_id: str
    status: WithdrawalStatus = "pending"
    failure_code: str = ""
    created_at: int = 0
    updated_at: int = 0


class Adjustment(msgspec.Struct, tag=True, kw_only=True):
    """An operator's manual credit of a wallet, funded from the merchant's `adjustments` account, with its reason."""

    id: str
    merchant_id: str
    customer_id: str
    amount: int
    currency: str
    reason: str
    created_at: int = 0


# Notifications (engine/notifications.py) and invoices (engine/invoices.py)

EventObjectType = Literal["order", "payment", "refund", "payout", "deposit", "withdrawal"]
DeliveryChannel = Literal["webhook", "ipn", "email"]
# What a delivery sends: the event itself (webhook, IPN), or a receipt e-mail for an order paid or a refund.
DeliveryKind = Literal["event", "receipt", "refund_receipt"]
DeliveryOutcome = Literal["delivered", "retry", "dead"]


class EventRecord(msgspec.Struct, tag=True, kw_only=True):
    """Something a merchant hears of: its object as it stood when the command that caused it ended, kept as the
    record's msgpack (`data`, a `Record`), so that a later change of the object changes no event."""

    id: str  # evt_<batch sequence, 12 hex><position in the batch's events, 6 hex>: unique on its shard
    kind: str  # payment.succeeded, order.paid, ... (as the engine Event that caused it; "type" in the API)
    merchant_id: str
    object_id: str
    object_type: EventObjectType
    data: bytes
    created_at: int
    redeliveries: int = 0  # RedeliverEvent calls so far (bounded)


class DeliveryAttempt(msgspec.Struct, array_like=True):
    attempted_at: int  # the notifier's clock, nanoseconds
    status_code: int  # the HTTP or SMTP reply code; 0 when none came (`error` says why)
    error: str
    duration_ms: int


class Delivery(msgspec.Struct, tag=True, kw_only=True):
    """One event (or receipt) to send to one target; the notifier sends those of one (target, ordering_key) in the
    order they were queued."""

    id: str  # whd_<batch sequence, 12 hex><position of the event its making logged (delivery.queued or .dead), 6 hex>
    event_id: str
    merchant_id: str
    channel: DeliveryChannel
    kind: DeliveryKind
    target: str  # a URL (webhook, ipn) or an e-mail address
    ordering_key: str  # the event's object id
    status: DeliveryStatus = "pending"
    attempts: list[DeliveryAttempt] = []  # the latest MAX_ATTEMPTS_KEPT, oldest first
    attempt_count: int = 0  # every attempt ever recorded: the next result must be number attempt_count + 1
    # attempt_count when it was last queued: its retry schedule counts attempts from there.
    queued_after_attempts: int = 0
    replays: int = 0  # times a dead delivery was queued again (bounded)
    # When it was last queued (batch sequence << 24 | position of its delivery.queued event): the pending order.
    queue_position: int = 0
    next_attempt_at: int = 0  # engine nanoseconds; 0 once delivered or dead
    # "backlog_full": made dead, never tried (the shard's pending deliveries were at their cap); "no_webhook_url": the
    # merchant removed its webhook_url while it was pending.
    dead_reason: str = ""
    created_at: int = 0
    updated_at: int = 0


class Invoice(msgspec.Struct, tag=True, kw_only=True):
    """Made in the command that pays an order; numbered per merchant from 1 without gaps."""

    id: str  # inv_<batch sequence, 12 hex><position of the order.paid event, 6 hex>
    merchant_id: str
    number: int
    merchant_name: str
    order_id: str
    order_name: str
    amount: int
    currency: str
    payment_id: str
    payment_method: str  # card | wallet | qr | bank_transfer
    card_brand: str = ""
    card_last4: str = ""
    created_at: int = 0


class Reconciliation(msgspec.Struct, tag=True, kw_only=True):
    """One shard's part of a reconciliation against a provider's settlement file for a day: the ids of the rows it
    matched (and settled), and of each kind of mismatch. Every shard keeps a part under the same id; the edge
    shows them together. engine/reconciliations.py."""

    id: str  # rec_...
    provider: str
    date: str  # YYYY-MM-DD, the file's
    request_hash: str  # of the file: the same id with another file is refused
    rows: int = 0  # the file's rows this shard was given
    matched: list[str] = []
    missing_in_settlement: list[str] = []  # captured or refunded here that day, left out of the file
    missing_in_ledger: list[str] = []  # in the file, unknown to the ledger
    amount_mismatch: list[str] = []  # in both, for another amount or currency
    duplicates: list[str] = []  # listed twice, or settled already
    chargebacks: list[str] = []  # payments the file reports charged back
    fees: dict[str, int] = {}  # by currency: what the acquirer kept, posted to its fees account
    created_at: int = 0


class Archived(msgspec.Struct, tag=True, kw_only=True):
    """What an Archive took out of memory, for the shard's cold store; `more`: another Archive would find more. Events
    pruned past their cap (engine/notifications.py) leave the same way, outside any Archive."""

    before: int
    orders: list[Order] = []
    payments: list[Payment] = []
    refunds: list[Refund] = []
    invoices: list[Invoice] = []
    # Ledger transfers taken off their accounts' statements, and the balances history before the cut-off.
    transfers: list[Transfer] = []
    histories: list[tuple[str, list[Balance]]] = []
    more: bool = False
    payouts: list[Payout] = []
    deposits: list[Deposit] = []
    withdrawals: list[Withdrawal] = []
    adjustments: list[Adjustment] = []
    events: list[EventRecord] = []
    deliveries: list[Delivery] = []


Record = (Merchant | Order | Customer | Payment | Refund | Payout | BlocklistEntry | Deposit | Withdrawal | Adjustment
          | EventRecord | Delivery | Invoice | Reconciliation | Archived)


class Outcome(msgspec.Struct, tag="outcome", omit_defaults=True):
    """What a command did: `ok` with the record as it now stands, or the reason it changed nothing."""

    code: str = "ok"
    record: Record | None = None
    # For ledger commands run under an idempotency key: one code per item.
    codes: list[int] | None = None
    replayed: bool = False
    # For a rate-limited command: when to try again.
    retry_after_s: int = 0
    # For commands on many things at once (delivery results, redelivery, replay): how many it changed, and whether
    # more were left for another call.
    count: int = 0
    has_more: bool = False


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
    settlement_account: SettlementAccount | None = None


class RotateCredentials(msgspec.Struct, tag="rotate_credentials", array_like=True, kw_only=True):
    """A new credential set; the sets live before it keep working `expires_in_s` more seconds (0: revoked now)."""

    merchant_id: str
    credential: Credential
    expires_in_s: int
    # The set whose key or token asked ("": the admin): only the newest live set may rotate, so that a key leaked
    # and rotated away cannot revoke the set that replaced it.
    requested_by: str = ""


class TouchCredentials(msgspec.Struct, tag="touch_credentials", array_like=True):
    """Credential sets used lately, as (merchant id, credential id): their last use becomes the batch's time."""

    uses: list[tuple[str, str]]


class CreateSubAccount(msgspec.Struct, tag="create_sub_account", array_like=True):
    merchant_id: str
    sub_account: SubAccount


class AddDashboardUser(msgspec.Struct, tag="add_dashboard_user", array_like=True):
    merchant_id: str
    user: DashboardUser
    # Set by a login re-hashing a password made with older parameters: replace only while the hash is still this.
    replaces_password_hash: str = ""


class CreateOrder(msgspec.Struct, tag="create_order", array_like=True, kw_only=True):
    order: Order
    # Per client IP, at most `ip_limit` orders in any `ip_window_s` (0: no limit).
    client_ip: str = ""
    ip_limit: int = 0
    ip_window_s: int = 600
    # The order expires this long after the batch that creates it. None: order.expires_at is the instant (journals
    # written before durations).
    expires_in_s: int | None = None


class AdmitOrderIp(msgspec.Struct, tag="admit_order_ip", array_like=True, kw_only=True):
    """One order attempt from a client IP, counted on the shard that keeps the IP's window when the order's merchant
    lives on another: at most `ip_limit` in any `ip_window_s` (0: no limit), as CreateOrder counts them.

    An admitted attempt counts even if its order then fails on the merchant's shard: the limit counts attempts.
    """

    client_ip: str
    ip_limit: int
    ip_window_s: int = 600


class UpdateOrder(msgspec.Struct, tag="update_order", array_like=True, kw_only=True):
    """Fields left None stay as they are."""

    merchant_id: str
    order_id: str
    name: str | None = None
    note: str | None = None
    amount: int | None = None
    expires_at: int | None = None  # journals written before expires_in_s; the edge sends a duration
    expires_in_s: int | None = None  # counted from the batch's time


class CancelOrder(msgspec.Struct, tag="cancel_order", array_like=True):
    merchant_id: str
    order_id: str


class CreateCustomer(msgspec.Struct, tag="create_customer", array_like=True):
    customer: Customer


class MoveWallet(msgspec.Struct, tag="move_wallet", array_like=True, kw_only=True):
    """Legacy: a deposit into (from nothing), or a withdrawal from, a customer's wallet on the merchant's word.

    Nothing sends it any more; journals that hold it still replay to the same state (see Wallets.move_wallet). Those
    journals were all written before Submits had ids: a MoveWallet that comes in a Submit is refused (RETIRED).
    """

    merchant_id: str
    customer_id: str
    transfer_id: str
    amount: int
    currency: str
    withdrawal: bool = False


# Commands only old journals hold, applied on their replay; one that comes in a Submit answers COMMAND_RETIRED.
RETIRED_COMMANDS = (MoveWallet,)
COMMAND_RETIRED = "command_retired"


class PayOrderFromWallet(msgspec.Struct, tag="pay_order_from_wallet", array_like=True, kw_only=True):
    """A wallet pays an order, or (order_id "") the merchant `amount` in `currency`."""

    merchant_id: str
    order_id: str
    customer_id: str
    payment_id: str
    transfer_id: str
    customer_ip: str = ""
    # The edge's risk verdict, as in CreatePayment.
    risk_reason: str = ""
    amount_limits: dict[str, int] = {}
    amount: int = 0  # an order's own amount and currency replace these
    currency: str = ""


class CreatePayment(msgspec.Struct, tag="create_payment", array_like=True, kw_only=True):
    payment: Payment
    # How long the acquirer may take before the payment fails by timeout, or the payer's transfer before a QR or bank
    # transfer payment without an order is cancelled (0: no limit). One for an order waits as long as the order.
    processing_timeout_s: int = 30
    # A new card, encrypted by the edge (envelope encryption; opaque here), kept as payment.token_id.
    sealed_card: bytes = b""
    # The edge's risk verdict: a reason to refuse the payment, and the most its merchant's tier may take by currency
    # (a currency not named has no limit; the engine picks the one of the amount it settles on, an order's).
    # A refused payment is recorded failed (risk_rejected), so the refusal and its reason are journaled.
    risk_reason: str = ""
    amount_limits: dict[str, int] = {}


class VaultedCard(msgspec.Struct, array_like=True):
    merchant_id: str
    card: CardDetails
    sealed: bytes


class ResealedCard(msgspec.Struct, array_like=True):
    token_id: str
    previous: bytes  # the sealed card this replaces: a card that holds anything else is left as it is
    sealed: bytes


class ResealCards(msgspec.Struct, tag="reseal_cards", array_like=True):
    """Vaulted cards sealed again under a new key-encryption key (`paygate rotate-kek`): the new ciphertext comes in
    the command, so replay needs no key."""

    cards: list[ResealedCard]


class RecordPspResult(msgspec.Struct, tag="record_psp_result", array_like=True, kw_only=True):
    """A provider's word on a payment, from its signed callback: applied once per callback id."""

    merchant_id: str
    payment_id: str
    callback_id: str
    result: str  # authorized | requires_action | declined | error
    psp_reference: str = ""
    action_url: str = ""
    failure_code: str = ""
    failure_message: str = ""
    transfer_id: str = ""
    # How long an authorization held for manual capture lasts before it is released.
    hold_timeout_s: int = 7 * 86400
    # The provider whose signed callback this is; it must be the payment's acquirer. Empty: the acquirer's own
    # connector speaking of a payment it was sent.
    acquirer: str = ""
    # The provider's signature of the callback, in one spelling: seen again within the replay window, it is refused.
    signature: str = ""


class ReceiveBankTransfer(msgspec.Struct, tag="receive_bank_transfer", array_like=True, kw_only=True):
    """The bank says money arrived quoting an order (a dynamic QR code or a transfer), which it pays, or a payment
    without an order waiting for it, which it completes, or a merchant or one of its sub-accounts (a static QR
    code), whose balance it credits."""

    merchant_id: str
    order_id: str  # "" for a static code
    callback_id: str
    amount: int
    currency: str
    method: str  # qr | bank_transfer
    payment_id: str
    transfer_id: str
    bank_reference: str = ""
    sub_account_id: str = ""  # a static code's sub-account, "" for the merchant's own balance
    # The provider's signature of the callback, in one spelling: seen again within the replay window, it is refused.
    signature: str = ""
    # A payment without an order that waits for this transfer (the transfer quotes it); order_id is then "".
    quoted_payment_id: str = ""


class CapturePayment(msgspec.Struct, tag="capture_payment", array_like=True, kw_only=True):
    merchant_id: str
    payment_id: str
    transfer_id: str
    amount: int = 0  # 0: all that is capturable


class CancelPayment(msgspec.Struct, tag="cancel_payment", array_like=True, kw_only=True):
    merchant_id: str
    payment_id: str
    transfer_id: str


class CreateRefund(msgspec.Struct, tag="create_refund", array_like=True, kw_only=True):
    refund: Refund
    transfer_id: str
    # A payment archived since (engine/archival.py), and its order, as the shard's cold store holds them: the refund
    # brings them back into memory. Read by the edge from the shard; ignored while the engine holds the payment.
    archived_payment: Payment | None = None
    archived_order: Order | None = None


class CreatePayout(msgspec.Struct, tag="create_payout", array_like=True, kw_only=True):
    payout: Payout


class CreateDeposit(msgspec.Struct, tag="create_deposit", array_like=True, kw_only=True):
    """A deposit and the payment that funds it: a card payment goes to the acquirer as any card payment does; a QR
    or bank transfer one waits for the payer's transfer quoting the deposit."""

    deposit: Deposit
    payment: CreatePayment
    # How long a QR or bank transfer deposit waits for the payer's transfer.
    transfer_window_s: int = 24 * 3600


class ReceiveDepositTransfer(msgspec.Struct, tag="receive_deposit_transfer", array_like=True, kw_only=True):
    """The bank says money arrived quoting a deposit (its signed callback): the deposit's wallet is credited once."""

    merchant_id: str
    deposit_id: str
    callback_id: str
    amount: int
    currency: str
    transfer_id: str
    bank_reference: str = ""
    signature: str = ""


class CreateWithdrawal(msgspec.Struct, tag="create_withdrawal", array_like=True, kw_only=True):
    withdrawal: Withdrawal


class RecordWithdrawalResult(msgspec.Struct, tag="record_withdrawal_result", array_like=True, kw_only=True):
    """The bank's signed word on a withdrawal: paid posts its hold, failed voids it (the money goes back)."""

    merchant_id: str
    withdrawal_id: str
    callback_id: str
    paid: bool
    transfer_id: str
    failure_code: str = ""
    signature: str = ""


class AdjustWallet(msgspec.Struct, tag="adjust_wallet", array_like=True, kw_only=True):
    """An operator's manual credit (admin only at the edge), from the merchant's `adjustments` account."""

    adjustment: Adjustment
    transfer_id: str


class AddToBlocklist(msgspec.Struct, tag="add_to_blocklist", array_like=True):
    entry: BlocklistEntry


class RemoveFromBlocklist(msgspec.Struct, tag="remove_from_blocklist", array_like=True):
    entry_id: str


class RecordPayoutResult(msgspec.Struct, tag="record_payout_result", array_like=True, kw_only=True):
    merchant_id: str
    payout_id: str
    callback_id: str
    paid: bool
    transfer_id: str
    failure_code: str = ""
    # The provider's signature of the callback, in one spelling: seen again within the replay window, it is refused.
    signature: str = ""


class DeliveryResult(msgspec.Struct, array_like=True, kw_only=True):
    """The notifier's word on one attempt: applied only as the delivery's next attempt (`attempt`, from 1), so a
    result sent again changes nothing."""

    delivery_id: str
    attempt: int
    attempted_at: int
    status_code: int
    error: str
    duration_ms: int
    outcome: DeliveryOutcome
    next_attempt_at: int = 0  # for "retry": when to try again (engine nanoseconds)


class RecordDeliveryAttempts(msgspec.Struct, tag="record_delivery_attempts", array_like=True):
    """A batch of the notifier's results (at most MAX_DELIVERY_RESULTS)."""

    results: list[DeliveryResult]


class RedeliverEvent(msgspec.Struct, tag="redeliver_event", array_like=True):
    """New pending deliveries of a merchant's event to its webhook and (order events) the order's IPN URL."""

    merchant_id: str
    event_id: str
    # The event as the shard's cold store holds it, if archived (engine/archival.py): the redelivery brings it back
    # into memory. Read by the edge from the shard; ignored while the engine holds the event.
    archived_event: EventRecord | None = None


class ReplayDeliveries(msgspec.Struct, tag="replay_deliveries", array_like=True, kw_only=True):
    """Queue dead deliveries again, oldest dead first, at most `limit` (MAX_REPLAY_LIMIT); merchant_id "": every
    merchant of the shard (an operator)."""

    merchant_id: str = ""
    status: Literal["dead"] = "dead"
    created_gte: int = 0
    created_lt: int = TIMESTAMP_MAX
    limit: int = 1000


class Archive(msgspec.Struct, tag="archive", array_like=True):
    """End-of-day archival: the records that can change no more and were last changed `age_s` before the batch
    leave memory for the shard's cold store (engine/archival.py)."""

    age_s: int


class SettlementRow(msgspec.Struct, array_like=True):
    """One row of a provider's settlement file: `transaction_id` is the reference we gave it (a payment's or a
    refund's id); `status` is captured, refunded or chargeback; amounts are in minor units."""

    transaction_id: str
    amount: int
    currency: str
    status: str
    settled_at: int = 0  # engine ns, as the file says
    fee: int = 0


class Reconcile(msgspec.Struct, tag="reconcile", array_like=True, kw_only=True):
    """A reconciliation's part on one shard: the file's rows that name this shard's payments and refunds, and (on
    one shard only) those no shard knows."""

    reconciliation_id: str
    provider: str
    date: str  # YYYY-MM-DD
    request_hash: str
    rows: list[SettlementRow]
    unknown: list[SettlementRow] = []
    # The archived payments and refunds the rows name (engine/archival.py), the payments of those refunds and the
    # payments' orders, as the shard's cold store holds them: read by the sender from the shard, so that replay and the
    # replica see the same. A chargeback (or a late settlement) of one brings the payment back into memory with its
    # order; each is ignored while memory holds it.
    archived_payments: list[Payment] = []
    archived_refunds: list[Refund] = []
    archived_orders: list[Order] = []


CommerceCommand = (
    CreateMerchant
    | UpdateMerchant
    | CreateSubAccount
    | AddDashboardUser
    | CreateOrder
    | AdmitOrderIp
    | UpdateOrder
    | CancelOrder
    | CreateCustomer
    | MoveWallet
    | PayOrderFromWallet
    | CreatePayment
    | RecordPspResult
    | ReceiveBankTransfer
    | CapturePayment
    | CancelPayment
    | CreateRefund
    | CreatePayout
    | RecordPayoutResult
    | AddToBlocklist
    | RemoveFromBlocklist
    | CreateDeposit
    | ReceiveDepositTransfer
    | CreateWithdrawal
    | RecordWithdrawalResult
    | AdjustWallet
    | ResealCards
    | RotateCredentials
    | TouchCredentials
    | RecordDeliveryAttempts
    | RedeliverEvent
    | ReplayDeliveries
    | Reconcile
    | Archive
)


class Signed(msgspec.Struct, tag="signed", array_like=True, kw_only=True):
    """A command from a signed request: refused (`signature_replayed`) if the merchant's request with the same signed
    message was seen before `expires_at` (engine time), which the signature's window ends by."""

    merchant_id: str
    message_digest: str
    expires_at: int
    command: CommerceCommand | CreateAccounts | CreateTransfers


class Idempotent(msgspec.Struct, tag="idempotent", array_like=True, kw_only=True):
    """A command under a client's idempotency key: run once; the same key and request answer the first outcome again."""

    merchant_id: str
    key: str
    request_hash: str
    command: CommerceCommand | CreateAccounts | CreateTransfers | Signed


def inner_command(command):
    """The command itself, out of its idempotency key and signature wrappers."""
    if type(command) is Idempotent:
        command = command.command
    return command.command if type(command) is Signed else command


AUTHORIZATION_SUFFIX = ".authorization"


def authorization_transfer_id(merchant_id: str, payment_id: str) -> str:
    """The ledger id of a card authorization's transfer, whoever records the provider's word on it."""
    return f"{merchant_id}:{payment_id}{AUTHORIZATION_SUFFIX}"


# A withdrawal's id: the bank sends withdrawals and payouts alike, and its word names either by this id.
WITHDRAWAL_PREFIX = "wd_"


def payout_result(merchant_id: str, payout_id: str, callback_id: str, paid: bool, failure_code: str = "",
                  signature: str = "") -> "RecordPayoutResult | RecordWithdrawalResult":
    """The command recording the bank's word on a payout, or on a withdrawal (`wd_`), whoever heard it."""
    transfer_id = f"{merchant_id}:{payout_id}.{'paid' if paid else 'returned'}"
    fields = {"merchant_id": merchant_id, "callback_id": callback_id, "paid": paid, "failure_code": failure_code,
              "transfer_id": transfer_id, "signature": signature}
    if payout_id.startswith(WITHDRAWAL_PREFIX):
        return RecordWithdrawalResult(withdrawal_id=payout_id, **fields)
    return RecordPayoutResult(payout_id=payout_id, **fields)


def system_account_id(merchant_id: str, name: str, currency: str) -> str:
    return f"{merchant_id}:{SYSTEM_MARK}{name}{SYSTEM_MARK}{currency}"


def wallet_account_id(merchant_id: str, customer_id: str, currency: str) -> str:
    return f"{merchant_id}:{customer_id}{SYSTEM_MARK}wallet{SYSTEM_MARK}{currency}"
