"""`/pay/{order_id}`: the hosted payment page, where the shopper pays an order.

The page shows the order and, while it is pending, a tab per method it takes. A card goes from the form straight to
this gateway (never through the merchant) and is paid by the API's own function, sealed as the API seals cards; the
page never shows it again. The checkout part of the page follows the order live (server-sent events): processing,
the acquirer's 3-D Secure page, the result, and a QR or bank transfer landing. A paid order sends the shopper back to
the order's `callback_url` with its id and status, signed with the merchant's webhook secret.
"""

import hmac
import re
import time
import urllib.parse

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from actors.merchant_secrets import webhook_signature
from edge import app as api, payments_api, qr_api, schemas
from edge.errors import ApiError, not_found
from edge.http import cached_merchant
from edge.limits import SlidingWindow, client_ip
from edge.pages import live, wallet
from edge.pages.common import ATTEMPT, checked, form_of, money, new_attempt, page, redirect, refused, render, seconds_until
from engine.records import Merchant, Order

METHOD_LABELS = {"card": "Card", "qr": "QR code", "bank_transfer": "Bank transfer", "wallet": "Wallet"}
PAID_STATUSES = ("paid", "partially_refunded", "refunded")
EXPIRY = re.compile(r"\s*([0-9]{1,2})\s*/\s*([0-9]{2}|[0-9]{4})\s*")
PAY_ATTEMPTS = 30  # card forms sent per client address and worker, per PAY_WINDOW_S
PAY_WINDOW_S = 60
REDIRECT_AFTER_MS = 2500  # the success page is seen before the shopper goes back to the merchant


def add_routes(app: web.Application) -> None:
    app["pay_attempts"] = SlidingWindow(PAY_ATTEMPTS, PAY_WINDOW_S)
    app.router.add_get("/pay/{order_id}", pay_page)
    app.router.add_post("/pay/{order_id}/card", pay_by_card)
    app.router.add_get("/pay/{order_id}/live", live_checkout)
    app.router.add_post("/pay/{order_id}/wallet/code", wallet_code)
    app.router.add_post("/pay/{order_id}/wallet/sign_in", wallet_sign_in)
    app.router.add_post("/pay/{order_id}/wallet/pay", pay_from_wallet)
    wallet.install(app)


async def order_and_merchant(request: web.Request) -> tuple[Order, Merchant]:
    order_id = request.match_info["order_id"]
    order = await qr_api.find_order(request, order_id)
    merchant = await cached_merchant(request.app, order.merchant_id) if order else None
    if order is None or merchant is None:
        raise not_found("order", order_id)
    return order, merchant


@page
async def pay_page(request: web.Request) -> web.Response:
    order, merchant = await order_and_merchant(request)
    return await show(request, merchant, order)


async def show(request: web.Request, merchant: Merchant, order: Order, method: str = "", problem: str = "",
               wallet_problem: str = "", status: int = 200) -> web.Response:
    """The page as the order stands now; with why the shopper's last form was refused, if it was."""
    state = await live.read_state(request.app["gateway"], order)
    tab = await wallet.tab(request, merchant, order, wallet_problem)
    return render(request, "pay.html", checkout(request, merchant, state, tab, method, problem), status=status)


@page
async def live_checkout(request: web.Request) -> web.StreamResponse:
    order, merchant = await order_and_merchant(request)

    async def fragment(state: live.OrderState) -> str:
        tab = await wallet.tab(request, merchant, state.order)
        return aiohttp_jinja2.render_string("pay_checkout.html", request, checkout(request, merchant, state, tab))

    return await live.stream(request, merchant.id, order.id, request.query.get("since", ""), fragment)


def checkout(request: web.Request, merchant: Merchant, state: live.OrderState, wallet_tab: dict, method: str = "",
             problem: str = "") -> dict:
    """What the page shows of the order now: its summary and the part the shopper acts on (`view`)."""
    order = api.order_out(request, merchant, state.order)
    payment = state.payment
    view = _view(state)
    failure = problem or (payment.failure_message or payment.failure_code if payment and view == "form" and
                          payment.status == "failed" else "")
    methods = [name for name in METHOD_LABELS if name in order.payment_methods and (name != "wallet" or
                                                                                    wallet_tab["offered"])]
    selected = method or request.query.get("method", "")
    attempt = new_attempt()
    back_from_3ds = request.query.get("from") == "3ds"
    return {
        "merchant_name": merchant.name, "order": order, "amount": money(order.amount, order.currency),
        "expires_in_s": seconds_until(order.expires_at), "view": view, "failure": failure,
        "methods": [(name, METHOD_LABELS[name]) for name in methods],
        "selected": selected if selected in methods else (methods[0] if methods else ""),
        "attempt": attempt, "attempt_token": _attempt_token(request, order.id, attempt),
        "transfer": _transfer_details(merchant, state.order), "version": state.version,
        "live_url": f"/pay/{order.id}/live?" + urllib.parse.urlencode(
            {"since": state.version, **({"from": "3ds"} if back_from_3ds else {})}),
        "action_url": _challenge_url(request, payment.next_action_url, order.id) if view == "authenticate" else "",
        "auto_continue": view == "authenticate" and not back_from_3ds,
        "return_url": _return_url(request, merchant, state.order) if view in ("paid", "expired", "cancelled",
                                                                                "failed") else "",
        "redirect_after_ms": REDIRECT_AFTER_MS if view == "paid" else 0, "wallet": wallet_tab,
    }


def _view(state: live.OrderState) -> str:
    """paid | expired | cancelled | failed | exception (the order's end) | processing | authenticate | authorized
    (a card payment on its way) | form (the methods, with why the last attempt failed if it did)."""
    order, payment = state.order, state.payment
    if order.status in PAID_STATUSES:
        return "paid"
    if order.status != "pending":
        return order.status
    if payment is None or payment.method != "card" or payment.status in ("failed", "cancelled"):
        return "form"
    return {"requires_action": "authenticate", "requires_capture": "authorized"}.get(payment.status, "processing")


def _attempt_token(request: web.Request, order_id: str, attempt: str) -> str:
    return request.app["secrets"].form_token(f"pay:{order_id}:{attempt}")


def _challenge_url(request: web.Request, action_url: str, order_id: str) -> str:
    """The acquirer's 3-D Secure page, which sends the shopper back to this page when answered."""
    back = f"{request.app['settings'].public_url}/pay/{order_id}?from=3ds"
    return f"{action_url}{'&' if '?' in action_url else '?'}{urllib.parse.urlencode({'return_url': back})}"


def _return_url(request: web.Request, merchant: Merchant, order: Order) -> str:
    """The order's callback_url with its id and status, signed as a webhook is, the signed body being
    "<order id>.<status>"; '' when the order has none."""
    if not order.callback_url:
        return ""
    now_s = int(time.time())
    secrets = request.app["merchant_secrets"].webhook_secrets(merchant, now_s * 1_000_000_000)
    signature = webhook_signature(secrets, f"{order.id}.{order.status}".encode(), now_s)
    parts = urllib.parse.urlsplit(order.callback_url)
    query = [(name, value) for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if name not in ("order_id", "status", "signature")]
    query += [("order_id", order.id), ("status", order.status), ("signature", signature)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _transfer_details(merchant: Merchant, order: Order) -> dict | None:
    """What a payer's bank transfer quotes to pay the order (the QR code carries the same); None when it cannot."""
    if qr_api.qr_amount_problem(order.amount, order.currency, "amount") is not None:
        return None
    return {"bank": f"paygate test bank ({qr_api.BANK_BIN})", "account_number": qr_api.account_number(merchant.id),
            "account_name": merchant.name, "reference": qr_api.reference_of(order.id, qr_api.ORDER_MARK),
            "amount": money(order.amount, order.currency),
            "qr_image": f"/v1/qr/orders/{order.id}.png" if qr_api.order_qr_problem(order) is None else ""}


async def shopper_form(request: web.Request, order: Order) -> tuple[MultiDictProxy, str]:
    """A form of the payment page, from this site and this page's rendering (its attempt and the attempt's token),
    under the limit per address; its attempt becomes the request's Idempotency-Key (a form sent twice acts once).
    The form, and the shopper's address."""
    fields = await form_of(request, None)
    attempt = str(fields.get("attempt", ""))
    if not ATTEMPT.fullmatch(attempt) or not hmac.compare_digest(
            str(fields.get("attempt_token", "")).encode(), _attempt_token(request, order.id, attempt).encode()):
        raise ApiError(403, "csrf_token_invalid", "this form has expired: open the page again and resend it")
    request["idempotency_key"] = f"pay_page_{attempt}"
    payer = client_ip(request.remote, request.headers.get("X-Forwarded-For"), request.app["settings"].trusted_proxies)
    if request.app["pay_attempts"].hit(payer, time.monotonic()):
        raise ApiError(429, "rate_limited", "too many payment attempts from your address; wait a minute")
    return fields, payer


@page
async def pay_by_card(request: web.Request) -> web.Response:
    order, merchant = await order_and_merchant(request)
    fields, payer = await shopper_form(request, order)

    async def action():
        payment, body = checked(schemas.PaymentCreate, {"order_id": order.id, "customer_ip": payer,
                                                        "payment_method": {"type": "card", "card": _card(fields)}})
        return await payments_api.pay(request, merchant, payment, body)

    # An order no longer pending, or already being paid, shows where it stands instead.
    refusal = await refused(action) if order.status == "pending" else None
    if isinstance(refusal, ApiError) and refusal.code != "payment_in_progress":
        return await show(request, merchant, order, "card", _said(refusal), status=refusal.status)
    return redirect(f"/pay/{order.id}?method=card")


# The wallet tab


@page
async def wallet_code(request: web.Request) -> web.Response:
    order, merchant = await order_and_merchant(request)
    fields, _ = await shopper_form(request, order)
    response = redirect(f"/pay/{order.id}?method=wallet")
    email = str(fields.get("email", ""))
    return await _wallet_step(request, merchant, order,
                              lambda: wallet.send_code(request, merchant, order, email, response), response)


@page
async def wallet_sign_in(request: web.Request) -> web.Response:
    order, merchant = await order_and_merchant(request)
    fields, _ = await shopper_form(request, order)
    response = redirect(f"/pay/{order.id}?method=wallet")
    code = str(fields.get("code", ""))
    return await _wallet_step(request, merchant, order,
                              lambda: wallet.sign_in(request, merchant, order, code, response), response)


@page
async def pay_from_wallet(request: web.Request) -> web.Response:
    order, merchant = await order_and_merchant(request)
    _, payer = await shopper_form(request, order)

    async def action():
        payment, body = checked(schemas.PaymentCreate, wallet.payment(request, order, payer))
        return await payments_api.pay(request, merchant, payment, body)

    return await _wallet_step(request, merchant, order, action, redirect(f"/pay/{order.id}?method=wallet"))


async def _wallet_step(request: web.Request, merchant: Merchant, order: Order, action,
                       response: web.Response) -> web.Response:
    """`response` once `action` is done; else the page again, the wallet tab saying why not."""
    refusal = await refused(action)
    if isinstance(refusal, ApiError):
        return await show(request, merchant, order, "wallet", wallet_problem=_said(refusal), status=refusal.status)
    return response


def _card(fields) -> dict:
    """The card's fields as the API takes them; the number and CVC stay as typed (the API checks them)."""
    match = EXPIRY.fullmatch(str(fields.get("expiry", "")))
    if match is None or not 1 <= int(match.group(1)) <= 12:
        raise ApiError(400, "expiry_invalid", "Enter the expiry date as MM/YY.")
    month, year = int(match.group(1)), int(match.group(2)) % 100 + 2000
    now = time.gmtime()
    if (year, month) < (now.tm_year, now.tm_mon):
        raise ApiError(402, "expired_card", "Your card has expired.")
    return {"number": str(fields.get("number", "")).strip(), "exp_month": month, "exp_year": year,
            "cvc": str(fields.get("cvc", "")).strip(), "holder_name": str(fields.get("holder_name", "")).strip()}


# What the shopper reads for the API's refusals of a card or a wallet payment (the API's own words otherwise).
PROBLEMS = {
    "insufficient_funds": "Your wallet does not hold enough for this order.",
    "incorrect_number": "Your card number is incorrect.",
    "payment_method.card.cvc": "Enter the 3 or 4 digits of your card's CVC.",
    "payment_method.card.number": "Your card number is incorrect.",
    "payment_method.card.holder_name": "The name on the card is too long.",
    "rate_limited": "Too many attempts: wait a minute and try again.",
}


def _said(error: ApiError) -> str:
    return PROBLEMS.get(error.code) or PROBLEMS.get(error.param or "") or error.message
