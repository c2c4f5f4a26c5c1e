"""The payment page's wallet tab: the customer an order names signs in with a one-time code sent to their e-mail,
then pays from their wallet by the API's own wallet payment.

The code is never stored. The page keeps, in a short cookie of the order's page alone, a signed token naming the
order, the customer and an HMAC of the code under the gateway key. A wrong code counts against the customer as a
failed dashboard login counts against its account (edge/limits.py LoginLockouts, shared by every worker), so guessing
stops long before six digits run out; a right one becomes a wallet session for this order's page, for a while.
"""

import secrets as random_tokens
import time

from aiohttp import web

from actors.mail import MailSender, sign_in_code
from edge import app as api
from edge.errors import ApiError
from edge.limits import SlidingWindow
from edge.pages.common import money, set_token_cookie
from engine.records import Merchant, Order

CODE_COOKIE, SESSION_COOKIE = "paygate_wallet_code", "paygate_wallet"
CODE_AUDIENCE, SESSION_AUDIENCE = "wallet_code", "wallet"
CODE_VALID_S = 600
SESSION_S = 900
CODE_DIGITS = 6
CODES_SENT = 3  # per customer and worker, per CODES_WINDOW_S: nobody floods a customer's mailbox from this page
CODES_WINDOW_S = 600


def install(app: web.Application) -> None:
    app["wallet_codes_sent"] = SlidingWindow(CODES_SENT, CODES_WINDOW_S)


def offered(request: web.Request, order: Order) -> bool:
    """The order takes wallet payments from a customer it names, and codes can be mailed."""
    return bool("wallet" in order.payment_methods and order.customer_id and request.app["settings"].smtp_url)


async def tab(request: web.Request, merchant: Merchant, order: Order, problem: str = "") -> dict:
    """What the wallet tab shows: whether it is offered, the customer's e-mail half hidden, whether a code was sent,
    and once signed in, what the wallet holds in the order's currency."""
    if order.status != "pending" or not offered(request, order):
        return {"offered": False}
    customer = await api.customer_of(request, merchant, order.customer_id)
    signed_in = _token_subject(request, order, SESSION_COOKIE, SESSION_AUDIENCE) == customer.id
    available = 0
    if signed_in:
        wallet = await api.wallet_of(request, merchant, customer)
        available = next((entry.available for entry in wallet.balances if entry.currency == order.currency), 0)
    return {"offered": True, "email": _hidden(customer.email), "problem": problem, "signed_in": signed_in,
            "code_sent": _token_subject(request, order, CODE_COOKIE, CODE_AUDIENCE) is not None,
            "available": money(available, order.currency), "enough": available >= order.amount}


async def send_code(request: web.Request, merchant: Merchant, order: Order, response: web.StreamResponse) -> None:
    """Mail the customer a new code, and keep its proof in the page's cookie on `response`."""
    customer = await _customer(request, merchant, order)
    if request.app["wallet_codes_sent"].hit(customer.id, time.monotonic()):
        raise ApiError(429, "rate_limited", "A code was sent a few times already: use the last one, or wait a while.")
    code = f"{random_tokens.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    message = sign_in_code(f"code-{random_tokens.token_hex(8)}", merchant.name, merchant.email, customer.email, code,
                           CODE_VALID_S, time.time_ns())
    sent = await MailSender(request.app["settings"].smtp_url).send(message, customer.email)
    if not sent.delivered:
        raise ApiError(503, "mail_unavailable", "The code could not be sent just now. Please try again.")
    token = request.app["issuer"].issue(f"{customer.id} {_proof(request, order, customer.id, code)}", CODE_AUDIENCE,
                                        CODE_VALID_S, int(time.time()))
    set_token_cookie(request, response, CODE_COOKIE, _path(order), token, CODE_VALID_S)


async def sign_in(request: web.Request, merchant: Merchant, order: Order, code: str,
                  response: web.StreamResponse) -> None:
    """The code's customer signed in on `response`, or 401 (a wrong or old code) or 429 (locked out for now)."""
    customer = await _customer(request, merchant, order)
    lockouts, account, now_s = request.app["login_lockouts"], f"wallet:{merchant.id}:{customer.id}", time.time()
    if lockouts.wait_s(account, now_s):
        raise ApiError(429, "login_locked", "Too many wrong codes: wait a moment, then try again.")
    lockouts.failed(account, now_s)  # counted first, so codes racing on one customer cannot all be tried
    subject = _token_subject(request, order, CODE_COOKIE, CODE_AUDIENCE) or ""
    if subject != f"{customer.id} {_proof(request, order, customer.id, code.strip())}":
        raise ApiError(401, "code_invalid", "That code is not the one we sent, or it is too old.")
    lockouts.succeeded(account)
    token = request.app["issuer"].issue(customer.id, SESSION_AUDIENCE, SESSION_S, int(time.time()))
    set_token_cookie(request, response, SESSION_COOKIE, _path(order), token, SESSION_S)
    response.del_cookie(CODE_COOKIE, path=_path(order))


def payment(request: web.Request, order: Order, payer: str) -> dict:
    """The API's wallet payment of the order by its signed-in customer; 401 when nobody is signed in."""
    customer_id = _token_subject(request, order, SESSION_COOKIE, SESSION_AUDIENCE)
    if customer_id != order.customer_id:
        raise ApiError(401, "wallet_signed_out", "Sign in to your wallet again.")
    return {"order_id": order.id, "customer_ip": payer, "payment_method": {"type": "wallet", "customer_id": customer_id}}


async def _customer(request: web.Request, merchant: Merchant, order: Order):
    if order.status != "pending" or not offered(request, order):
        raise ApiError(409, "wallet_not_offered", "This order cannot be paid from a wallet now.")
    return await api.customer_of(request, merchant, order.customer_id)


def _token_subject(request: web.Request, order: Order, cookie: str, audience: str) -> str | None:
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
    return f"{name[:1]}•••@{domain}"
