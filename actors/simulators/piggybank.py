"""piggybank: a simulated card acquirer, a real HTTP program the gateway reaches over loopback.

It authorizes cards by the API's test card numbers, answers each authorization at once with `202
{"psp_reference"}` and gives its verdict later in a signed callback to --callback-url; it serves a 3-D Secure
challenge page (buttons Approve and Decline), keeps in-memory books of captures, voids and refunds (a void also
drops an authorization still pending or awaiting 3-D Secure, which then never calls back), answers status queries
for stuck payments, and serves the daily settlement CSV the gateway reconciles against.

The settlement file for a UTC date lists each capture and refund made that day, by the reference the gateway gave
(`transaction_id`: its payment id, or the refund's `refund_id`), with the fee kept (--fee-bps of a capture plus
--fee-fixed; refunds none); a capture given back whole by a `<payment id>.reversal` refund (the gateway's void of a
payment it had given up on) is left out with its reversal. A test tells it to get the file wrong, until told
otherwise: `PUT /v1/settlement_faults {"omit": [ids], "amounts": {id: amount}, "unknown": [{"transaction_id",
"amount", "currency", "status"?, "date"?}], "chargebacks": [{"transaction_id", "amount", "date"?}]}` (a date
defaults to today, UTC; a chargeback costs --chargeback-fee); `DELETE /v1/settlement_faults` clears them.

Test cards (any other Luhn-valid number is authorized; a Luhn-invalid one is 402 incorrect_number):
    4242424242424242  authorized
    4000000000000002  declined, card_declined
    4000000000009995  declined, insufficient_funds
    4000000000003220  requires_action, with action_url = the 3-D Secure page, which then decides
    4000000000000119  the authorization request answers 500 processing_error, every time, no callback
    4000000000000036  202, then never any callback

The full card number and the CVC are never logged or stored: only brand and last4 per psp_reference.
Everything is bounded: request bodies (--max-body), records (--max-records, oldest evicted), queued callbacks and
their retries. State lives in memory only and is lost on restart.

    python -m actors.simulators.piggybank --host 127.0.0.1 --port P --callback-url URL --secret-file PATH
"""

import dataclasses
import datetime
import html
import logging
import re
import secrets
import sys
import time
import urllib.parse

from aiohttp import web

from actors.simulators import settlement, simhttp
from actors.simulators.callbacks import Outbox
from actors.simulators.settlement import rfc3339
from actors.simulators.simhttp import Invalid, error

log = logging.getLogger("paygate.simulators.piggybank")

DECLINES = {
    "4000000000000002": ("card_declined", "The card was declined."),
    "4000000000009995": ("insufficient_funds", "The card has insufficient funds."),
}
THREE_D_SECURE = "4000000000003220"
PROCESSING_ERROR = "4000000000000119"
SILENT = "4000000000000036"
# The published test numbers: their outcomes are the API's contract, so the risk rules' attempt counts spare them
# (as a PSP's test mode does); the block list still applies.
TEST_CARDS = frozenset({"4242424242424242", *DECLINES, THREE_D_SECURE, PROCESSING_ERROR, SILENT})
VOIDABLE = ("authorized", "pending", "requires_action")
AUTHENTICATION_FAILED = ("authentication_failed", "The cardholder failed 3-D Secure authentication.")
CARD_DIGITS = re.compile(r"[0-9]{12,19}")
CVC = re.compile(r"[0-9]{3,4}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# (brand, prefix length, lowest prefix, highest prefix), first match wins
BRANDS = (("visa", 1, 4, 4), ("mastercard", 2, 51, 55), ("mastercard", 4, 2221, 2720), ("amex", 2, 34, 34),
          ("amex", 2, 37, 37), ("discover", 4, 6011, 6011), ("discover", 2, 65, 65), ("jcb", 4, 3528, 3589),
          ("unionpay", 2, 62, 62))
MAX_RETURN_URL_CHARS = 2048
MAX_REFUNDS = 100  # per payment
REVERSAL_SUFFIX = ".reversal"


def luhn_valid(digits: str) -> bool:
    if not CARD_DIGITS.fullmatch(digits):
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def brand(digits: str) -> str:
    for name, length, low, high in BRANDS:
        if low <= int(digits[:length]) <= high:
            return name
    return "unknown"


@dataclasses.dataclass(slots=True)
class Authorization:
    psp_reference: str
    payment_id: str
    merchant_id: str
    amount: int
    currency: str
    brand: str
    last4: str
    capture: bool
    status: str  # pending | authorized | declined | requires_action | cancelled (voided before its verdict)
    failure_code: str = ""
    failure_message: str = ""
    action_url: str = ""
    amount_captured: int = 0
    amount_refunded: int = 0
    captured_at: float = 0.0
    voided: bool = False
    # refund id -> (amount, when): each is a row of its day's settlement file
    refunds: dict = dataclasses.field(default_factory=dict)
    created_at: float = dataclasses.field(default_factory=time.time)

    def same_request(self, merchant_id: str, amount: int, currency: str, last4: str, capture: bool) -> bool:
        return (self.merchant_id, self.amount, self.currency, self.last4, self.capture) == (
            merchant_id, amount, currency, last4, capture)

    def view(self) -> dict:
        view = {"psp_reference": self.psp_reference, "payment_id": self.payment_id, "merchant_id": self.merchant_id,
                "status": self.status, "amount": self.amount, "currency": self.currency,
                "card": {"brand": self.brand, "last4": self.last4}, "capture": self.capture,
                "amount_captured": self.amount_captured, "amount_refunded": self.amount_refunded,
                "voided": self.voided, "created_at": rfc3339(self.created_at),
                "captured_at": rfc3339(self.captured_at) if self.captured_at else None}
        for name in ("failure_code", "failure_message", "action_url"):
            if getattr(self, name):
                view[name] = getattr(self, name)
        return view

    def callback(self) -> dict:
        payload = {"kind": "authorization", "payment_id": self.payment_id, "merchant_id": self.merchant_id,
                   "psp_reference": self.psp_reference, "result": self.status}
        for name in ("failure_code", "failure_message", "action_url"):
            if getattr(self, name):
                payload[name] = getattr(self, name)
        return payload

    def authorize(self) -> None:
        self.status = "authorized"
        self.action_url = ""
        if self.capture:
            self.amount_captured = self.amount
            self.captured_at = time.time()

    def decline(self, code: str, message: str) -> None:
        self.status, self.failure_code, self.failure_message, self.action_url = "declined", code, message, ""


class Piggybank:
    def __init__(self, outbox: Outbox, public_url: str, max_records: int, fees: settlement.Fees) -> None:
        self.outbox = outbox
        self.public_url = public_url.rstrip("/")
        self.fees = fees
        self.faults = settlement.Faults()
        self.authorizations = simhttp.BoundedStore(max_records)
        self.by_payment: dict[tuple[str, str], str] = {}  # (merchant_id, payment_id) -> psp_reference

    def routes(self) -> list:
        return [
            web.get("/healthz", self.healthz),
            web.post("/v1/authorizations", self.authorize),
            web.get("/v1/authorizations", self.find),
            web.get("/v1/authorizations/{psp_reference}", self.status),
            web.post("/v1/captures", self.capture),
            web.post("/v1/voids", self.void),
            web.post("/v1/refunds", self.refund),
            web.get("/3ds/{psp_reference}", self.challenge_page),
            web.post("/3ds/{psp_reference}", self.challenge_answer),
            web.get("/psp/piggybank/settlements/{date}.csv", self.settlements),
            web.put("/v1/settlement_faults", self.set_faults),
            web.delete("/v1/settlement_faults", self.clear_faults),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return simhttp.json_response({"status": "ok", "service": "piggybank", "records": len(self.authorizations),
                                      "callbacks": self.outbox.stats()})

    # --- authorizations ---------------------------------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.Response:
        body = await simhttp.json_body(request)
        payment_id = simhttp.text_id(body, "payment_id")
        merchant_id = simhttp.text_id(body, "merchant_id")
        amount = simhttp.amount(body)
        currency = simhttp.currency(body)
        capture = body.get("capture", True)
        if not isinstance(capture, bool):
            raise Invalid("capture", "capture must be true or false")
        card = body.get("card")
        if not isinstance(card, dict):
            raise Invalid("card", "card must be an object with number, exp_month, exp_year and cvc")
        number = card.get("number")
        if not isinstance(number, str):
            raise Invalid("card.number", "card.number must be a string of digits")
        exp_month, exp_year, cvc = card.get("exp_month"), card.get("exp_year"), card.get("cvc")
        if type(exp_month) is not int or not 1 <= exp_month <= 12:
            raise Invalid("card.exp_month", "card.exp_month must be an integer from 1 to 12")
        if type(exp_year) is not int or not 0 <= exp_year <= 9999:
            raise Invalid("card.exp_year", "card.exp_year must be an integer year")
        if cvc not in (None, "") and (not isinstance(cvc, str) or not CVC.fullmatch(cvc)):
            # absent or "" is allowed: a card charged by token has no CVC (the gateway never stores one)
            raise Invalid("card.cvc", "card.cvc must be 3 or 4 digits, or absent")
        digits = number.replace(" ", "").replace("-", "")
        del number, cvc, card, body["card"]  # only brand and last4 outlive this check
        if not luhn_valid(digits):
            return error(402, "incorrect_number", "The card number is incorrect.")
        if digits == PROCESSING_ERROR:
            log.info("authorization for %s refused: processing_error (card ...%s)", payment_id, digits[-4:])
            return error(500, "processing_error", "The acquirer could not process the card; try again.")

        psp_reference = self.by_payment.get((merchant_id, payment_id))
        existing = self.authorizations.get(psp_reference) if psp_reference else None
        if existing is not None:  # a retried request: the same reference, and no second callback
            if not existing.same_request(merchant_id, amount, currency, digits[-4:], capture):
                return error(409, "payment_id_reused", "payment_id was already authorized with other details")
            return simhttp.json_response({"psp_reference": existing.psp_reference, "status": existing.status},
                                         status=202)

        record = Authorization(psp_reference="pb_" + secrets.token_hex(12), payment_id=payment_id,
                               merchant_id=merchant_id, amount=amount, currency=currency, brand=brand(digits),
                               last4=digits[-4:], capture=capture, status="pending")
        if digits in DECLINES:
            record.decline(*DECLINES[digits])
        elif digits == THREE_D_SECURE:
            record.status = "requires_action"
            record.action_url = f"{self.public_url}/3ds/{record.psp_reference}"
        elif digits != SILENT:
            record.authorize()
        if record.status != "pending":
            self.outbox.send(record.callback())  # OutboxFull (503) before anything is stored
        self.remember(record)
        log.info("authorization %s for %s: %s %s ...%s -> %s", record.psp_reference, payment_id, record.brand,
                 currency, record.last4, record.status if digits != SILENT else "no callback")
        return simhttp.json_response({"psp_reference": record.psp_reference, "status": "pending"}, status=202)

    def remember(self, record: Authorization) -> None:
        self.by_payment[(record.merchant_id, record.payment_id)] = record.psp_reference
        for _, evicted in self.authorizations.put(record.psp_reference, record):
            self.by_payment.pop((evicted.merchant_id, evicted.payment_id), None)

    def lookup(self, psp_reference: str) -> Authorization | None:
        return self.authorizations.get(psp_reference) if isinstance(psp_reference, str) else None

    async def status(self, request: web.Request) -> web.Response:
        psp_reference = request.match_info["psp_reference"]
        record = self.lookup(psp_reference)
        if record is None:
            return simhttp.json_response({"psp_reference": psp_reference, "status": "unknown"}, status=404)
        return simhttp.json_response(record.view())

    async def find(self, request: web.Request) -> web.Response:
        """`GET /v1/authorizations?merchant_id=&payment_id=`: the status when the 202 (and its reference) was lost."""
        query = dict(request.query)
        payment_id = simhttp.text_id(query, "payment_id")
        merchant_id = simhttp.text_id(query, "merchant_id")
        record = self.lookup(self.by_payment.get((merchant_id, payment_id)))
        if record is None:
            return simhttp.json_response({"payment_id": payment_id, "status": "unknown"}, status=404)
        return simhttp.json_response(record.view())

    # --- captures, voids, refunds ------------------------------------------------------------------------------

    async def target(self, request: web.Request) -> tuple[dict, Authorization | None]:
        body = await simhttp.json_body(request)
        return body, self.lookup(simhttp.text_id(body, "psp_reference"))

    @staticmethod
    def ok(record: Authorization) -> web.Response:
        return simhttp.json_response({"status": "ok", "psp_reference": record.psp_reference,
                                      "amount_captured": record.amount_captured,
                                      "amount_refunded": record.amount_refunded, "voided": record.voided,
                                      "captured_at": rfc3339(record.captured_at) if record.captured_at else None})

    async def capture(self, request: web.Request) -> web.Response:
        """Captures once, all or part of the authorization (amount absent: all); a repeat of the same capture is ok."""
        body, record = await self.target(request)
        if record is None:
            return error(404, "unknown_reference", "no such psp_reference")
        amount = simhttp.amount(body, required=False) or record.amount
        if record.amount_captured:
            if amount == record.amount_captured:
                return self.ok(record)
            return error(409, "already_captured", "the authorization was already captured")
        if record.status != "authorized" or record.voided:
            return error(409, "not_capturable", f"the authorization is {'voided' if record.voided else record.status}")
        if amount > record.amount:
            return error(409, "amount_too_large", "the capture is larger than the authorization")
        record.amount_captured, record.captured_at = amount, time.time()
        log.info("captured %s: %d %s", record.psp_reference, amount, record.currency)
        return self.ok(record)

    async def void(self, request: web.Request) -> web.Response:
        """Releases an uncaptured authorization, or drops one still undecided; voiding twice is ok."""
        _, record = await self.target(request)
        if record is None:
            return error(404, "unknown_reference", "no such psp_reference")
        if not record.voided:
            if record.amount_captured:
                return error(409, "already_captured", "a captured payment is refunded, not voided")
            if record.status not in VOIDABLE:
                return error(409, "not_voidable", f"the authorization is {record.status}")
            if record.status != "authorized":  # dropped before its verdict: no callback follows, ever
                record.status, record.action_url = "cancelled", ""
            record.voided = True
            log.info("voided %s", record.psp_reference)
        return self.ok(record)

    async def refund(self, request: web.Request) -> web.Response:
        """Refunds part or all (amount absent: the rest) of what was captured; an optional `refund_id` makes a
        retried refund count once."""
        body, record = await self.target(request)
        if record is None:
            return error(404, "unknown_reference", "no such psp_reference")
        refund_id = simhttp.text_id(body, "refund_id", required=False)
        if refund_id and refund_id in record.refunds:
            return self.ok(record)
        if not record.amount_captured:
            return error(409, "not_captured", "only a captured payment can be refunded")
        amount = simhttp.amount(body, required=False) or record.amount_captured - record.amount_refunded
        if amount <= 0 or record.amount_refunded + amount > record.amount_captured:
            return error(409, "amount_too_large", "refunds would exceed the captured amount")
        if len(record.refunds) >= MAX_REFUNDS:
            return error(409, "too_many_refunds", f"at most {MAX_REFUNDS} refunds per payment")
        record.refunds[refund_id or f"{record.psp_reference}.refund{len(record.refunds)}"] = (amount, time.time())
        record.amount_refunded += amount
        log.info("refunded %s: %d %s", record.psp_reference, amount, record.currency)
        return self.ok(record)

    # --- 3-D Secure ----------------------------------------------------------------------------------------------

    @staticmethod
    def return_url(request: web.Request, form=None) -> str:
        url = request.query.get("return_url") or (form.get("return_url") if form is not None else None) or ""
        if not isinstance(url, str) or len(url) > MAX_RETURN_URL_CHARS:
            return ""
        parts = urllib.parse.urlsplit(url)
        return url if parts.scheme in ("http", "https") and parts.netloc else ""

    async def challenge_page(self, request: web.Request) -> web.Response:
        record = self.lookup(request.match_info["psp_reference"])
        if record is None:
            return page(404, "Unknown authentication", "<p>There is no such authentication.</p>")
        if record.status != "requires_action":
            return page(409, "3-D Secure", f"<p>This authentication is already finished: "
                                           f"{html.escape(record.status)}.</p><p>You can close this window.</p>")
        action = f"/3ds/{urllib.parse.quote(record.psp_reference)}"
        if return_url := self.return_url(request):
            action += "?" + urllib.parse.urlencode({"return_url": return_url})
        money = f"{record.amount} {record.currency.upper()} (minor units)"
        content = (f"<p>piggybank test issuer. Confirm the payment of <strong>{html.escape(money)}</strong> "
                   f"to merchant <code>{html.escape(record.merchant_id)}</code> with your "
                   f"{html.escape(record.brand)} card ending in {html.escape(record.last4)}.</p>"
                   f'<form method="post" action="{html.escape(action)}">'
                   '<button type="submit" name="outcome" value="complete">Approve</button> '
                   '<button type="submit" name="outcome" value="fail">Decline</button>'
                   "</form>")
        return page(200, "3-D Secure", content)

    async def challenge_answer(self, request: web.Request) -> web.Response:
        form = await request.post()
        outcome = form.get("outcome")
        if outcome not in ("complete", "fail"):
            return page(400, "3-D Secure", "<p>outcome must be complete or fail.</p>")
        record = self.lookup(request.match_info["psp_reference"])
        if record is None:
            return page(404, "Unknown authentication", "<p>There is no such authentication.</p>")
        if record.status != "requires_action":
            return page(409, "3-D Secure", f"<p>This authentication is already finished: "
                                           f"{html.escape(record.status)}.</p><p>You can close this window.</p>")
        before = dataclasses.replace(record)
        if outcome == "complete":
            record.authorize()
        else:
            record.decline(*AUTHENTICATION_FAILED)
        try:
            self.outbox.send(record.callback())
        except Exception:  # OutboxFull: nothing changed, the page can be answered again
            for field in dataclasses.fields(record):
                setattr(record, field.name, getattr(before, field.name))
            raise
        log.info("3-D Secure %s for %s: %s", outcome, record.psp_reference, record.status)
        if return_url := self.return_url(request, form):
            raise web.HTTPSeeOther(return_url)
        return page(200, "3-D Secure", f"<p>Authentication {'completed' if outcome == 'complete' else 'failed'}."
                                       "</p><p>You can close this window.</p>")

    # --- settlement ------------------------------------------------------------------------------------------------

    async def settlements(self, request: web.Request) -> web.Response:
        """The captures and refunds made on the UTC date, one CSV row each, as the faults a test asked for say."""
        text = request.match_info["date"]
        try:
            if not DATE.fullmatch(text):
                raise ValueError
            day = datetime.date.fromisoformat(text)
        except ValueError:
            return error(400, "invalid_request", "the date must be YYYY-MM-DD", "date")
        rows = settlement.rows_of(self.authorizations.values(), day, self.fees, REVERSAL_SUFFIX)
        return web.Response(text=settlement.csv_text(self.faults.apply(rows, day)), content_type="text/csv",
                            charset="utf-8",
                            headers={"Content-Disposition": f'inline; filename="piggybank-{day.isoformat()}.csv"'})

    async def set_faults(self, request: web.Request) -> web.Response:
        self.faults = settlement.Faults.parse(await simhttp.json_body(request), self.currency_of, self.fees)
        return simhttp.json_response({"status": "ok"})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults = settlement.Faults()
        return simhttp.json_response({"status": "ok"})

    def currency_of(self, payment_id: str) -> str:
        record = next((record for record in self.authorizations.values() if record.payment_id == payment_id), None)
        return record.currency if record is not None else ""


def page(status: int, title: str, content: str) -> web.Response:
    document = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>{content}</body></html>")
    return web.Response(status=status, text=document, content_type="text/html", charset="utf-8")


def build(options) -> web.Application:
    outbox = simhttp.outbox_from(options)
    app = simhttp.application(options, outbox)
    public_url = options.public_url or f"http://{options.host}:{options.port}"
    fees = settlement.Fees(options.fee_bps, options.fee_fixed, options.chargeback_fee)
    app.add_routes(Piggybank(outbox, public_url, options.max_records, fees).routes())
    return app


def main(argv: list[str] | None = None) -> None:
    parser = simhttp.parser("python -m actors.simulators.piggybank", "A simulated card acquirer (see the module docstring).")
    parser.add_argument("--public-url", default="",
                        help="base URL for 3-D Secure links (default http://HOST:PORT)")
    parser.add_argument("--fee-bps", type=simhttp.int_in(0, 10_000), default=290,
                        help="the fee kept of a capture, in hundredths of a percent, 0..10000 (default 290)")
    parser.add_argument("--fee-fixed", type=simhttp.int_in(0, 100_000), default=30,
                        help="the fee kept per capture, in minor units, 0..100000 (default 30)")
    parser.add_argument("--chargeback-fee", type=simhttp.int_in(0, 100_000), default=1500,
                        help="the fee kept per chargeback, in minor units, 0..100000 (default 1500)")
    options = parser.parse_args(argv)
    simhttp.run(build(options), options, "piggybank")


if __name__ == "__main__":
    main(sys.argv[1:])
