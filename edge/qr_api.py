"""QR codes: EMVCo merchant-presented payloads (static and dynamic) and their PNG images.

A dynamic code quotes its order (62/01 and 62/08: "O" + the order id's hex),
a payment without an order ("P" + its hex) or a deposit ("D" + its hex), with
its amount; a static one quotes its merchant ("M" + the merchant id's hex) or
sub-account ("S" + its hex). A transfer may quote that or the id itself
("ord_..."): both pay the same. The simulated bank pays what a transfer quotes,
through its signed callback.
"""

import functools
import hashlib
import io
import re

import segno
from aiohttp import web

from edge import schemas
from edge.cache import MISSING, LruCache
from edge.errors import ApiError, not_found
from edge.http import body_of, cached_merchant, check_sub_account, merchant_principal, respond
from engine import views
from engine.emvco import MAX_AMOUNT_LENGTH, MerchantAccount, MerchantQr, build_payload, format_amount
from engine.payments import BANK_METHODS
from engine.queries import FindDeposit, FindOrder, FindPayment, GetMerchant
from engine.records import Deposit, Merchant, Order, Payment

BANK_BIN = "970400"  # the simulated bank's routing number
COUNTRY = "VN"
CITY = "HANOI"
ORDER_MARK, PAYMENT_MARK, MERCHANT_MARK, SUB_ACCOUNT_MARK, DEPOSIT_MARK = "O", "P", "M", "S", "D"
# A compact reference's first letter -> what it names, and the prefix of that kind of id.
REFERENCE_KINDS = {ORDER_MARK: ("order", "ord_"), PAYMENT_MARK: ("payment", "pay_"),
                   MERCHANT_MARK: ("merchant", "mer_"), SUB_ACCOUNT_MARK: ("sub_account", "sub_"),
                   DEPOSIT_MARK: ("deposit", "dep_")}
PNG_SCALE = 6
PNG_CACHE_SIZE = 1024  # images of a few kB each
ORDER_PAYLOADS_CACHED = 4096


def account_number(merchant_id: str) -> str:
    """The merchant's (simulated) account at the bank, stable for its id."""
    return str(int.from_bytes(hashlib.blake2b(merchant_id.encode(), digest_size=8).digest(), "big"))[:12].zfill(12)


def reference_of(object_id: str, mark: str) -> str:
    return mark + object_id.partition("_")[2]


def object_of(reference: str) -> tuple[str, str] | None:
    """("order" | "payment" | "merchant" | "sub_account" | "deposit", id) for a reference a transfer quotes:
    the compact form
    this gateway's QR codes carry ("O" + the order id's hex), or the id itself ("ord_..."), which a payer may quote
    instead."""
    mark = next((mark for mark, (_, prefix) in REFERENCE_KINDS.items() if reference.startswith(prefix)), "")
    compact = reference_of(reference, mark) if mark else reference
    if len(compact) < 2 or compact[0] not in REFERENCE_KINDS or not re.fullmatch(r"[a-z0-9]{1,24}", compact[1:]):
        return None
    kind, prefix = REFERENCE_KINDS[compact[0]]
    return kind, prefix + compact[1:]


def payload_for(merchant: Merchant, quoted: Order | Payment | None, sub_account_id: str = "") -> str:
    """A dynamic code for the order (or the payment without one) it quotes, else a static one for the sub-account,
    else for the merchant."""
    # Tag 62's fields hold at most 25 characters and "ord_" + 24 hex is 28: the code quotes "O" + the hex (object_of).
    if quoted:
        mark = ORDER_MARK if isinstance(quoted, Order) else PAYMENT_MARK
        return _payload(merchant, reference_of(quoted.id, mark), quoted.amount, quoted.currency)
    if sub_account_id:
        return _payload(merchant, reference_of(sub_account_id, SUB_ACCOUNT_MARK), None, "vnd")
    return _payload(merchant, reference_of(merchant.id, MERCHANT_MARK), None, "vnd")


def deposit_payload(merchant: Merchant, deposit: Deposit) -> str:
    """A dynamic code for a deposit: the payer's transfer quoting it tops up the customer's wallet."""
    return _payload(merchant, reference_of(deposit.id, DEPOSIT_MARK), deposit.amount, deposit.currency)


def _payload(merchant: Merchant, reference: str, amount: int | None, currency: str) -> str:
    """A dynamic code (with its amount) or a static one (`amount` None, the payer chooses) quoting `reference`."""
    qr = MerchantQr(
        dynamic=amount is not None,
        merchant_account=MerchantAccount(BANK_BIN, account_number(merchant.id)),
        currency_numeric=schemas.CURRENCY_NUMBERS.get(currency, "704"),
        country=COUNTRY,
        merchant_name=_ascii(merchant.name, 25) or "MERCHANT",
        merchant_city=CITY,
        amount=None if amount is None else format_amount(amount, schemas.CURRENCY_EXPONENTS[currency]),
        bill_reference=reference,
        purpose=reference,
    )
    return build_payload(qr)


def qr_amount_problem(amount: int, currency: str, param: str) -> ApiError | None:
    """Why a QR code cannot carry this amount (None: it can)."""
    if currency not in schemas.CURRENCY_NUMBERS:
        return ApiError(400, "currency_not_supported", f"QR payments take {sorted(schemas.CURRENCY_NUMBERS)}", param)
    if len(format_amount(amount, schemas.CURRENCY_EXPONENTS[currency])) > MAX_AMOUNT_LENGTH:
        return ApiError(400, "qr_amount_too_large", f"a QR code's amount has at most {MAX_AMOUNT_LENGTH} characters",
                        param)
    return None


def order_qr_problem(order: Order, method: str = "qr") -> ApiError | None:
    """Why the order cannot be paid now by a transfer its dynamic code sets up (None: it can), by `method`."""
    if order.status != "pending":
        return ApiError(409, "order_not_pending", f"the order is {order.status}", "order_id")
    if method not in order.payment_methods:
        return ApiError(400, "payment_method_not_allowed", f"the order does not take {method} payments", "order_id")
    return qr_amount_problem(order.amount, order.currency, "order_id")


def order_qr(merchant: Merchant, order: Order) -> str | None:
    """The order's dynamic payload while a QR code can pay it."""
    if order_qr_problem(order):
        return None
    return _order_payload(merchant.id, merchant.name, order.id, order.amount, order.currency)


@functools.lru_cache(maxsize=ORDER_PAYLOADS_CACHED)
def _order_payload(merchant_id: str, merchant_name: str, order_id: str, amount: int, currency: str) -> str:
    # Every order shown carries its payload (~50 us to build): an order read again costs a lookup.
    merchant = Merchant(id=merchant_id, name=merchant_name, email="")
    return payload_for(merchant, Order(id=order_id, merchant_id=merchant_id, name="", amount=amount, currency=currency))


def _ascii(text: str, limit: int) -> str:
    return "".join(character for character in text if " " <= character <= "~")[:limit].strip()


async def create_dynamic(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, _ = await body_of(request, schemas.DynamicQrCreate)
    order = await find_order(request, fields.order_id)
    if order is None or order.merchant_id != merchant.id:
        raise not_found("order", fields.order_id, "order_id")
    problem = order_qr_problem(order)
    if problem is not None:
        raise problem
    return respond(request, views.QrOut(payload_for(merchant, order), order_png_url(request, order.id)))


def order_png_url(request: web.Request, order_id: str) -> str:
    return f"{request.app['settings'].public_url}/v1/qr/orders/{order_id}.png"


def payment_png_url(request: web.Request, payment_id: str) -> str:
    return f"{request.app['settings'].public_url}/v1/qr/payments/{payment_id}.png"


async def create_static(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, _ = await body_of(request, schemas.StaticQrCreate)
    sub_account_id = fields.sub_account_id
    await check_sub_account(request, merchant, sub_account_id)
    url = f"{request.app['settings'].public_url}/v1/qr/merchants/{merchant.id}.png"
    if sub_account_id:
        url += f"?sub_account_id={sub_account_id}"
    return respond(request, views.QrOut(payload_for(merchant, None, sub_account_id), url))


async def order_png(request: web.Request) -> web.Response:
    """Public, as the hosted payment page shows it: it holds nothing the order's payer may not see."""
    order = await find_order(request, request.match_info["id"])
    payload = None if order is None else order_qr(await cached_merchant(request.app, order.merchant_id), order)
    if payload is None:  # no such order, or none a QR code can pay now
        raise not_found("order", request.match_info["id"])
    return _png(request, payload)


async def payment_png(request: web.Request) -> web.Response:
    """Public, as an order's: the code of a payment without an order while it waits for the payer's transfer."""
    payment = await find_payment(request, request.match_info["id"])
    if payment is None or payment.order_id or payment.status != "requires_action" or payment.method not in BANK_METHODS:
        raise not_found("payment", request.match_info["id"])
    return _png(request, payload_for(await cached_merchant(request.app, payment.merchant_id), payment))


def deposit_png_url(request: web.Request, deposit_id: str) -> str:
    return f"{request.app['settings'].public_url}/v1/qr/deposits/{deposit_id}.png"


async def deposit_png(request: web.Request) -> web.Response:
    """Public, as the payer is shown it; only while the deposit waits for its transfer."""
    deposit = await find_deposit(request, request.match_info["id"])
    if deposit is None or deposit.status != "requires_action" or deposit.method == "card":
        raise not_found("deposit", request.match_info["id"])
    return _png(request, deposit_payload(await cached_merchant(request.app, deposit.merchant_id), deposit))


async def merchant_png(request: web.Request) -> web.Response:
    merchant_id = request.match_info["id"]
    merchant = await cached_merchant(request.app, merchant_id) if merchant_id.startswith("mer_") else None
    if merchant is None:
        raise not_found("merchant", merchant_id)
    sub_account_id = request.query.get("sub_account_id", "")
    await check_sub_account(request, merchant, sub_account_id)
    return _png(request, payload_for(merchant, None, sub_account_id))


def png_cache() -> LruCache:
    """Rendered images by payload: the public image routes draw each code once, not once per request."""
    return LruCache(PNG_CACHE_SIZE)


def _png(request: web.Request, payload: str) -> web.Response:
    cache: LruCache = request.app["png_cache"]
    body = cache.get(payload)
    if body is MISSING:
        image = io.BytesIO()
        segno.make(payload, error="m", micro=False).save(image, kind="png", scale=PNG_SCALE)
        body = image.getvalue()
        cache.put(payload, body)
    return web.Response(body=body, content_type="image/png")


async def owner_of(request: web.Request, kind: str, object_id: str) -> Merchant | None:
    """The merchant a static code's reference names, itself or through one of its sub-accounts."""
    if kind == "merchant":
        return await cached_merchant(request.app, object_id)
    answers = await request.app["gateway"].read_everywhere(GetMerchant(sub_account_id=object_id))
    return next((answer.record for answer in answers if answer.record is not None), None)


async def find_deposit(request: web.Request, deposit_id: str) -> Deposit | None:
    return await _find_anywhere(request, "dep_", deposit_id, FindDeposit)


async def find_order(request: web.Request, order_id: str) -> Order | None:
    return await _find_anywhere(request, "ord_", order_id, FindOrder)


async def find_payment(request: web.Request, payment_id: str) -> Payment | None:
    return await _find_anywhere(request, "pay_", payment_id, FindPayment)


async def _find_anywhere(request: web.Request, prefix: str, object_id: str, query: type):
    """The object of that id on whichever shard holds it; an id of another shape names nothing."""
    if not re.fullmatch(prefix + r"[a-z0-9]{1,24}", object_id):
        return None
    answers = await request.app["gateway"].read_everywhere(query(object_id))
    return next((answer.record for answer in answers if answer.record is not None), None)
