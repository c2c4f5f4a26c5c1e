"""The connector interface: what the gateway asks of a payment service provider, and what it hears back.

One module per provider subclasses `Connector` (actors/psp_piggybank.py, actors/psp_bank.py) and is named in
`CONNECTORS`; a connector actor (actors/connectors.py) runs the one its name picks. What a provider does not offer
answers `Failed`, so adding a real PSP means one new module and one line in `CONNECTORS`.

Requests and answers are msgspec Structs, and every call answers rather than raises for the provider's trouble:

    Accepted      the provider took it (an authorization's verdict may still follow in a signed callback)
    Declined      the provider said no, for good (a card decline, a refused capture): asking again will not help
    Failed        no usable answer: errors and timeouts after the bounded retries, or an operation not offered
    StatusAnswer  what the provider knows of a payment or a payout ("unknown" when nothing)

`HttpConnector` holds what HTTP providers share: one session, a bound on requests in flight, and retries of 5xx,
429, connection errors and timeouts with bounded exponential back-off and jitter. Request bodies may hold a card
number: they are never logged.

May import engine types and aiohttp; never the edge, never Ray.
"""

import asyncio
import importlib
import random
from typing import Annotated

import aiohttp
import msgspec

from actors.connector_wire import Authorization

MAX_ANSWER_BYTES = 64 * 1024
MAX_CODE_CHARS = 64

# What a status query may answer, for a payment...
PENDING = "pending"  # the provider has not decided yet
AUTHORIZED = "authorized"
DECLINED = "declined"
REQUIRES_ACTION = "requires_action"
CANCELLED = "cancelled"
# ...and for a payout
PAID = "paid"
FAILED = "failed"
# ...and for either, when the provider has no record of it
UNKNOWN = "unknown"


# Requests


# `psp_reference` in a follow-up: the provider's reference for the payment when the gateway has it, so the
# connector need not look it up first.


class CaptureRequest(msgspec.Struct, tag="capture", kw_only=True):
    merchant_id: str
    payment_id: str
    amount: int
    currency: str
    psp_reference: str = ""


class VoidRequest(msgspec.Struct, tag="void", kw_only=True):
    merchant_id: str
    payment_id: str
    psp_reference: str = ""


class RefundRequest(msgspec.Struct, tag="refund", kw_only=True):
    """`refund_id` makes a repeated request count once at the provider."""

    merchant_id: str
    payment_id: str
    refund_id: str
    amount: int
    currency: str
    psp_reference: str = ""


class PayoutRequest(msgspec.Struct, tag="payout", kw_only=True):
    merchant_id: str
    payout_id: str
    amount: int
    currency: str


class PaymentStatusQuery(msgspec.Struct, tag="payment_status", kw_only=True):
    merchant_id: str
    payment_id: str


class PayoutStatusQuery(msgspec.Struct, tag="payout_status", kw_only=True):
    merchant_id: str
    payout_id: str


# What follows a committed command to a provider.
FollowUp = CaptureRequest | VoidRequest | RefundRequest | PayoutRequest
StatusQuery = PaymentStatusQuery | PayoutStatusQuery


def subject(request: FollowUp) -> str:
    """The payment (or payout) a request is about."""
    return request.payout_id if type(request) is PayoutRequest else request.payment_id


# Answers


class Accepted(msgspec.Struct, tag="accepted"):
    psp_reference: str = ""


class Declined(msgspec.Struct, tag="declined"):
    code: str
    message: str = ""


class Failed(msgspec.Struct, tag="failed"):
    reason: str


class StatusAnswer(msgspec.Struct, tag="status_answer", kw_only=True):
    status: str
    psp_reference: str = ""
    failure_code: str = ""
    failure_message: str = ""
    action_url: str = ""


Verdict = Accepted | Declined | Failed


class ConnectorSettings(msgspec.Struct, kw_only=True):
    url: str
    request_timeout_s: float = 10.0
    retries: int = 3  # extra attempts after the first, for what may be transient
    backoff_s: float = 0.2  # before the first retry; doubles each time
    max_backoff_s: float = 5.0
    max_in_flight: int = 64  # requests to the provider at once (with their retries)


class Connector:
    """The interface. A provider's module overrides what its provider offers; the rest answers Failed."""

    name = "connector"

    def __init__(self, settings: ConnectorSettings) -> None:
        self.settings = settings
        self.retried = 0  # extra attempts made, over all requests

    async def start(self) -> None:
        """Called once in the event loop that will make the calls."""

    async def close(self) -> None:
        """Called once, with nothing in flight."""

    async def authorize(self, request: Authorization) -> Verdict:
        return self.unsupported("authorizations")

    async def capture(self, request: CaptureRequest) -> Verdict:
        return self.unsupported("captures")

    async def void(self, request: VoidRequest) -> Verdict:
        return self.unsupported("voids")

    async def refund(self, request: RefundRequest) -> Verdict:
        return self.unsupported("refunds")

    async def payout(self, request: PayoutRequest) -> Verdict:
        return self.unsupported("payouts")

    async def status(self, query: StatusQuery) -> StatusAnswer | Failed:
        return self.unsupported(f"{'payment' if type(query) is PaymentStatusQuery else 'payout'} status queries")

    async def follow_up(self, request: FollowUp) -> Verdict:
        """The one operation `request` names."""
        kind = type(request)
        if kind is CaptureRequest:
            return await self.capture(request)
        if kind is VoidRequest:
            return await self.void(request)
        if kind is RefundRequest:
            return await self.refund(request)
        return await self.payout(request)

    def unsupported(self, operation: str) -> Failed:
        return Failed(f"{self.name} does not take {operation}")


# HTTP providers


class HttpAnswer(msgspec.Struct):
    status: int
    body: bytes


class Reference(msgspec.Struct):
    """The reference in a provider's 2xx body."""

    psp_reference: Annotated[str, msgspec.Meta(max_length=64)] = ""


class ProviderError(msgspec.Struct):
    """The usual error body of a provider: {"error": "<code>", "message": "..."}."""

    error: str = ""
    message: Annotated[str, msgspec.Meta(max_length=500)] = ""


_json_encoder = msgspec.json.Encoder()
_error_decoder = msgspec.json.Decoder(ProviderError)


class HttpConnector(Connector):
    """A provider reached over HTTP: one session, at most `max_in_flight` requests at once, bounded retries."""

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(settings)
        self.url = settings.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.settings.max_in_flight)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.max_in_flight),
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                   idempotency_key: str = "") -> HttpAnswer | Failed:
        """One request, retried while the provider may only be busy (5xx, 429, no connection, no answer in time).

        Answers the first other reply (2xx, 3xx, 4xx), or Failed once the retries are spent.
        """
        data = _json_encoder.encode(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        failure = "no answer"
        async with self._slots:
            for attempt in range(self.settings.retries + 1):
                if attempt:
                    self.retried += 1
                    await asyncio.sleep(self._backoff_s(attempt))
                try:
                    async with self._session.request(method, self.url + path, data=data, params=params,
                                                     headers=headers, allow_redirects=False) as response:
                        answer = HttpAnswer(response.status, await _read_bounded(response))
                except (aiohttp.ClientError, asyncio.TimeoutError, AnswerTooLarge) as error:
                    failure = type(error).__name__
                    continue
                if answer.status >= 500 or answer.status == 429:
                    failure = f"HTTP {answer.status}"
                    continue
                return answer
        return Failed(failure)

    def _backoff_s(self, attempt: int) -> float:
        delay = min(self.settings.backoff_s * 2 ** (attempt - 1), self.settings.max_backoff_s)
        return delay * random.uniform(0.75, 1.25)

    @staticmethod
    def verdict(answer: HttpAnswer | Failed, reply: type | None = None) -> Verdict:
        """2xx: Accepted, with the reference the body gives (`reply`, Reference by default, reads it); 4xx: Declined
        with the provider's code; anything else: Failed."""
        if isinstance(answer, Failed):
            return answer
        if 200 <= answer.status < 300:
            decoded = decode(answer, reply or Reference)
            return Accepted(decoded.psp_reference if decoded is not None else "")
        if 400 <= answer.status < 500:
            code, message = error_of(answer)
            return Declined(code or f"http_{answer.status}", message)
        return Failed(f"HTTP {answer.status}")

    @staticmethod
    def view(answer: HttpAnswer | Failed, kind: type):
        """A status lookup's answer: its 200 body as `kind`, StatusAnswer(unknown) for a 404, or Failed."""
        if isinstance(answer, Failed):
            return answer
        if answer.status == 404:
            return StatusAnswer(status=UNKNOWN)
        decoded = decode(answer, kind) if answer.status == 200 else None
        return decoded if decoded is not None else Failed(f"HTTP {answer.status} to a status query")


def decode(answer: HttpAnswer, kind: type):
    """The answer's JSON body as `kind`, or None when it is not one."""
    try:
        return msgspec.json.decode(answer.body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def error_of(answer: HttpAnswer) -> tuple[str, str]:
    """The provider's error code (only if it looks like one: it may reach a merchant) and message."""
    try:
        error = _error_decoder.decode(answer.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", ""
    code = error.error if error.error.isidentifier() and len(error.error) <= MAX_CODE_CHARS else ""
    return code, error.message


class AnswerTooLarge(Exception):
    """A provider's answers are small: a bigger one is not read."""


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length > MAX_ANSWER_BYTES:
        raise AnswerTooLarge
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise AnswerTooLarge
    return bytes(body)


# The providers by name: "<module>.<Connector subclass>"

CONNECTORS = {
    "piggybank": "actors.psp_piggybank.PiggybankConnector",
    "bank": "actors.psp_bank.BankConnector",
}


def make(provider: str, settings: ConnectorSettings) -> Connector:
    """The connector of the provider named `provider` (a key of CONNECTORS); ValueError for another name."""
    if provider not in CONNECTORS:
        raise ValueError(f"no connector for {provider!r}; known: {', '.join(sorted(CONNECTORS))}")
    module_name, _, class_name = CONNECTORS[provider].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(settings)
