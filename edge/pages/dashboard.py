"""`/dashboard`: the merchant's pages. Sign in as a dashboard user (the API login's check and lockout); then orders
(search by name, filter by status and date, a page at a time), an order with its payments and refunds and its status
live, the actions on them (refund in full or in part, cancel a pending order, capture or void an authorization),
balances and payouts, and the API keys (never a secret) and webhook settings.

Every action calls the API's own function for it; every form carries the session's CSRF token and a one-time
attempt that is its Idempotency-Key, so a form sent twice acts once.
"""

import asyncio
import datetime
import functools
import re
import urllib.parse

import aiohttp_jinja2
from aiohttp import web

from edge import app as api, credentials_api, deliveries_api, events_api, invoices_api, login, payments_api, schemas
from edge.errors import ApiError
from edge.http import cached_merchant, check_merchant_access
from edge.pages import live
from edge.pages.common import (action_form, checked, csrf_token, end_session, form_of, minor_units, page, redirect,
                               refused, render, secure, sentence, session, signed_in_context, start_session,
                               submitted)
from engine import views
from engine.currencies import CURRENCY_EXPONENTS
from engine.records import Merchant
from engine.states import ORDER_STATUSES

AUDIENCE = "dashboard"
PAGE_SIZE = 20
MAX_PAYMENTS_SHOWN = 50  # an order's attempts on its page
MAX_EVENTS_SHOWN = 30  # an order's events (and its payments' and refunds') on its page
NOTICES = {"refunded": "Refund made.", "cancelled": "Order cancelled.", "captured": "Payment captured.",
           "voided": "Authorization voided.", "payout": "Payout requested.", "redelivered": "Event queued again.",
           "webhook": "Webhook endpoint saved."}
# How long the credentials in use keep working once new ones are made (seconds, as the API's expires_in).
GRACE_CHOICES = (("0", "No, stop them at once"), ("3600", "For an hour"), ("86400", "For a day"),
                 ("604800", "For a week"))
DEFAULT_GRACE = "86400"
WEBHOOK_URL_PROBLEM = ("Enter the endpoint as a web address starting with https:// (or http://), or nothing to "
                       "stop webhooks.")


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/dashboard/login", login_page)
    router.add_post("/dashboard/login", sign_in)
    router.add_post("/dashboard/logout", sign_out)
    router.add_get("/dashboard", orders_page)
    router.add_get("/dashboard/orders/{id}", order_page)
    router.add_get("/dashboard/orders/{id}/live", order_live)
    router.add_post("/dashboard/orders/{id}/cancel", cancel_order)
    router.add_post("/dashboard/payments/{id}/refund", refund)
    router.add_post("/dashboard/payments/{id}/capture", capture)
    router.add_post("/dashboard/payments/{id}/void", void)
    router.add_post("/dashboard/events/{id}/redeliver", redeliver)
    router.add_get("/dashboard/invoices/{id}.pdf", invoice_pdf)
    router.add_get("/dashboard/balances", balances_page)
    router.add_post("/dashboard/payouts", request_payout)
    router.add_get("/dashboard/developers", developers_page)
    router.add_post("/dashboard/developers/webhook", change_webhook)
    router.add_post("/dashboard/developers/api_keys", rotate_credentials)


# Signing in


@page
async def login_page(request: web.Request) -> web.Response:
    if session(request, AUDIENCE) is not None:
        return redirect("/dashboard")
    return render(request, "dashboard_login.html", {"problem": "", "email": "", "next": _next(request.query)})


@page
async def sign_in(request: web.Request) -> web.Response:
    fields = await form_of(request, None)  # no session yet: the same-site check guards this form
    email = str(fields.get("email", "")).strip()

    async def action():
        login.check_login_rate(request)
        credentials, _ = checked(schemas.Login, {"email": email, "password": str(fields.get("password", ""))})
        return await login.signed_in(request, credentials)

    merchant = await refused(action)
    if isinstance(merchant, ApiError):
        response = render(request, "dashboard_login.html", {"problem": _login_problem(merchant), "email": email,
                                                             "next": _next(fields)}, status=merchant.status)
        response.headers.update(merchant.headers)  # Retry-After of a lockout
        return response
    response = redirect(_next(fields))
    start_session(request, response, AUDIENCE, merchant.id)
    return response


def _login_problem(error: ApiError) -> str:
    """Why the sign-in was refused, as the person signing in reads it."""
    if error.code == "login_locked":
        seconds = error.headers.get("Retry-After", "")
        return (f"This account is locked after too many failed sign-ins: try again in {seconds} "
                f"second{'' if seconds == '1' else 's'}.")
    return {401: "Wrong email or password.", 429: "Too many attempts: wait a moment and try again."}.get(
        error.status, "Enter your email and password.")


def _next(source) -> str:
    """Where to go after signing in: a dashboard page, never another site."""
    target = str(source.get("next", ""))
    return target if re.fullmatch(r"/dashboard(/[A-Za-z0-9_/]*)?(\?[A-Za-z0-9_=&%.-]*)?", target) else "/dashboard"


def signed_in(handler):
    """A page of the signed-in merchant: without a live session, the sign-in page (then back here)."""
    @page
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        claims = session(request, AUDIENCE)
        merchant = await cached_merchant(request.app, claims["sub"]) if claims else None
        if merchant is None:
            back = request.path_qs if request.method == "GET" else "/dashboard"
            return redirect("/dashboard/login?" + urllib.parse.urlencode({"next": back}))
        check_merchant_access(request, merchant)  # suspended, or outside its IP allow list: 403
        request["session"], request["csrf_token"] = claims, csrf_token(request, claims)
        return await handler(request, merchant)
    return answer


@signed_in
async def sign_out(request: web.Request, merchant: Merchant) -> web.Response:
    await form_of(request, request["csrf_token"])
    response = redirect("/dashboard/login")
    end_session(request, response, AUDIENCE, request["session"])
    return response


def _show(request: web.Request, merchant: Merchant, template: str, context: dict, status: int = 200) -> web.Response:
    return render(request, template, _context(request, merchant, context), status)


def _context(request: web.Request, merchant: Merchant, context: dict) -> dict:
    return {**signed_in_context(request, NOTICES), "merchant": merchant, **context}


# Orders


@signed_in
async def orders_page(request: web.Request, merchant: Merchant) -> web.Response:
    query = request.query
    filters = {name: query.get(name, "")[:200] for name in ("name", "status", "from", "to")}
    found = await refused(lambda: api.search_orders(request, merchant, _search(filters, query.get("after", ""))))
    orders, has_more = ([], False) if isinstance(found, ApiError) else found
    problem = found.message if isinstance(found, ApiError) else ""
    shown = {name: value for name, value in filters.items() if value}
    next_page = "/dashboard?" + urllib.parse.urlencode({**shown, "after": orders[-1].id}) if has_more else ""
    return _show(request, merchant, "dashboard_orders.html", {
        "section": "orders", "orders": orders, "filters": filters, "statuses": ORDER_STATUSES,
        "next_page": next_page, "first_page": "/dashboard?" + urllib.parse.urlencode(shown) if query.get("after") else "",
        "problem": problem})


def _search(filters: dict[str, str], after: str) -> dict[str, str]:
    """The page's filters as the API's list parameters: dates from and to (inclusive, UTC) as created_gte and
    created_lt."""
    query = {"name": filters["name"], "limit": str(PAGE_SIZE)}
    if filters["status"]:
        query["status"] = filters["status"]
    if after:
        query["starting_after"] = after[:64]
    for name, parameter, days in (("from", "created_gte", 0), ("to", "created_lt", 1)):
        if filters[name]:
            try:
                day = datetime.date.fromisoformat(filters[name]) + datetime.timedelta(days=days)
            except ValueError:
                raise ApiError(400, "parameter_invalid", f"the {name} date must be YYYY-MM-DD", name) from None
            query[parameter] = f"{day.isoformat()}T00:00:00Z"
    return query


@signed_in
async def order_page(request: web.Request, merchant: Merchant) -> web.Response:
    order = await api.order_of(request, merchant, request.match_info["id"])
    return _show(request, merchant, "dashboard_order.html", await _order_context(request, merchant, order))


async def _order_context(request: web.Request, merchant: Merchant, order) -> dict:
    """An order as its page shows it: the order, its payment attempts newest first with each one's refunds, and
    the events about them all with their deliveries (webhooks, IPN, e-mail)."""
    query = {"order_id": order.id, "limit": str(MAX_PAYMENTS_SHOWN)}
    payments = (await payments_api.payments_of(request, merchant, query)).data
    refunded = [payment for payment in payments if payment.amount_refunded]
    # Read side by side: the gateway sends reads made together to the shard as one request.
    listed = await asyncio.gather(*(payments_api.refunds_of(request, merchant, {"payment_id": payment.id,
                                                                                "limit": "100"})
                                    for payment in refunded))
    refunds = {payment.id: page.data for payment, page in zip(refunded, listed)}
    events = await _events_about(request, merchant, [order.id, *(payment.id for payment in payments),
                                                     *(refund.id for page in listed for refund in page.data)])
    deliveries = await asyncio.gather(*(deliveries_api.deliveries_of(request, merchant, {"event_id": event.id})
                                        for event in events))
    state = await live.read_state(request.app["gateway"], order)
    return {"section": "orders", "order": api.order_out(request, merchant, order), "payments": payments,
            "refunds": refunds, "events": list(zip(events, (page.data for page in deliveries))),
            "redeliverable": {event.id for event, page in zip(events, deliveries) if _newest_dead(page.data)},
            "live_url": f"/dashboard/orders/{order.id}/live?since={state.version}"}


def _newest_dead(deliveries: list[views.DeliveryOut]) -> bool:
    """Whether an event's newest delivery on some channel is dead (one made later supersedes it)."""
    newest: dict[tuple[str, str], views.DeliveryOut] = {}
    for delivery in deliveries:  # newest first
        newest.setdefault((delivery.channel, delivery.kind), delivery)
    return any(delivery.status == "dead" for delivery in newest.values())


async def _events_about(request: web.Request, merchant: Merchant, object_ids: list[str]) -> list[views.EventOut]:
    """The newest events about any of these objects, newest first."""
    pages = await asyncio.gather(*(events_api.events_of(request, merchant, {"object_id": object_id,
                                                                           "limit": str(MAX_EVENTS_SHOWN)})
                                   for object_id in object_ids))
    events = sorted((event for page in pages for event in page.data), key=lambda event: (event.created, event.id),
                    reverse=True)
    return events[:MAX_EVENTS_SHOWN]


@signed_in
async def order_live(request: web.Request, merchant: Merchant) -> web.StreamResponse:
    order = await api.order_of(request, merchant, request.match_info["id"])

    async def fragment(state: live.OrderState) -> str:
        context = _context(request, merchant, await _order_context(request, merchant, state.order))
        return aiohttp_jinja2.render_string("dashboard_order_live.html", request, context)

    return await live.stream(request, merchant.id, order.id, request.query.get("since", ""), fragment)


async def _act(request: web.Request, merchant: Merchant, order_id: str, action, done: str) -> web.Response:
    """Run an order's action; back to the order's page with what was done, or with why it was refused."""
    if isinstance(refusal := await refused(action), ApiError):
        order = await api.order_of(request, merchant, order_id)
        context = {**await _order_context(request, merchant, order), "problem": refusal.message}
        return _show(request, merchant, "dashboard_order.html", context, status=refusal.status)
    return redirect(f"/dashboard/orders/{order_id}?done={done}")


@signed_in
async def cancel_order(request: web.Request, merchant: Merchant) -> web.Response:
    await action_form(request, "dashboard")
    order_id = request.match_info["id"]
    return await _act(request, merchant, order_id, lambda: api.cancel(request, merchant, order_id), "cancelled")


async def _payment_action(request: web.Request, merchant: Merchant) -> tuple[dict, views.PaymentOut]:
    fields = await action_form(request, "dashboard")
    payment = await payments_api.payment_of(request, merchant, request.match_info["id"])
    if not payment.order_id:
        raise ApiError(400, "parameter_invalid", "the dashboard acts on the payments of orders")
    return fields, payment


@signed_in
async def refund(request: web.Request, merchant: Merchant) -> web.Response:
    fields, payment = await _payment_action(request, merchant)

    async def action():
        amount = minor_units(str(fields.get("amount", "")), payment.currency)
        wanted, body = checked(schemas.RefundCreate, {"payment_id": payment.id, "reason": str(fields.get("reason", "")),
                                                      **({"amount": amount} if amount is not None else {})})
        await payments_api.refund_payment(request, merchant, wanted, body)

    return await _act(request, merchant, payment.order_id, action, "refunded")


@signed_in
async def capture(request: web.Request, merchant: Merchant) -> web.Response:
    fields, payment = await _payment_action(request, merchant)

    async def action():
        amount = minor_units(str(fields.get("amount", "")), payment.currency)
        wanted, body = checked(schemas.CaptureIn, {"amount": amount} if amount is not None else {})
        await payments_api.capture(request, merchant, payment.id, wanted, body)

    return await _act(request, merchant, payment.order_id, action, "captured")


@signed_in
async def void(request: web.Request, merchant: Merchant) -> web.Response:
    _, payment = await _payment_action(request, merchant)
    return await _act(request, merchant, payment.order_id,
                      lambda: payments_api.void(request, merchant, payment.id, b""), "voided")


@signed_in
async def redeliver(request: web.Request, merchant: Merchant) -> web.Response:
    fields = await action_form(request, "dashboard")
    order_id = str(fields.get("order_id", ""))
    if not re.fullmatch(r"ord_[a-z0-9]{1,24}", order_id):
        raise ApiError(400, "parameter_invalid", "the form names no order", "order_id")
    return await _act(request, merchant, order_id,
                      lambda: events_api.redeliver(request, merchant, request.match_info["id"]), "redelivered")


@signed_in
async def invoice_pdf(request: web.Request, merchant: Merchant) -> web.Response:
    return secure(await invoices_api.invoice_pdf_of(request, merchant, request.match_info["id"]))


# Money


@signed_in
async def balances_page(request: web.Request, merchant: Merchant) -> web.Response:
    return await _balances(request, merchant)


async def _balances(request: web.Request, merchant: Merchant, problem: str = "", status: int = 200) -> web.Response:
    """Available and pending balance per currency (those the merchant has), and the latest payouts."""
    currencies = list(CURRENCY_EXPONENTS)
    accounts = await api.accounts_of(request, merchant, [f".balance.{currency}" for currency in currencies])
    balances = [account for account in accounts if account is not None]
    payouts = (await payments_api.payouts_of(request, merchant, {"limit": str(PAGE_SIZE)})).data
    return _show(request, merchant, "dashboard_balances.html", {
        "section": "balances", "balances": balances, "payouts": payouts, "problem": problem,
        "currencies": [account.currency for account in balances] or ["usd"]}, status)


@signed_in
async def request_payout(request: web.Request, merchant: Merchant) -> web.Response:
    fields = await action_form(request, "dashboard")
    currency = str(fields.get("currency", ""))

    async def action():
        amount = minor_units(str(fields.get("amount", "")), currency)
        wanted, body = checked(schemas.PayoutCreate, {"amount": amount or 0, "currency": currency})
        return await payments_api.request_payout(request, merchant, wanted, body)

    if isinstance(refusal := await refused(action), ApiError):
        return await _balances(request, merchant, refusal.message, refusal.status)
    return redirect("/dashboard/balances?done=payout")


@signed_in
async def developers_page(request: web.Request, merchant: Merchant) -> web.Response:
    return _developers(request, merchant)


def _developers(request: web.Request, merchant: Merchant, problem: str = "", status: int = 200,
                webhook_url: str | None = None, created: views.ApiKeyOut | None = None) -> web.Response:
    """The API keys (never a secret, but those of a set just made), the webhook endpoint and the forms that change
    them."""
    return _show(request, merchant, "dashboard_developers.html", {
        "section": "developers", "api_keys": credentials_api.api_keys_of(merchant).data, "problem": problem,
        "webhook_url": merchant.webhook_url if webhook_url is None else webhook_url, "created": created,
        "grace_choices": GRACE_CHOICES, "default_grace": DEFAULT_GRACE}, status)


@signed_in
async def change_webhook(request: web.Request, merchant: Merchant) -> web.Response:
    fields = await action_form(request, "dashboard")
    change = {"webhook_url": str(fields.get("webhook_url", "")).strip()}
    refusal = await submitted(schemas.MerchantUpdate, change, lambda wanted, body: api.change_merchant(
        request, merchant.id, wanted, body))
    if isinstance(refusal, ApiError):
        problem = WEBHOOK_URL_PROBLEM if refusal.code == "parameter_invalid" else sentence(refusal.message)
        return _developers(request, merchant, problem, refusal.status, webhook_url=change["webhook_url"])
    return redirect("/dashboard/developers?done=webhook")


@signed_in
async def rotate_credentials(request: web.Request, merchant: Merchant) -> web.Response:
    fields = await action_form(request, "dashboard")
    grace = str(fields.get("expires_in", ""))
    if grace not in dict(GRACE_CHOICES):
        raise ApiError(400, "parameter_invalid", "choose how long the credentials in use keep working", "expires_in")
    created = await submitted(schemas.ApiKeyCreate, {"expires_in": int(grace)}, lambda wanted, body: (
        credentials_api.rotate(request, merchant, wanted, body)))
    if isinstance(created, ApiError):
        return _developers(request, merchant, sentence(created.message), created.status)
    # Its secrets are shown in this answer only (as the API's rotation does); the page is never stored (no-store).
    return _developers(request, await cached_merchant(request.app, merchant.id) or merchant, created=created)
