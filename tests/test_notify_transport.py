"""The webhook transport against a real aiohttp receiver on loopback: the signature a merchant checks over the exact
bytes it received (under either secret while a rotation's grace lasts), no redirect followed, the 10 s bound (here
shorter), answers read within a bound; under production, no connection to an address that is not public, whatever
name led there. And the retry schedule: parsed strictly, jittered ±20 %, dead after its last delay."""

import asyncio
import hashlib
import hmac
import random
import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from actors.merchant_secrets import MerchantSecrets, SecretSealer, Secrets, seal_context
from actors.webhooks import DEFAULT_RETRY_SCHEDULE, RetrySchedule, WebhookSender
from engine.credentials import INITIAL_CREDENTIAL_ID
from engine.records import Credential, Merchant
from notify_harness import free_port

NOW_S = 1_700_000_000
DERIVED = Secrets(b"k" * 32)
SEALER = SecretSealer(b"s" * 32)
BODY = b'{"id":"evt_1","object":"event","type":"order.paid","data":{"object":{"amount":1999}}}'


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a merchant does: HMAC-SHA256 over "<t>.<raw body>", compared with every v1 the header carries."""
    fields = [part.partition("=") for part in header.split(",")]
    timestamp = next(value for name, _, value in fields if name == "t")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(value, expected) for name, _, value in fields if name == "v1")


class Receiver:
    """A merchant's endpoint: keeps what it got; `answer` says how to reply."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes, str]] = []  # (path, raw body, signature header)
        self.answer = web.Response(text="ok")
        self.delay_s = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append((request.path, await request.read(), request.headers.get("Paygate-Signature", "")))
        await asyncio.sleep(self.delay_s)
        return self.answer


    async def __aenter__(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *_) -> None:
        await self.runner.cleanup()


def with_receiver(test):
    """Runs the async test with a fresh receiver on its own event loop."""
    def run():
        async def scenario():
            async with Receiver() as receiver:
                await test(receiver)
        asyncio.run(scenario())
    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


async def send(url: str, production: bool = False, resolver=None, timeout_s: float = 10.0, body: bytes = BODY,
               signature: str = "t=1,v1=00"):
    sender = WebhookSender(production, timeout_s=timeout_s, resolver=resolver)
    await sender.start()
    try:
        return await sender.post(url, body, signature)
    finally:
        await sender.close()


def rotated_merchant() -> Merchant:
    """mer_a in a rotation's grace: its derived first set still live beside set key_2."""
    credentials = [
        Credential(id=INITIAL_CREDENTIAL_ID, api_key_hash="", client_secret_hash="", expires_at=(NOW_S + 60) * 10**9),
        Credential(id="key_2", api_key_hash="", client_secret_hash="", sealed_webhook_secret=SEALER.seal("whsec_new", seal_context("mer_a", "key_2", "webhook"))),
    ]
    return Merchant(id="mer_a", name="A", email="a@example.com", client_id="cli_mer_a", credentials=credentials)


@with_receiver
async def test_a_signed_delivery_verifies_over_the_exact_bytes_under_either_secret_and_not_tampered(receiver):
    secrets = MerchantSecrets(DERIVED, SEALER)
    merchant = rotated_merchant()
    header = secrets.webhook_header(merchant, BODY, NOW_S)
    result = await send(receiver.url + "/hooks", body=BODY, signature=header)
    assert result.delivered and result.status_code == 200 and result.error == ""
    path, body, signature = receiver.received[0]
    assert (path, body, signature) == ("/hooks", BODY, header)
    assert verify("whsec_new", signature, body) and verify(DERIVED.webhook_secret("mer_a"), signature, body)
    first, second = [part[3:] for part in signature.split(",")[1:]]  # the new secret's first
    assert verify("whsec_new", f"t={NOW_S},v1={first}", body) and not verify("whsec_new", f"t={NOW_S},v1={second}", body)
    assert not verify("whsec_new", signature, body.replace(b"1999", b"1998"))
    assert not verify("whsec_other", signature, body)


@with_receiver
async def test_non_2xx_redirects_and_slow_answers_are_failed_attempts(receiver):
    receiver.answer = web.Response(status=302, headers={"Location": receiver.url + "/elsewhere"})
    result = await send(receiver.url + "/hooks")
    assert (result.delivered, result.status_code) == (False, 302)
    assert [path for path, _, _ in receiver.received] == ["/hooks"]  # not followed
    receiver.answer = web.Response(status=500)
    assert (await send(receiver.url + "/hooks")).status_code == 500
    receiver.answer = web.Response(status=204)
    assert (await send(receiver.url + "/hooks")).delivered
    receiver.delay_s = 1.0
    result = await send(receiver.url + "/hooks", timeout_s=0.3)
    assert (result.delivered, result.error) == (False, "timeout") and 250 <= result.duration_ms < 1000


@with_receiver
async def test_a_long_answer_is_not_read_whole(receiver):
    receiver.answer = web.Response(body=b"x" * (4 << 20))
    assert (await send(receiver.url + "/hooks")).delivered


def test_no_listener_is_a_failed_attempt():
    result = asyncio.run(send(f"http://127.0.0.1:{free_port()}/hooks"))
    assert (result.delivered, result.status_code, result.error) == (False, 0, "connection_failed")


class ToLoopback(AbstractResolver):
    """A name server that answers 127.0.0.1 for every name: what a rebinding attacker's would."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        pass


def loopback_name() -> tuple[str, AbstractResolver | None]:
    """A name that is not a local one by its spelling but resolves to 127.0.0.1: this machine's own name when the
    system resolver says so, else any name through a resolver that answers loopback."""
    name = socket.gethostname()
    try:
        if name not in ("localhost", "") and socket.gethostbyname(name) == "127.0.0.1":
            return name, None
    except OSError:
        pass
    return "shop.example", ToLoopback()


@with_receiver
async def test_production_refuses_a_name_resolving_to_loopback_and_connects_nowhere(receiver):
    name, resolver = loopback_name()
    url = f"http://{name}:{receiver.port}/hooks"
    result = await send(url, production=True, resolver=resolver)
    assert (result.delivered, result.error) == (False, "address_not_public")
    for internal in (receiver.url, f"http://localhost:{receiver.port}/", f"http://[::1]:{receiver.port}/",
                     f"http://2130706433:{receiver.port}/"):
        assert (await send(internal, production=True)).error == "address_not_public"
    assert receiver.received == []
    assert (await send(url, production=False, resolver=resolver)).delivered  # the embedded default: loopback is fine
    assert len(receiver.received) == 1


def test_the_retry_schedule_is_parsed_strictly():
    assert RetrySchedule.parse(DEFAULT_RETRY_SCHEDULE).delays_s == (2, 10, 60, 300, 1800, 7200, 21600, 86400)
    assert RetrySchedule.parse(" 0.2, 0.2 ").delays_s == (0.2, 0.2)
    for bad in ("", "1,,2", "0", "-1", "nan", "inf", "1e9", "a", ",".join(["1"] * 17)):
        with pytest.raises(ValueError):
            RetrySchedule.parse(bad)


def test_retries_follow_the_schedule_with_jitter_then_the_delivery_is_dead():
    schedule = RetrySchedule.parse("2,10,60")
    rng = random.Random(7)
    assert schedule.max_attempts == 4
    for attempt, base in ((1, 2), (2, 10), (3, 60)):
        delays = [schedule.next_delay_s(attempt, rng) for _ in range(500)]
        assert base * 0.8 <= min(delays) < base * 0.85 and base * 1.15 < max(delays) <= base * 1.2
    assert schedule.next_delay_s(4, rng) is None
