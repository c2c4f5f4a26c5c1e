"""Wallet money in and out over HTTP: deposits funded by a real payment, withdrawals to the bank, and operators'
adjustments.

A card deposit's payment goes to the acquirer exactly as a card payment does (edge/payments_api.py); a QR or bank
transfer deposit shows the code whose transfer, quoting the deposit, the bank reports in its signed callback. The
wallet is credited by the shard when the money arrives, never by this request.
"""

import re

from aiohttp import web

from edge import payments_api, qr_api, risk, schemas
from edge.errors import not_found
from edge.http import authenticate, body_of, check_currency, ledger_id, merchant_principal, new_id, raise_for, \
    respond, run
from engine import views
from engine.queries import FindCustomer, GetWalletRecord
from engine.records import (
    Adjustment,
    AdjustWallet,
    CreateDeposit,
    CreatePayment,
    CreateWithdrawal,
    Deposit,
    Merchant,
    Payment,
    WITHDRAWAL_PREFIX,
    Withdrawal,
)


async def create_deposit(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.DepositCreate)
    check_currency(fields.currency)
    customer_id = request.match_info["id"]
    method = fields.payment_method
    kind = type(method).__struct_config__.tag
    deposit_id = new_id("dep_", request, merchant.id)
    payment = Payment(id=new_id("pay_", request, deposit_id), merchant_id=merchant.id, amount=fields.amount,
                      currency=fields.currency, method=kind, customer_id=customer_id, acquirer=merchant.acquirer,
                      customer_ip=risk.customer_ip(fields.customer_ip), deposit_id=deposit_id)
    number, sealed, risk_reason, amount_limits = "", b"", "", {}
    if isinstance(method, schemas.CardMethod):
        number, sealed, payment.card, payment.token_id = await payments_api.card_in_hand(request, merchant, method)
        risk_reason, amount_limits = await risk.assess(request, merchant, payment, number)
    else:  # the bank's own checks apply to the payer's transfer
        problem = qr_api.qr_amount_problem(fields.amount, fields.currency, "amount")
        if problem is not None:
            raise problem
        payment.next_action_url = qr_api.deposit_png_url(request, deposit_id)
    deposit = Deposit(id=deposit_id, merchant_id=merchant.id, customer_id=customer_id, amount=fields.amount,
                      currency=fields.currency, method=kind, payment_id=payment.id)
    funding = CreatePayment(payment=payment, processing_timeout_s=request.app["settings"].processing_timeout_s,
                            sealed_card=sealed, risk_reason=risk_reason, amount_limits=amount_limits)
    outcome = await run(request, merchant.id, CreateDeposit(deposit=deposit, payment=funding), body)
    raise_for(outcome, {"token_not_found": "payment_method.token", "payment_method_not_allowed": "payment_method"})
    created = outcome.record
    # A payment the risk rules refused has failed its deposit already: no acquirer hears of it.
    if number and not request.get("replayed") and created.status == "processing":
        payments_api.authorize(request, payment, method, number)
    return respond(request, views.deposit(created))


async def get_deposit(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, views.deposit(await _record(request, merchant, "deposit", request.match_info["id"])))


async def create_withdrawal(request: web.Request) -> web.Response:
    """Holds the wallet money now; the provider follower sends it to the bank, whose answer posts or returns it."""
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.WithdrawalCreate)
    check_currency(fields.currency)
    withdrawal_id = new_id(WITHDRAWAL_PREFIX, request, merchant.id)
    withdrawal = Withdrawal(id=withdrawal_id, merchant_id=merchant.id, customer_id=request.match_info["id"],
                            amount=fields.amount, currency=fields.currency,
                            hold_id=ledger_id(merchant.id, f"{withdrawal_id}.hold"))
    outcome = await run(request, merchant.id, CreateWithdrawal(withdrawal=withdrawal), body)
    raise_for(outcome)
    return respond(request, views.withdrawal(outcome.record))


async def get_withdrawal(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, views.withdrawal(await _record(request, merchant, "withdrawal",
                                                            request.match_info["id"])))


async def create_adjustment(request: web.Request) -> web.Response:
    """An operator's manual credit (admin token only), from the customer's merchant's `adjustments` account."""
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    fields, body = await body_of(request, schemas.AdjustmentCreate)
    check_currency(fields.currency)
    customer_id = request.match_info["id"]
    if not re.fullmatch(r"cus_[a-z0-9]{1,24}", customer_id):
        raise not_found("customer", customer_id)
    answers = await request.app["gateway"].read_everywhere(FindCustomer(customer_id))
    customer = next((answer.record for answer in answers if answer.record is not None), None)
    if customer is None:
        raise not_found("customer", customer_id)
    adjustment_id = new_id("adj_", request, customer.merchant_id)
    adjustment = Adjustment(id=adjustment_id, merchant_id=customer.merchant_id, customer_id=customer.id,
                            amount=fields.amount, currency=fields.currency, reason=fields.reason)
    command = AdjustWallet(adjustment=adjustment, transfer_id=ledger_id(customer.merchant_id, adjustment_id))
    outcome = await run(request, customer.merchant_id, command, body)
    raise_for(outcome, {"reason_required": "reason"})
    return respond(request, views.adjustment(outcome.record))


async def _record(request: web.Request, merchant: Merchant, kind: str, record_id: str):
    record = (await request.app["gateway"].read(merchant.id, GetWalletRecord(merchant.id, kind, record_id))).record
    if record is None:
        raise not_found(kind, record_id)
    return record

