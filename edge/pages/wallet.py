"""The payment page's wallet tab: a customer of the merchant signs in with a one-time code sent to their e-mail, then
pays from their wallet by the API's own wallet payment. An order that names its customer mails that customer; any
other order that takes wallet payments first asks the shopper for the e-mail address of their wallet.

The code is never stored. The page keeps, in a short cookie of the order's page alone, a signed token holding an
HMAC of the order, the customer and the code under the gateway key, and the address the shopper typed (never a
customer's address the shopper did not type). Whether a typed address is a customer's the page never tells: it
answers the same either way, and mails the code in the background, so that neither the answer nor its time differs (a
code mailed to nobody can never be typed right). A wrong code counts against the customer (or the typed address) as a
failed dashboard login counts against its account (edge/limits.py LoginLockouts, shared by every worker), so guessing
stops long before six digits run out; a right one becomes a wallet session for this order's page, for a while.
"""

import asyncio
import contextlib
import hmac
import logging
import secrets as random_tokens
import time

from aiohttp import web

from actors.mail import MailSender, sign_in_code
from edge import app as api, schemas
from edge.errors import ApiError
from edge.limits import SlidingWindow
from edge.pages.common import checked, money, set_token_cookie
from engine.records import Merchant, Order

log = logging.getLogger("paygate.edge")
CODE_COOKIE, SESSION_COOKIE = "paygate_wallet_code", "paygate_wallet"
CODE_AUDIENCE, SESSION_AUDIENCE = "wallet_code", "wallet"
CODE_VALID_S = 600
SESSION_S = 900
CODE_DIGITS = 6
CODES_SENT = 3  # per customer (or typed address) and worker, per CODES_WINDOW_S: nobody floods a mailbox from here
CODES_WINDOW_S = 600
MAX_MAILS_SENDING = 64  # codes on their way to the mail server, per worker


def install(app: web.Application) -> None:
    app["wallet_codes_sent"] = SlidingWindow(CODES_SENT, CODES_WINDOW_S)
    app["wallet_mails"] = set()
    app.on_shutdown.append(_stop_mails)


async def _stop_mails(app: web.Application) -> None:
    for task in list(app["wallet_mails"]):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def offered(request: web.Request, order: Order) -> bool:
    """The order takes wallet payments, and codes can be mailed."""
    return bool("wallet" in order.payment_methods and request.app["settings"].smtp_url)


async def tab(request: web.Request, merchant: Merchant, order: Order, problem: str = "") -> dict:
    """What the wallet tab shows: whether it is offered and asks for an address; the address a code goes to, half
    hidden; whether a code was sent; and once signed in, what the wallet holds in the order's currency."""
    if order.status != "pending" or not offered(request, order):
        return {"offered": False}
    customer_id = _session_customer_id(request, order)
    # Only a customer the order names or who signed in: whether a typed address is a customer's stays untold.
    customer = await api.customer_of(request, merchant, customer_id or order.customer_id) \
        if customer_id or order.customer_id else None
    sent = _code_token(request, order)
    typed_email = sent[1] if sent else ""
    available = 0
    if customer_id:
        wallet = await api.wallet_of(request, merchant, customer)
        available = next((entry.available for entry in wallet.balances if entry.currency == order.currency), 0)
    return {"offered": True, "asks_email": not order.customer_id, "typed_email": typed_email,
            "email": _hidden(customer.email if customer else typed_email), "problem": problem,
            "signed_in": bool(customer_id), "code_sent": sent is not None,
            "available": money(available, order.currency), "enough": available >= order.amount}


async def send_code(request: web.Request, merchant: Merchant, order: Order, typed_email: str,
                    response: web.StreamResponse) -> None:
    """Mail a new code to the order's customer, or to the customer with the typed address if there is one; keep its
    proof in the page's cookie on `response`."""
    _check_offered(request, order)
    if len(request.app["wallet_mails"]) >= MAX_MAILS_SENDING:
        raise ApiError(503, "mail_unavailable", "Codes cannot be sent just now. Please try again in a minute.")
    if order.customer_id:
        typed_email, customer = "", await api.customer_of(request, merchant, order.customer_id)
    else:
        typed_email = _address(typed_email or (_code_token(request, order) or ("", ""))[1])
        customer = await api.customer_with_email(request, merchant, typed_email)
    sender = customer.id if order.customer_id else typed_email.lower()
    if request.app["wallet_codes_sent"].hit(f"{merchant.id} {sender}", time.monotonic()):
        raise ApiError(429, "rate_limited", "A code was sent a few times already: use the last one, or wait a while.")
    code = f"{random_tokens.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    if customer is not None:
        _mail(request, sign_in_code(f"code-{random_tokens.token_hex(8)}", merchant.name, merchant.email,
                                    customer.email, code, CODE_VALID_S, time.time_ns()), customer.email)
    proof = _proof(request, order, customer.id if customer else "", code)
    token = request.app["issuer"].issue(f"{proof} {typed_email}", CODE_AUDIENCE, CODE_VALID_S, int(time.time()))
    set_token_cookie(request, response, CODE_COOKIE, _path(order), token, CODE_VALID_S)


def _address(email: str) -> str:
    """A typed e-mail address as the API takes a customer's, or 400."""
    try:
        return checked(schemas.CustomerCreate, {"email": email.strip()})[0].email
    except ApiError:
        raise ApiError(400, "email_invalid", "Enter the e-mail address of your wallet, such as ann@example.com.",
                       "email") from None


def _mail(request: web.Request, message: bytes, recipient: str) -> None:
    """Send the message in the background: the shopper's answer does not wait for the mail server."""
    sender = MailSender(request.app["settings"].smtp_url)

    async def send() -> None:
        sent = await sender.send(message, recipient)
        if not sent.delivered:
            log.warning("a wallet code was not mailed: %s", sent.error or sent.status_code)

    mails: set = request.app["wallet_mails"]
    task = asyncio.get_running_loop().create_task(send())
    mails.add(task)
    task.add_done_callback(mails.discard)


async def sign_in(request: web.Request, merchant: Merchant, order: Order, code: str,
                  response: web.StreamResponse) -> None:
    """The code's customer signed in on `response`, or 401 (a wrong or old code) or 429 (locked out for now)."""
    _check_offered(request, order)
    proof, typed_email = _code_token(request, order) or ("", "")
    if not proof or not (order.customer_id or typed_email):  # no code asked for from this page (or long ago)
        raise ApiError(401, "code_invalid", "That code is too old: ask for a new one.")
    if order.customer_id:
        customer = await api.customer_of(request, merchant, order.customer_id)
    else:
        customer = await api.customer_with_email(request, merchant, typed_email)
    lockouts, now_s = request.app["login_lockouts"], time.time()
    account = f"wallet:{merchant.id}:{customer.id if customer else typed_email.lower()}"
    if lockouts.wait_s(account, now_s):
        raise ApiError(429, "login_locked", "Too many wrong codes: wait a moment, then try again.")
    lockouts.failed(account, now_s)  # counted first, so codes racing on one customer cannot all be tried
    if customer is None or not hmac.compare_digest(proof, _proof(request, order, customer.id, code.strip())):
        raise ApiError(401, "code_invalid", "That code is not the one we sent, or it is too old.")
    lockouts.succeeded(account)
    token = request.app["issuer"].issue(f"{order.id} {customer.id}", SESSION_AUDIENCE, SESSION_S, int(time.time()))
    set_token_cookie(request, response, SESSION_COOKIE, _path(order), token, SESSION_S)
    response.del_cookie(CODE_COOKIE, path=_path(order))


def payment(request: web.Request, order: Order, payer: str) -> dict:
    """The API's wallet payment of the order by its signed-in customer; 401 when nobody is signed in."""
    customer_id = _session_customer_id(request, order)
    if not customer_id:
        raise ApiError(401, "wallet_signed_out", "Sign in to your wallet again.")
    return {"order_id": order.id, "customer_ip": payer, "payment_method": {"type": "wallet", "customer_id": customer_id}}


def _check_offered(request: web.Request, order: Order) -> None:
    if order.status != "pending" or not offered(request, order):
        raise ApiError(409, "wallet_not_offered", "This order cannot be paid from a wallet now.")


def _session_customer_id(request: web.Request, order: Order) -> str:
    """The customer signed in to pay this order (the one it names, if it names one), else ""."""
    order_id, _, customer_id = (_token_subject(request, SESSION_COOKIE, SESSION_AUDIENCE) or "").partition(" ")
    if order_id != order.id or (order.customer_id and customer_id != order.customer_id):
        return ""
    return customer_id


def _code_token(request: web.Request, order: Order) -> tuple[str, str] | None:
    """The proof of the code last sent from this order's page, and the address typed for it ("" if none)."""
    subject = _token_subject(request, CODE_COOKIE, CODE_AUDIENCE)
    if subject is None:
        return None
    proof, _, typed_email = subject.partition(" ")
    return proof, typed_email


def _token_subject(request: web.Request, cookie: str, audience: str) -> str | None:
    token = request.cookies.get(cookie, "")
    claims = request.app["issuer"].verify(token, audience, int(time.time())) if token else None
    return claims["sub"] if claims else None


def _proof(request: web.Request, order: Order, customer_id: str, code: str) -> str:
    return request.app["secrets"].form_token(f"wallet_code:{order.id}:{customer_id}:{code}")


def _path(order: Order) -> str:
    return f"/pay/{order.id}"


def _hidden(email: str) -> str:
    """An e-mail address the customer recognizes and an onlooker cannot read whole: "a•••@example.com"."""
    name, _, domain = email.partition("@")
    return f"{name[:1]}•••@{domain}" if email else ""
