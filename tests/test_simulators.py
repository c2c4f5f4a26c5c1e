"""The simulated providers as real programs: `python -m actors.simulators.piggybank` (card acquirer) and `python -m actors.simulators.bank`
(transfers in, pay-outs) run as subprocesses on free loopback ports and call back, signed, to a small aiohttp
receiver inside the test, which checks every signature with the standard library's hmac over the raw body.
"""

import ast
import asyncio
import concurrent.futures
import csv
import datetime
import hashlib
import hmac
import io
import json
import pathlib
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiohttp
import pytest
from aiohttp import web

from shard_harness import free_ports

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_CARDS = ["4242424242424242", "4000000000000002", "4000000000009995", "4000000000003220", "4000000000000119",
              "4000000000000036"]
CALLBACK_ID = re.compile(r"cb_[0-9a-f]{16,64}")
SIGNATURE = re.compile(r"t=([0-9]{1,15}),v1=([0-9a-f]{64})")


def signature_valid(secret: str, raw: bytes, header: str) -> bool:
    match = SIGNATURE.fullmatch(header or "")
    if match is None:
        return False
    timestamp, digest = match.groups()
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, digest) and abs(time.time() - int(timestamp)) <= 300


class Receiver:
    """The gateway's callback endpoint, stood in for by aiohttp in a background thread's event loop."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}/callbacks"
        self.accepted: list[dict] = []  # answered 200
        self.refused: list[dict] = []  # answered 503 on purpose (fail_next)
        self.invalid: list[bytes] = []  # bad or missing signature
        self.fail_next = 0
        self.condition = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        valid = signature_valid(self.secret, raw, request.headers.get("Paygate-Signature", ""))
        with self.condition:
            if not valid:
                self.invalid.append(raw)
                return web.Response(status=401)
            payload = json.loads(raw)
            if self.fail_next > 0:
                self.fail_next -= 1
                self.refused.append(payload)
                return web.Response(status=503)
            self.accepted.append(payload)
            self.condition.notify_all()
        return web.json_response({"received": True})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/callbacks", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> "Receiver":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def matching(self, **fields) -> list[dict]:
        with self.condition:
            return [each for each in self.accepted if all(each.get(k) == v for k, v in fields.items())]

    def wait_for(self, count: int = 1, timeout_s: float = 5.0, **fields) -> list[dict]:
        """The accepted callbacks with these field values, once there are `count` of them."""
        with self.condition:
            found = self.condition.wait_for(lambda: len(self.matching(**fields)) >= count, timeout_s)
        assert found, f"no {count} callback(s) with {fields} within {timeout_s}s"
        return self.matching(**fields)


class Simulator:
    """`python -m actors.simulators.<name>` on a free loopback port, output kept in a file."""

    def __init__(self, name: str, callback_url: str, secret_file: pathlib.Path, log: pathlib.Path,
                 *extra: str) -> None:
        self.name = name
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [sys.executable, "-m", f"actors.simulators.{name}", "--host", "127.0.0.1", "--port", str(self.port),
                        "--callback-url", callback_url, "--secret-file", str(secret_file), *extra]
        self.process: subprocess.Popen | None = None

    def start(self) -> "Simulator":
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 15.0) -> "Simulator":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()}")
            try:
                if call("GET", self.url + "/healthz", timeout_s=1)[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer /healthz")

    def stop(self, how: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(how)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def call(method: str, url: str, body=None, form: dict | None = None, raw: bytes | None = None,
         timeout_s: float = 5.0) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; redirects are not followed."""
    headers = {}
    if body is not None:
        raw, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        raw, headers["Content-Type"] = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=raw, method=method, headers=headers)
    try:
        with OPENER.open(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as problem:
        return problem.code, dict(problem.headers), problem.read()


def call_json(method: str, url: str, body=None, **options) -> tuple[int, dict]:
    status, _, content = call(method, url, body, **options)
    return status, json.loads(content)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def authorization(number: str, amount: int = 1000, capture: bool = True, **extra) -> dict:
    return {"payment_id": new_id("pay"), "merchant_id": "mer_test", "amount": amount, "currency": "usd",
            "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}, "capture": capture,
            **extra}


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("simulators") / "psp_secret"
    path.write_text("whsec_" + secrets.token_urlsafe(32) + "\n")  # a trailing newline is not part of the secret
    return path


@pytest.fixture(scope="module")
def receiver(secret_file):
    receiver = Receiver(secret_file.read_text().strip()).start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def simulators(receiver, secret_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("simulator_logs")
    started = {name: Simulator(name, receiver.url, secret_file, folder / f"{name}.log").start()
               for name in ("piggybank", "bank")}
    try:
        for each in started.values():
            each.wait_ready()
        yield started
    finally:
        for each in started.values():
            each.stop()


@pytest.fixture
def piggybank(simulators) -> Simulator:
    return simulators["piggybank"]


@pytest.fixture
def bank(simulators) -> Simulator:
    return simulators["bank"]


def authorize(piggybank: Simulator, body: dict) -> str:
    status, reply = call_json("POST", piggybank.url + "/v1/authorizations", body)
    assert status == 202, reply
    assert reply["psp_reference"].startswith("pb_")
    return reply["psp_reference"]


def authorized(piggybank: Simulator, receiver: Receiver, capture: bool = False, amount: int = 1000) -> dict:
    """A fresh authorization of 4242..., after its callback arrived: the status view."""
    body = authorization("4242424242424242", amount=amount, capture=capture)
    reference = authorize(piggybank, body)
    receiver.wait_for(payment_id=body["payment_id"], result="authorized")
    return call_json("GET", f"{piggybank.url}/v1/authorizations/{reference}")[1]


# --- the signature helper ------------------------------------------------------------------------------------------

def test_sign_matches_the_gateway_webhook_format():
    from actors.simulators.callbacks import sign
    from actors.merchant_secrets import webhook_signature

    body = b'{"callback_id":"cb_00","result":"authorized"}'
    assert sign("s3cret", body, 1700000000) == webhook_signature(["s3cret"], body, 1700000000)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body, 1700000000) == f"t=1700000000,v1={expected}"


def test_deliver_retries_with_backoff_and_gives_up_after_the_bounded_attempts():
    from actors.simulators.callbacks import deliver

    closed_port = free_ports(1)[0]

    async def attempt() -> tuple[bool, float]:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            delivered = await deliver(session, f"http://127.0.0.1:{closed_port}/x", "k", {"a": 1}, attempts=3)
            return delivered, time.monotonic() - started

    delivered, elapsed = asyncio.run(attempt())
    assert delivered is False
    assert 0.25 <= elapsed < 2.0  # 0.1 s then 0.2 s between the three attempts


def test_a_refused_callback_is_retried_with_the_same_callback_id(piggybank, receiver):
    with receiver.condition:
        receiver.fail_next = 2
    body = authorization("4242424242424242")
    authorize(piggybank, body)
    [callback] = receiver.wait_for(payment_id=body["payment_id"])
    refused = [each for each in receiver.refused if each["payment_id"] == body["payment_id"]]
    assert [each["callback_id"] for each in refused] == [callback["callback_id"]] * 2


# --- piggybank: test cards -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("number, result, failure_code", [
    ("4242424242424242", "authorized", None),
    ("4000000000000002", "declined", "card_declined"),
    ("4000000000009995", "declined", "insufficient_funds"),
    ("5555555555554444", "authorized", None),  # any other Luhn-valid number
    ("4000 0566 5566 5556", "authorized", None),  # spaces are allowed
])
def test_card_outcome_arrives_by_callback(piggybank, receiver, number, result, failure_code):
    body = authorization(number)
    reference = authorize(piggybank, body)
    [callback] = receiver.wait_for(payment_id=body["payment_id"])
    assert callback["psp_reference"] == reference
    assert callback["merchant_id"] == "mer_test"
    assert callback["result"] == result
    assert callback.get("failure_code") == failure_code
    assert bool(callback.get("failure_message")) == (failure_code is not None)
    assert "action_url" not in callback
    assert CALLBACK_ID.fullmatch(callback["callback_id"])
    status, view = call_json("GET", f"{piggybank.url}/v1/authorizations/{reference}")
    assert status == 200 and view["status"] == result and view["payment_id"] == body["payment_id"]
    digits = number.replace(" ", "")
    assert view["card"] == {"brand": "mastercard" if digits[0] == "5" else "visa", "last4": digits[-4:]}
    assert digits not in json.dumps(view)


def test_3ds_card_requires_action_with_a_link_to_the_challenge_page(piggybank, receiver):
    body = authorization("4000000000003220")
    reference = authorize(piggybank, body)
    [callback] = receiver.wait_for(payment_id=body["payment_id"])
    assert callback["result"] == "requires_action"
    assert callback["action_url"] == f"{piggybank.url}/3ds/{reference}"
    assert call_json("GET", f"{piggybank.url}/v1/authorizations/{reference}")[1]["status"] == "requires_action"


@pytest.mark.parametrize("cvc", [None, ""])
def test_a_card_without_cvc_is_accepted(piggybank, receiver, cvc):
    body = authorization("4242424242424242")
    body["card"]["cvc"] = cvc
    authorize(piggybank, body)
    assert receiver.wait_for(payment_id=body["payment_id"])[0]["result"] == "authorized"


def test_processing_error_card_answers_500_every_time_and_is_never_stored(piggybank):
    body = authorization("4000000000000119")
    for _ in range(3):
        status, reply = call_json("POST", piggybank.url + "/v1/authorizations", body)
        assert (status, reply["error"]) == (500, "processing_error")
    status, reply = call_json("GET", f"{piggybank.url}/v1/authorizations?merchant_id=mer_test&payment_id="
                                     f"{body['payment_id']}")
    assert (status, reply["status"]) == (404, "unknown")


def test_silent_and_failing_cards_never_call_back(piggybank, receiver):
    silent, failing, control = (authorization(number) for number in
                                ("4000000000000036", "4000000000000119", "4242424242424242"))
    reference = authorize(piggybank, silent)
    assert call("POST", piggybank.url + "/v1/authorizations", failing)[0] == 500
    authorize(piggybank, control)
    receiver.wait_for(payment_id=control["payment_id"])  # callbacks do flow meanwhile
    time.sleep(1.5)
    assert receiver.matching(payment_id=silent["payment_id"]) == []
    assert receiver.matching(payment_id=failing["payment_id"]) == []
    status, view = call_json("GET", f"{piggybank.url}/v1/authorizations/{reference}")
    assert (status, view["status"]) == (200, "pending")
    by_payment = call_json("GET", f"{piggybank.url}/v1/authorizations?merchant_id=mer_test&payment_id="
                                  f"{silent['payment_id']}")[1]
    assert by_payment["psp_reference"] == reference


def test_unknown_reference_status_is_unknown(piggybank):
    status, view = call_json("GET", f"{piggybank.url}/v1/authorizations/pb_nope")
    assert (status, view["status"]) == (404, "unknown")


@pytest.mark.parametrize("number", ["4242424242424241", "4000000000000003", "1234567890123", "4242"])
def test_luhn_invalid_number_is_402_incorrect_number(piggybank, number):
    status, reply = call_json("POST", piggybank.url + "/v1/authorizations", authorization(number))
    assert (status, reply["error"]) == (402, "incorrect_number")


@pytest.mark.parametrize("change, param", [
    ({"amount": 0}, "amount"), ({"amount": "10"}, "amount"), ({"amount": True}, "amount"),
    ({"currency": "USD"}, "currency"), ({"payment_id": ""}, "payment_id"), ({"capture": "yes"}, "capture"),
    ({"card": None}, "card"), ({"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030,
                                          "cvc": "12a"}}, "card.cvc"),
    ({"card": {"number": 4242424242424242, "exp_month": 12, "exp_year": 2030}}, "card.number"),
    ({"card": {"number": "4242424242424242", "exp_month": 13, "exp_year": 2030, "cvc": "123"}}, "card.exp_month"),
])
def test_malformed_authorization_is_400_naming_the_field(piggybank, change, param):
    status, reply = call_json("POST", piggybank.url + "/v1/authorizations", {**authorization("4242424242424242"),
                                                                              **change})
    assert (status, reply["error"], reply["param"]) == (400, "invalid_request", param)


def test_bad_json_and_oversized_bodies(piggybank, bank):
    for simulator, path in ((piggybank, "/v1/authorizations"), (bank, "/v1/transfers")):
        status, _, content = call("POST", simulator.url + path, raw=b"{not json")
        assert status == 400 and json.loads(content)["error"] == "invalid_request"
        status, _, content = call("POST", simulator.url + path, raw=b"[1, 2]")
        assert status == 400
        status, _, content = call("POST", simulator.url + path, raw=b'{"pad": "' + b"x" * 200_000 + b'"}')
        assert status == 413 and json.loads(content)["error"] == "request_too_large"


def test_a_retried_authorization_gets_the_same_reference_and_no_second_callback(piggybank, receiver):
    body = authorization("4242424242424242")
    reference = authorize(piggybank, body)
    assert authorize(piggybank, body) == reference
    receiver.wait_for(payment_id=body["payment_id"])
    status, reply = call_json("POST", piggybank.url + "/v1/authorizations", {**body, "amount": 999})
    assert (status, reply["error"]) == (409, "payment_id_reused")
    time.sleep(0.3)
    assert len(receiver.matching(payment_id=body["payment_id"])) == 1


# --- piggybank: 3-D Secure ------------------------------------------------------------------------------------------

def challenge(piggybank: Simulator, receiver: Receiver) -> tuple[dict, str, str]:
    body = authorization("4000000000003220", capture=False)
    reference = authorize(piggybank, body)
    [callback] = receiver.wait_for(payment_id=body["payment_id"], result="requires_action")
    return body, reference, callback["action_url"]


def test_3ds_page_shows_two_buttons_posting_back(piggybank, receiver):
    _, reference, action_url = challenge(piggybank, receiver)
    status, headers, content = call("GET", action_url)
    page = content.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<title>3-D Secure</title>" in page
    assert re.search(rf'<form method="post" action="/3ds/{reference}">', page)
    assert ">Complete authentication</button>" in page and ">Fail authentication</button>" in page
    assert 'name="outcome" value="complete"' in page and 'name="outcome" value="fail"' in page
    assert "3220" in page and "4000000000003220" not in page  # last4 only


@pytest.mark.parametrize("outcome, result, failure_code", [("complete", "authorized", None),
                                                            ("fail", "declined", "authentication_failed")])
def test_3ds_answer_sends_the_final_callback_once(piggybank, receiver, outcome, result, failure_code):
    body, reference, action_url = challenge(piggybank, receiver)
    status, _, content = call("POST", action_url, form={"outcome": outcome})
    assert status == 200 and "You can close this window" in content.decode()
    [final] = receiver.wait_for(payment_id=body["payment_id"], result=result)
    assert final["psp_reference"] == reference and final.get("failure_code") == failure_code
    assert "action_url" not in final
    assert call_json("GET", f"{piggybank.url}/v1/authorizations/{reference}")[1]["status"] == result
    assert call("POST", action_url, form={"outcome": "complete"})[0] == 409  # already decided
    assert call("GET", action_url)[0] == 409
    time.sleep(0.3)
    callbacks = receiver.matching(payment_id=body["payment_id"])
    assert [each["result"] for each in callbacks] == ["requires_action", result]
    assert len({each["callback_id"] for each in callbacks}) == 2


def test_3ds_redirects_to_return_url(piggybank, receiver):
    body, reference, action_url = challenge(piggybank, receiver)
    return_url = "http://127.0.0.1:9/pay/ord_1?step=done"
    page = call("GET", action_url + "?" + urllib.parse.urlencode({"return_url": return_url}))[2].decode()
    action = re.search(r'action="([^"]+)"', page).group(1).replace("&amp;", "&")
    status, headers, _ = call("POST", piggybank.url + action, form={"outcome": "complete"})
    assert status == 303 and headers["Location"] == return_url
    receiver.wait_for(payment_id=body["payment_id"], result="authorized")


def test_3ds_rejects_a_bad_outcome_and_unknown_reference(piggybank, receiver):
    _, _, action_url = challenge(piggybank, receiver)
    assert call("POST", action_url, form={"outcome": "maybe"})[0] == 400
    assert call("GET", piggybank.url + "/3ds/pb_nope")[0] == 404
    assert call("POST", piggybank.url + "/3ds/pb_nope", form={"outcome": "complete"})[0] == 404


# --- piggybank: captures, voids, refunds, settlement ----------------------------------------------------------------

def test_capture_then_refunds_up_to_the_captured_amount(piggybank, receiver):
    view = authorized(piggybank, receiver, capture=False, amount=1000)
    reference = view["psp_reference"]
    assert (view["status"], view["amount_captured"]) == ("authorized", 0)
    post = lambda path, **body: call_json("POST", piggybank.url + path, {"psp_reference": reference, **body})
    status, reply = post("/v1/captures", amount=600)
    assert (status, reply["status"], reply["amount_captured"]) == (200, "ok", 600)
    assert post("/v1/captures", amount=600)[0] == 200  # the same capture again
    assert post("/v1/captures", amount=700)[1]["error"] == "already_captured"
    assert post("/v1/voids")[1]["error"] == "already_captured"
    assert post("/v1/refunds", amount=400)[1]["amount_refunded"] == 400
    status, reply = post("/v1/refunds", amount=300)
    assert (status, reply["error"]) == (409, "amount_too_large")
    assert post("/v1/refunds", amount=150, refund_id="re_1")[1]["amount_refunded"] == 550
    assert post("/v1/refunds", amount=150, refund_id="re_1")[1]["amount_refunded"] == 550  # counted once
    assert post("/v1/refunds")[1]["amount_refunded"] == 600  # the rest
    view = call_json("GET", f"{piggybank.url}/v1/authorizations/{reference}")[1]
    assert (view["status"], view["amount_captured"], view["amount_refunded"]) == ("authorized", 600, 600)


def test_void_releases_an_uncaptured_authorization(piggybank, receiver):
    reference = authorized(piggybank, receiver, capture=False)["psp_reference"]
    post = lambda path, **body: call_json("POST", piggybank.url + path, {"psp_reference": reference, **body})
    for _ in range(2):  # voiding twice is fine
        status, reply = post("/v1/voids")
        assert (status, reply["status"], reply["voided"]) == (200, "ok", True)
    assert post("/v1/captures")[1]["error"] == "not_capturable"
    assert post("/v1/refunds", amount=1)[1]["error"] == "not_captured"


def test_void_drops_an_undecided_authorization_which_then_never_calls_back(piggybank, receiver):
    silent = authorization("4000000000000036")
    reference = authorize(piggybank, silent)
    body = authorization("4000000000003220")
    challenged = authorize(piggybank, body)
    action_url = receiver.wait_for(payment_id=body["payment_id"], result="requires_action")[0]["action_url"]
    for each in (reference, challenged):
        status, reply = call_json("POST", piggybank.url + "/v1/voids", {"psp_reference": each})
        assert (status, reply["voided"]) == (200, True)
        view = call_json("GET", f"{piggybank.url}/v1/authorizations/{each}")[1]
        assert (view["status"], view["voided"]) == ("cancelled", True)
        assert "action_url" not in view
        assert call_json("POST", piggybank.url + "/v1/captures", {"psp_reference": each})[1]["error"] == "not_capturable"
    assert call("POST", action_url, form={"outcome": "complete"})[0] == 409  # the challenge is over
    declined = authorization("4000000000000002")
    declined_reference = authorize(piggybank, declined)
    receiver.wait_for(payment_id=declined["payment_id"])
    status, reply = call_json("POST", piggybank.url + "/v1/voids", {"psp_reference": declined_reference})
    assert (status, reply["error"]) == (409, "not_voidable")
    time.sleep(0.3)
    assert receiver.matching(payment_id=silent["payment_id"]) == []
    assert len(receiver.matching(payment_id=body["payment_id"])) == 1  # requires_action only


def test_capture_more_than_authorized_and_declined_payments_are_refused(piggybank, receiver):
    reference = authorized(piggybank, receiver, capture=False, amount=500)["psp_reference"]
    status, reply = call_json("POST", piggybank.url + "/v1/captures", {"psp_reference": reference, "amount": 501})
    assert (status, reply["error"]) == (409, "amount_too_large")
    body = authorization("4000000000000002", capture=False)
    declined = authorize(piggybank, body)
    receiver.wait_for(payment_id=body["payment_id"])
    status, reply = call_json("POST", piggybank.url + "/v1/captures", {"psp_reference": declined})
    assert (status, reply["error"]) == (409, "not_capturable")


@pytest.mark.parametrize("path, extra", [("/v1/captures", {"amount": 1}), ("/v1/voids", {}),
                                         ("/v1/refunds", {"amount": 1})])
def test_unknown_reference_is_404(piggybank, path, extra):
    status, reply = call_json("POST", piggybank.url + path, {"psp_reference": "pb_unknown", **extra})
    assert (status, reply["error"]) == (404, "unknown_reference")


def test_settlement_csv_lists_captured_payments_of_that_utc_date(piggybank, receiver):
    automatic = authorized(piggybank, receiver, capture=True, amount=1250)
    manual = authorized(piggybank, receiver, capture=False, amount=2000)
    voided = authorized(piggybank, receiver, capture=False, amount=3000)
    uncaptured = authorized(piggybank, receiver, capture=False, amount=4000)
    assert call("POST", piggybank.url + "/v1/captures", {"psp_reference": manual["psp_reference"],
                                                         "amount": 1500})[0] == 200
    assert call("POST", piggybank.url + "/v1/voids", {"psp_reference": voided["psp_reference"]})[0] == 200
    day = automatic["captured_at"][:10]
    status, headers, content = call("GET", f"{piggybank.url}/psp/piggybank/settlements/{day}.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    text = content.decode()
    assert text.splitlines()[0] == "transaction_id,amount,currency,status,settled_at"
    rows = {row["transaction_id"]: row for row in csv.DictReader(io.StringIO(text))}
    assert rows[automatic["payment_id"]]["amount"] == "1250"
    assert rows[manual["payment_id"]]["amount"] == "1500"
    assert voided["payment_id"] not in rows and uncaptured["payment_id"] not in rows
    row = rows[automatic["payment_id"]]
    assert (row["currency"], row["status"]) == ("usd", "captured")
    settled = datetime.datetime.fromisoformat(row["settled_at"].replace("Z", "+00:00"))
    assert settled.tzinfo is not None and settled.date().isoformat() == day
    other_day = call("GET", f"{piggybank.url}/psp/piggybank/settlements/2000-01-01.csv")[2].decode()
    assert other_day == "transaction_id,amount,currency,status,settled_at\n"
    assert call("GET", f"{piggybank.url}/psp/piggybank/settlements/2024-02-30.csv")[0] == 400
    assert call("GET", f"{piggybank.url}/psp/piggybank/settlements/yesterday.csv")[0] == 400


# --- bank -----------------------------------------------------------------------------------------------------------

def test_bank_transfer_calls_back_transfer_received(bank, receiver):
    order_id = new_id("ord")
    status, reply = call_json("POST", bank.url + "/v1/transfers", {"reference": order_id, "amount": 120000,
                                                                   "currency": "vnd"})
    assert status == 202 and reply["bank_reference"].startswith("bk_")
    [callback] = receiver.wait_for(kind="transfer_received", reference=order_id)
    assert (callback["amount"], callback["currency"], callback["bank_reference"]) == (120000, "vnd",
                                                                                      reply["bank_reference"])
    assert CALLBACK_ID.fullmatch(callback["callback_id"])
    assert call_json("GET", f"{bank.url}/v1/transfers/{reply['bank_reference']}")[1]["reference"] == order_id


@pytest.mark.parametrize("amount, paid", [(5000, True), (1013, False), (13, False), (1310, True), (1113, False)])
def test_payout_callback(bank, receiver, amount, paid):
    payout_id = new_id("po")
    body = {"payout_id": payout_id, "merchant_id": "mer_test", "amount": amount, "currency": "usd"}
    status, reply = call_json("POST", bank.url + "/v1/payouts", body)
    assert status == 202 and reply["bank_reference"].startswith("bk_")
    [callback] = receiver.wait_for(kind="payout", payout_id=payout_id)
    assert (callback["merchant_id"], callback["paid"]) == ("mer_test", paid)
    assert callback.get("failure_code") == (None if paid else "account_closed")


def test_a_repeated_payout_is_answered_again_without_a_second_callback(bank, receiver):
    body = {"payout_id": new_id("po"), "merchant_id": "mer_test", "amount": 700, "currency": "eur"}
    first = call_json("POST", bank.url + "/v1/payouts", body)
    assert call_json("POST", bank.url + "/v1/payouts", body) == first
    status, reply = call_json("POST", bank.url + "/v1/payouts", {**body, "amount": 701})
    assert (status, reply["error"]) == (409, "payout_id_reused")
    receiver.wait_for(payout_id=body["payout_id"])
    time.sleep(0.3)
    assert len(receiver.matching(payout_id=body["payout_id"])) == 1


@pytest.mark.parametrize("path, body, param", [
    ("/v1/transfers", {"reference": "ord_1", "amount": 0, "currency": "usd"}, "amount"),
    ("/v1/transfers", {"reference": "ord_1", "amount": 10, "currency": "USD"}, "currency"),
    ("/v1/transfers", {"amount": 10, "currency": "usd"}, "reference"),
    ("/v1/payouts", {"payout_id": "po_1", "merchant_id": "mer_test", "amount": 1.5, "currency": "usd"}, "amount"),
    ("/v1/payouts", {"merchant_id": "mer_test", "amount": 10, "currency": "usd"}, "payout_id"),
])
def test_bank_rejects_malformed_requests(bank, path, body, param):
    status, reply = call_json("POST", bank.url + path, body)
    assert (status, reply["param"]) == (400, param)


# --- every callback -------------------------------------------------------------------------------------------------

def test_every_callback_is_signed_and_has_a_unique_callback_id(piggybank, bank, receiver):
    cards = ["4242424242424242", "4000000000000002", "4000000000009995", "4000000000003220"] * 3
    bodies = [authorization(number) for number in cards]
    orders = [new_id("ord") for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: authorize(piggybank, body), bodies))
        list(pool.map(lambda order: call("POST", bank.url + "/v1/transfers",
                                         {"reference": order, "amount": 100, "currency": "usd"}), orders))
    for body in bodies:
        receiver.wait_for(payment_id=body["payment_id"])
    for order in orders:
        receiver.wait_for(reference=order)
    with receiver.condition:
        ids = [each["callback_id"] for each in receiver.accepted]
        assert receiver.invalid == []
    assert len(ids) >= len(bodies) + len(orders)
    assert len(set(ids)) == len(ids)
    assert all(CALLBACK_ID.fullmatch(each) for each in ids)
    assert call_json("GET", piggybank.url + "/healthz")[1]["callbacks"]["failed"] == 0


# --- the programs ---------------------------------------------------------------------------------------------------

def test_stop_gracefully_delivering_what_is_queued_and_never_log_a_card_number(receiver, secret_file, tmp_path):
    piggybank = Simulator("piggybank", receiver.url, secret_file, tmp_path / "piggybank.log").start()
    bank = Simulator("bank", receiver.url, secret_file, tmp_path / "bank.log", "--callback-delay", "0.5").start()
    piggybank.wait_ready()
    bank.wait_ready()
    bodies = [authorization(number) for number in TEST_CARDS]
    for body in bodies:
        call("POST", piggybank.url + "/v1/authorizations", body)
    call("POST", piggybank.url + "/v1/authorizations", authorization("4242424242424241"))
    receiver.wait_for(payment_id=bodies[0]["payment_id"])
    order_id = new_id("ord")
    assert call("POST", bank.url + "/v1/transfers", {"reference": order_id, "amount": 5, "currency": "usd"})[0] == 202
    assert receiver.matching(reference=order_id) == []  # held back by --callback-delay
    assert piggybank.stop(signal.SIGTERM) == 0
    assert bank.stop(signal.SIGINT) == 0
    assert len(receiver.matching(reference=order_id)) == 1  # the queued callback went out before the exit
    output = piggybank.log.read_text()
    assert "authorization pb_" in output  # it does log, by reference and last4
    for number in TEST_CARDS + ["4242424242424241"]:
        assert number not in output
    assert '"cvc"' not in output


def test_command_line_requires_callback_url_and_secret_file(capsys):
    from actors.simulators import bank

    with pytest.raises(SystemExit) as stopped:
        bank.main(["--port", "1"])
    assert stopped.value.code == 2 and "--callback-url" in capsys.readouterr().err


def test_the_simulators_are_the_outside_world_nothing_of_ours_imports():
    """The gateway reaches them over HTTP only; they import nothing of the gateway but each other."""
    for path in ROOT.glob("*/**/*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("tests", ".venv") or "site-packages" in relative.parts:
            continue
        modules = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
        ours = {module for module in modules if module.split(".")[0] in ("engine", "journal", "edge", "actors", "bench")}
        inside = relative.parts[:2] == ("actors", "simulators")
        outside_imports = {module for module in ours if module.startswith("actors.simulators")}
        assert inside or not outside_imports, (relative, outside_imports)
        assert not inside or all(module.startswith("actors.simulators") for module in ours), (relative, ours)
