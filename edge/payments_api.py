"""Payments, captures, cancellations and refunds over HTTP, and the providers' signed callbacks.

A card payment is sealed (envelope encryption) before anything reaches a shard;
its number and CVC then go, in memory only, to the acquirer's connector in one
message per batch. The acquirer answers later through a signed callback, which
becomes one engine command, applied once per callback id.
"""

import asyncio
import collections
import time

import msgspec
from aiohttp import web

from actors.connector_wire import Authorization, AuthorizationBatch, CardData, ConnectorClient
from actors.services import CALLBACK_KINDS, PROVIDERS
from edge import cards, qr_api, risk, schemas
from edge.auth import callback_signature
from edge.errors import ApiError, not_found
from edge.http import (
    body_of,
    check_currency,
    check_sub_account,
    ledger_id,
    merchant_principal,
    new_id,
    parse_limit,
    parse_status,
    raise_for,
    read_page,
    respond,
    run,
)
from engine import views
from engine.payments import CALLBACK_REPLAYED
from engine.queries import GetCard, GetOrder, GetPaymentRecord, ListPayments, ListPayouts, ListRefunds
from engine.records import (
    CancelPayment,
    CapturePayment,
    CardDetails,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    Merchant,
    Payment,
    Payout,
    PayOrderFromWallet,
    ReceiveBankTransfer,
    ReceiveDepositTransfer,
    RecordPspResult,
    Refund,
    authorization_transfer_id,
    payout_result,
)
from engine.states import PAYMENT_STATUSES

# How long a QR or bank transfer payment without an order waits for the payer's transfer: an order's default expiry.
TRANSFER_WAIT_S = 900
_sealed_encoder = msgspec.msgpack.Encoder()
_sealed_decoder = msgspec.msgpack.Decoder(cards.SealedCard)


class Authorizations:
    """Sends card authorizations to each provider's connector, one message per event-loop turn."""

    def __init__(self, addresses: dict[str, str], gateway) -> None:
        self.gateway = gateway
        self.clients = {provider: ConnectorClient(address, gateway.key) for provider, address in addresses.items()}
        self.pending: dict[str, list[Authorization]] = collections.defaultdict(list)
        self.flush_scheduled = False

    def send(self, provider: str, authorization: Authorization) -> None:
        if provider not in self.clients:
            asyncio.get_running_loop().create_task(self._fail_unsent([authorization]))
            return
        self.pending[provider].append(authorization)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        pending, self.pending = self.pending, collections.defaultdict(list)
        for provider, items in pending.items():
            if not self.clients[provider].send(AuthorizationBatch(items)):
                asyncio.get_running_loop().create_task(self._fail_unsent(items))

    async def _fail_unsent(self, items: list[Authorization]) -> None:
        """The connector could not take them: the payments fail now rather than at their deadline."""
        for item in items:
            await self.gateway.submit(item.merchant_id, RecordPspResult(
                merchant_id=item.merchant_id, payment_id=item.payment_id, callback_id=f"unsent_{item.payment_id}",
                result="error", failure_code="processing_error", failure_message="the acquirer is unreachable"))

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


# Payments


async def create_payment(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.PaymentCreate)
    return respond(request, await pay(request, merchant, fields, body))


async def pay(request: web.Request, merchant: Merchant, fields: schemas.PaymentCreate,
              body: bytes) -> views.PaymentOut:
    """A payment by any method, as the API creates it (also the hosted payment page's)."""
    payment_id = new_id("pay_", request, merchant.id)
    method = fields.payment_method
    _check_amount_or_order(fields)
    if isinstance(method, schemas.WalletMethod):
        return await _pay_from_wallet(request, merchant, fields, method, payment_id, body)
    if isinstance(method, (schemas.QrMethod, schemas.BankTransferMethod)):
        return await _pay_by_bank_transfer(request, merchant, fields, payment_id, body)
    number, sealed, card, token_id = await card_in_hand(request, merchant, method)
    payment = Payment(
        id=payment_id, merchant_id=merchant.id, amount=fields.amount or 0, currency=fields.currency or "",
        order_id=fields.order_id, method="card", card=card, token_id=token_id,
        capture_method=fields.capture_method, acquirer=merchant.acquirer, description=fields.description,
        metadata=fields.metadata, customer_ip=risk.customer_ip(fields.customer_ip))
    risk_reason, amount_limits = await risk.assess(request, merchant, payment, number)
    command = CreatePayment(payment=payment, processing_timeout_s=request.app["settings"].processing_timeout_s,
                            sealed_card=sealed, risk_reason=risk_reason, amount_limits=amount_limits)
    outcome = await run(request, merchant.id, command, body)
    raise_for(outcome, {"order_not_found": "order_id", "token_not_found": "payment_method.token"})
    created = outcome.record
    # A payment the risk rules refused is failed already: no acquirer hears of it.
    if not request.get("replayed") and created.status == "processing":
        authorize(request, created, method, number)
    # The token the shard stored: a replay under the Idempotency-Key shows the first request's, not this one's.
    return views.payment(created, created.token_id)


def _check_amount_or_order(fields: schemas.PaymentCreate) -> None:
    """Every method pays either an order or an amount in a currency: one of the two, whole."""
    if fields.order_id and (fields.amount is not None or fields.currency is not None):
        raise ApiError(400, "parameter_invalid", "give order_id, or amount and currency, not both: the order sets "
                       "the amount", "amount" if fields.amount is not None else "currency")
    if not fields.order_id and (fields.amount is None or fields.currency is None):
        raise ApiError(400, "parameter_missing", "give order_id, or amount and currency",
                       "amount" if fields.amount is None else "currency")
    if fields.currency:
        check_currency(fields.currency)


async def card_in_hand(request: web.Request, merchant: Merchant,
                       method: schemas.CardMethod) -> tuple[str, bytes, CardDetails, str]:
    """The card a payment names: its number (in this request's memory only), sealed if new, its details with their
    fingerprint, and its token (new, or the saved card's)."""
    if (method.card is None) == (method.token is None):
        raise ApiError(400, "parameter_invalid", "give either card or token", "payment_method")
    number, sealed, card = _card_of(request, method)
    token_id = method.token or cards.new_token_id()
    if method.token:
        vaulted = (await request.app["gateway"].read(merchant.id, GetCard(merchant.id, token_id))).card
        if vaulted is None:
            raise not_found("token", token_id, "payment_method.token")
        card = vaulted.card
        try:
            number = cards.open_card(request.app["card_keys"], _sealed_decoder.decode(vaulted.sealed))
        except cards.CardUnavailable:
            raise ApiError(422, "card_key_unavailable", "this saved card was sealed under a key paygate no longer "
                           "holds: ask for the card again", "payment_method.token") from None
    card = msgspec.structs.replace(card, fingerprint=request.app["secrets"].card_fingerprint(number))
    return number, sealed, card, token_id


def authorize(request: web.Request, payment: Payment, method: schemas.CardMethod, number: str) -> None:
    """Send a card payment just created (and still processing) to its acquirer's connector, in memory only."""
    cvc = method.card.cvc if method.card else ""
    request.app["authorizations"].send(payment.acquirer, Authorization(
        payment.id, payment.merchant_id, payment.amount, payment.currency, payment.capture_method == "automatic",
        CardData(number, payment.card.exp_month, payment.card.exp_year, cvc)))


def _card_of(request: web.Request, method: schemas.CardMethod) -> tuple[str, bytes, CardDetails | None]:
    """A new card checked and sealed; the number stays in this request's memory only."""
    if method.card is None:
        return "", b"", None
    number = cards.normalize_number(method.card.number)
    if number is None or not cards.luhn_valid(number):
        raise ApiError(402, "incorrect_number", "the card number is incorrect", "payment_method.card.number",
                       error_type="card_error")
    sealed = cards.seal(request.app["card_keys"].current, number, method.card.exp_month, method.card.exp_year)
    details = CardDetails(sealed.brand, sealed.last4, sealed.exp_month, sealed.exp_year)
    return number, _sealed_encoder.encode(sealed), details


async def _pay_from_wallet(request, merchant: Merchant, fields, method, payment_id: str,
                           body: bytes) -> views.PaymentOut:
    if fields.capture_method != "automatic":
        raise ApiError(400, "parameter_invalid", "a wallet payment moves the money at once: capture_method must be "
                       "automatic", "capture_method")
    payment = Payment(id=payment_id, merchant_id=merchant.id, amount=fields.amount or 0, currency=fields.currency or "",
                      order_id=fields.order_id, method="wallet", customer_id=method.customer_id,
                      customer_ip=risk.customer_ip(fields.customer_ip))
    risk_reason, amount_limits = await risk.assess(request, merchant, payment)
    command = PayOrderFromWallet(merchant_id=merchant.id, order_id=fields.order_id, customer_id=method.customer_id,
                                 payment_id=payment_id, transfer_id=ledger_id(merchant.id, payment_id),
                                 customer_ip=payment.customer_ip, risk_reason=risk_reason,
                                 amount_limits=amount_limits, amount=payment.amount, currency=payment.currency)
    outcome = await run(request, merchant.id, command, body)
    raise_for(outcome, {"order_not_found": "order_id", "customer_not_found": "payment_method.customer_id"})
    return views.payment(outcome.record)


async def _pay_by_bank_transfer(request, merchant: Merchant, fields, payment_id: str,
                                body: bytes) -> views.PaymentOut:
    """A payment that waits (requires_action) for the payer's transfer quoting its order, or without an order quoting
    the payment itself; next_action shows the code."""
    if fields.capture_method != "automatic":
        raise ApiError(400, "parameter_invalid", "a bank transfer arrives whole: capture_method must be automatic",
                       "capture_method")
    method = type(fields.payment_method).__struct_config__.tag
    if fields.order_id:
        order = (await request.app["gateway"].read(merchant.id, GetOrder(merchant.id, fields.order_id))).record
        if order is None:
            raise not_found("order", fields.order_id, "order_id")
        problem, url = qr_api.order_qr_problem(order, method), qr_api.order_png_url(request, order.id)
    else:
        problem = qr_api.qr_amount_problem(fields.amount, fields.currency, "amount")
        url = qr_api.payment_png_url(request, payment_id)
    if problem is not None:
        raise problem
    payment = Payment(id=payment_id, merchant_id=merchant.id, amount=fields.amount or 0, currency=fields.currency or "",
                      order_id=fields.order_id, method=method, description=fields.description,
                      metadata=fields.metadata, customer_ip=risk.customer_ip(fields.customer_ip), next_action_url=url)
    risk_reason, amount_limits = await risk.assess(request, merchant, payment)
    command = CreatePayment(payment=payment, processing_timeout_s=TRANSFER_WAIT_S, risk_reason=risk_reason,
                            amount_limits=amount_limits)
    outcome = await run(request, merchant.id, command, body)
    raise_for(outcome)
    return views.payment(outcome.record)


async def _record_or_none(request: web.Request, merchant: Merchant, kind: str, record_id: str):
    return (await request.app["gateway"].read(merchant.id, GetPaymentRecord(merchant.id, kind, record_id))).record


async def _record(request: web.Request, merchant: Merchant, kind: str, record_id: str):
    record = await _record_or_none(request, merchant, kind, record_id)
    if record is None:
        raise not_found(kind, record_id)
    return record


async def get_payment(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await payment_of(request, merchant, request.match_info["id"]))


async def payment_of(request: web.Request, merchant: Merchant, payment_id: str) -> views.PaymentOut:
    return views.payment(await _record(request, merchant, "payment", payment_id))


async def list_payments(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await payments_of(request, merchant, request.query))


async def payments_of(request: web.Request, merchant: Merchant, query) -> views.PaymentList:
    """A page of the merchant's payments (of one order: `order_id`), newest first, by the list's query parameters."""
    read = ListPayments(merchant_id=merchant.id, limit=parse_limit(query), status=parse_status(query, PAYMENT_STATUSES),
                        starting_after=query.get("starting_after", "")[:64], order_id=query.get("order_id", "")[:64])
    answer = await _page(request, merchant, read, "payment")
    return views.PaymentList("list", [views.payment(payment) for payment in answer.records], answer.has_more)


async def _page(request: web.Request, merchant: Merchant, read, kind: str):
    """A list's page; its cursor must name a record of this kind of the merchant's."""
    return await read_page(request, merchant.id, read, lambda record_id: GetPaymentRecord(merchant.id, kind, record_id))


async def capture_payment(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.CaptureIn, optional=True)
    return respond(request, await capture(request, merchant, request.match_info["id"], fields, body))


async def capture(request: web.Request, merchant: Merchant, payment_id: str, fields: schemas.CaptureIn,
                  body: bytes) -> views.PaymentOut:
    command = CapturePayment(merchant_id=merchant.id, payment_id=payment_id, amount=fields.amount or 0,
                             transfer_id=ledger_id(merchant.id, f"{payment_id}.capture"))
    outcome = await run(request, merchant.id, command, body)
    raise_for(outcome)
    return views.payment(outcome.record)


async def cancel_payment(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await void(request, merchant, request.match_info["id"], await request.read()))


async def void(request: web.Request, merchant: Merchant, payment_id: str, body: bytes) -> views.PaymentOut:
    """Release an uncaptured authorization."""
    command = CancelPayment(merchant_id=merchant.id, payment_id=payment_id,
                            transfer_id=ledger_id(merchant.id, f"{payment_id}.void"))
    outcome = await run(request, merchant.id, command, body)
    raise_for(outcome)
    return views.payment(outcome.record)


# Refunds


async def create_refund(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.RefundCreate)
    return respond(request, await refund_payment(request, merchant, fields, body))


async def refund_payment(request: web.Request, merchant: Merchant, fields: schemas.RefundCreate,
                         body: bytes) -> views.RefundOut:
    refund_id = new_id("re_", request, merchant.id)
    refund = Refund(id=refund_id, merchant_id=merchant.id, payment_id=fields.payment_id, amount=fields.amount or 0,
                    reason=fields.reason)
    command = CreateRefund(refund=refund, transfer_id=ledger_id(merchant.id, refund_id),
                           **await _archived(request, merchant, fields.payment_id))
    outcome = await run(request, merchant.id, command, body)
    raise_for(outcome, {"payment_not_found": "payment_id"})
    return views.refund(outcome.record)


async def _archived(request: web.Request, merchant: Merchant, payment_id: str) -> dict:
    """The payment and its order as the shard's cold store holds them, if archived (engine/archival.py): the
    refund brings them back into the engine's memory. Nothing for a payment the engine holds."""
    gateway = request.app["gateway"]
    answer = await gateway.read(merchant.id, GetPaymentRecord(merchant.id, "payment", payment_id))
    if not answer.archived:
        return {}
    order = None
    if answer.record.order_id:
        order_answer = await gateway.read(merchant.id, GetOrder(merchant.id, answer.record.order_id))
        order = order_answer.record if order_answer.archived else None
    return {"archived_payment": answer.record, "archived_order": order}


async def list_refunds(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await refunds_of(request, merchant, request.query))


async def refunds_of(request: web.Request, merchant: Merchant, query) -> views.RefundList:
    """A page of one payment's refunds (`payment_id`, required), newest first."""
    payment_id = query.get("payment_id", "")[:64]
    if not payment_id:
        raise ApiError(400, "parameter_missing", "give the payment_id whose refunds to list", "payment_id")
    read = ListRefunds(merchant_id=merchant.id, payment_id=payment_id, limit=parse_limit(query),
                       starting_after=query.get("starting_after", "")[:64])
    answer = await _page(request, merchant, read, "refund")
    return views.RefundList("list", [views.refund(refund) for refund in answer.records], answer.has_more)


async def get_refund(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, views.refund(await _record(request, merchant, "refund", request.match_info["id"])))


# Payouts


async def create_payout(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.PayoutCreate)
    return respond(request, await request_payout(request, merchant, fields, body))


async def request_payout(request: web.Request, merchant: Merchant, fields: schemas.PayoutCreate,
                         body: bytes) -> views.PayoutOut:
    """Holds the balance now; the bank's dispatcher sends it, and the bank's answer posts or returns it."""
    check_currency(fields.currency)
    await check_sub_account(request, merchant, fields.sub_account_id)
    payout_id = new_id("po_", request, merchant.id)
    payout = Payout(id=payout_id, merchant_id=merchant.id, amount=fields.amount, currency=fields.currency,
                    sub_account_id=fields.sub_account_id, hold_id=ledger_id(merchant.id, f"{payout_id}.hold"))
    outcome = await run(request, merchant.id, CreatePayout(payout=payout), body)
    if outcome.code == "insufficient_funds":  # API.md's code for a payout past the balance
        raise ApiError(402, "insufficient_balance", "insufficient balance: it holds less than the payout", "amount",
                       error_type="balance_error")
    raise_for(outcome)
    return views.payout(outcome.record)


async def list_payouts(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await payouts_of(request, merchant, request.query))


async def payouts_of(request: web.Request, merchant: Merchant, query) -> views.PayoutList:
    read = ListPayouts(merchant_id=merchant.id, limit=parse_limit(query),
                       starting_after=query.get("starting_after", "")[:64])
    answer = await _page(request, merchant, read, "payout")
    return views.PayoutList("list", [views.payout(payout) for payout in answer.records], answer.has_more)


async def get_payout(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, views.payout(await _record(request, merchant, "payout", request.match_info["id"])))


# Provider callbacks


async def provider_callback(request: web.Request) -> web.Response:
    """A provider's signed word on a payment. Unsigned, stale or replayed: 401 and nothing changes."""
    provider = request.match_info["provider"]
    secrets = request.app["secrets"]
    body = await request.read()
    header = request.headers.get("Paygate-Signature", "")[:512]
    signature = provider in PROVIDERS and callback_signature(
        secrets.provider_secret(provider), header, body, int(time.time()))
    if not signature:
        raise ApiError(401, "signature_invalid", "the callback is unsigned, wrongly signed or too old")
    callback = schemas.decode(body, schemas.ProviderCallback)
    if callback.kind not in CALLBACK_KINDS[provider]:
        raise ApiError(400, "callback_kind_invalid", f"{provider} sends no {callback.kind} callbacks", "kind")
    if callback.kind == "transfer_received":
        return await _transfer_received(request, callback, signature)
    if callback.kind == "payout":
        return await _payout_result(request, callback, signature)
    if not callback.merchant_id.startswith("mer_") or not callback.result:
        raise ApiError(400, "parameter_invalid", "the callback names no merchant or result", "merchant_id")
    command = RecordPspResult(
        merchant_id=callback.merchant_id, payment_id=callback.payment_id, callback_id=callback.callback_id,
        result=callback.result, psp_reference=callback.psp_reference, action_url=callback.action_url,
        failure_code=callback.failure_code, failure_message=callback.failure_message,
        transfer_id=authorization_transfer_id(callback.merchant_id, callback.payment_id),
        hold_timeout_s=request.app["settings"].authorization_hold_s, acquirer=provider, signature=signature)
    return await _record_callback(request, callback.merchant_id, command)


async def _record_callback(request: web.Request, merchant_id: str, command) -> web.Response:
    """Submit a callback's command. A duplicate is acknowledged (the provider may stop resending); it changed
    nothing. A replay (the very signature again, whichever edge worker saw it first, before a restart too) is 401."""
    outcome = await request.app["gateway"].submit(merchant_id, command)
    if outcome.code == CALLBACK_REPLAYED:
        raise ApiError(401, "replayed", "this signed callback was already received")
    return respond(request, {"received": True, "outcome": outcome.code})


async def _transfer_received(request: web.Request, callback: schemas.ProviderCallback, signature: str) -> web.Response:
    """Money arrived at the bank quoting a QR code's reference: it pays that order, or the payment without an order
    that waits for it, or credits the merchant (or sub-account) a static code names."""
    kind, object_id = qr_api.object_of(callback.reference) or ("", "")
    if kind == "deposit":
        return await _deposit_transfer_received(request, callback, object_id, signature)
    merchant_id, order_id, sub_account_id, quoted_payment_id = "", "", "", ""
    if kind == "order":
        order = await qr_api.find_order(request, object_id)
        merchant_id, order_id = (order.merchant_id, order.id) if order else ("", "")
    elif kind == "payment":
        quoted = await qr_api.find_payment(request, object_id)
        merchant_id, quoted_payment_id = (quoted.merchant_id, quoted.id) if quoted else ("", "")
    elif kind:
        owner = await qr_api.owner_of(request, kind, object_id)
        merchant_id, sub_account_id = (owner.id, object_id if kind == "sub_account" else "") if owner else ("", "")
    if not merchant_id:
        # Nothing here matches the reference: acknowledged, so the bank stops; it stays the bank's to return.
        return respond(request, {"received": True, "outcome": "reference_unknown"})
    payment_id = "pay_" + callback.callback_id.removeprefix("cb_")[:24]
    command = ReceiveBankTransfer(
        merchant_id=merchant_id, order_id=order_id, callback_id=callback.callback_id, amount=callback.amount,
        currency=callback.currency, method="qr", payment_id=payment_id, bank_reference=callback.bank_reference,
        transfer_id=ledger_id(merchant_id, payment_id), sub_account_id=sub_account_id, signature=signature,
        quoted_payment_id=quoted_payment_id)
    return await _record_callback(request, merchant_id, command)


async def _deposit_transfer_received(request: web.Request, callback: schemas.ProviderCallback, deposit_id: str,
                                     signature: str) -> web.Response:
    """Money arrived at the bank quoting a deposit: the deposit's wallet is credited, once."""
    deposit = await qr_api.find_deposit(request, deposit_id)
    if deposit is None:  # acknowledged, so the bank stops; it stays the bank's to return
        return respond(request, {"received": True, "outcome": "reference_unknown"})
    command = ReceiveDepositTransfer(
        merchant_id=deposit.merchant_id, deposit_id=deposit.id, callback_id=callback.callback_id,
        amount=callback.amount, currency=callback.currency, bank_reference=callback.bank_reference,
        transfer_id=ledger_id(deposit.merchant_id, f"{deposit.id}.{callback.callback_id}"), signature=signature)
    return await _record_callback(request, deposit.merchant_id, command)


async def _payout_result(request: web.Request, callback: schemas.ProviderCallback, signature: str) -> web.Response:
    """The bank's word on money sent out: a merchant's payout, or a customer's withdrawal (`wd_`)."""
    if not callback.merchant_id.startswith("mer_"):
        raise ApiError(400, "parameter_invalid", "the callback names no merchant", "merchant_id")
    return await _record_callback(request, callback.merchant_id, payout_result(
        callback.merchant_id, callback.payout_id, callback.callback_id, callback.paid, callback.failure_code,
        signature))
