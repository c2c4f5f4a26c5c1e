"""Notifications end to end: a real `paygate serve` with its actors, a real aiohttp webhook receiver and a real
aiosmtpd server, all on loopback.

- a paid order's events reach the merchant's webhook, signed over the exact bytes GET /v1/events/{id} answers (a
  changed byte fails the signature), and the receipt reaches the mail server with its invoice PDF, which pypdf reads
  and which shows the amount;
- a receiver that is down, then up: delivered, same event id, the failed attempt listed before the good one;
- a receiver that always fails: dead after the (shortened) schedule, in the dead-letter list; delivered once it
  answers, by redeliver and by bulk replay;
- events about one object reach the endpoint in the order they happened while the receiver fails at random;
- /metrics counts deliveries by outcome and shows the backlog;
- the notifier and the shard killed with SIGKILL mid-schedule: every event arrives, and none whose delivery was
  recorded delivered arrives again.

One serve for the module (Ray takes seconds to start). Each test has its own merchants and webhook path.
"""

import asyncio
import collections
import datetime
import hashlib
import hmac
import io
import json
import os
import random
import signal
import socket
import threading
import time

import orjson
import pytest
from aiohttp import web
from pypdf import PdfReader

from actors.notifier_stats import read_stats
from edge_harness import Server
from notify_harness import free_port, smtp_server

# Attempts 0.1 s, 0.2 s... apart: a failing delivery is dead within about 2 s, and one failing a quarter of its
# attempts at random is dead once in about 250,000.
SCHEDULE = "0.1,0.1,0.2,0.2,0.3,0.3,0.4,0.4"
ATTEMPTS = 9
# The notifier holds this few pending deliveries: the tests that queue more see it load the rest, in order, later.
MAX_PENDING = 6
WAIT_S = 30
ADJUSTMENT = 10**9


def wait_for(condition, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


class Hit:
    def __init__(self, path: str, body: bytes, signature: str, status: int) -> None:
        self.path, self.body, self.signature, self.status = path, body, signature, status
        self.at = time.time()
        event = orjson.loads(body)
        self.event_id, self.type = event["id"], event["type"]
        self.object_id = event["data"]["object"]["id"]


async def _event() -> asyncio.Event:
    return asyncio.Event()


class Hooks:
    """Merchants' endpoints, `/<name>` each, on a thread of their own; `answers[name]` picks each reply's status."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.answers: dict[str, object] = {}
        self.gates: dict[str, asyncio.Event] = {}  # a path's requests wait here, unanswered, while it is closed
        self.rng = random.Random(16)
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runner = self.listen(self.port)

    def url(self, name: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if (gate := self.gates.get(name)) is not None:
            await gate.wait()
        answer = self.answers.get(name, 200)
        status = answer(self.rng) if callable(answer) else answer
        self.hits.append(Hit(name, await request.read(), request.headers.get("Paygate-Signature", ""), status))
        return web.Response(status=status)

    def listen(self, port: int) -> web.AppRunner:
        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/{name}", self.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner
        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def hold(self, name: str) -> None:
        self.gates[name] = asyncio.run_coroutine_threadsafe(_event(), self.loop).result(10)

    def release(self, name: str) -> None:
        self.loop.call_soon_threadsafe(self.gates.pop(name).set)

    def of(self, name: str, ok_only: bool = False) -> list[Hit]:
        return [hit for hit in list(self.hits) if hit.path == name and (not ok_only or hit.status < 300)]


@pytest.fixture(scope="module")
def hooks():
    hooks = Hooks()
    yield hooks
    asyncio.run_coroutine_threadsafe(hooks.runner.cleanup(), hooks.loop).result(10)
    hooks.loop.call_soon_threadsafe(hooks.loop.stop)


@pytest.fixture(scope="module")
def inbox():
    with smtp_server() as inbox:
        yield inbox


@pytest.fixture(scope="module")
def server(tmp_path_factory, inbox):
    folder = tmp_path_factory.mktemp("notify")
    rules = folder / "risk_rules.json"  # one customer pays every order of a test: no velocity limit in the way
    rules.write_bytes(orjson.dumps({"velocity": {kind: {"attempts": 10**6, "window_s": 600}
                                                 for kind in ("card_fingerprint", "ip", "customer", "email")}}))
    server = Server(folder / "data", actors=True,
                    extra=("--webhook-retry-schedule", SCHEDULE, "--smtp-url", inbox.url, "--order-ip-limit", "0",
                           "--risk-rules", str(rules), "--notifier-max-pending", str(MAX_PENDING))).start()
    yield server
    server.stop()


class Shop:
    """A merchant whose webhook is `url`, with a customer whose wallet pays its orders."""

    def __init__(self, server: Server, url: str) -> None:
        self.server = server
        created = server.request("POST", "/v1/merchants", {"name": "Tea shop", "email": "owner@tea.example",
                                                           "webhook_url": url}, key=server.admin_token)
        assert created.status == 200, created.body
        self.key, self.webhook_secret = created.json()["api_key"], created.json()["webhook_secret"]
        self.customer = self.call("POST", "/v1/customers", {"email": "payer@example.com"})["id"]
        self.call("POST", f"/v1/customers/{self.customer}/adjustments",
                  {"amount": ADJUSTMENT, "currency": "usd", "reason": "funds"}, key=server.admin_token)

    def call(self, method: str, path: str, body=None, key: str | None = None):
        response = self.server.request(method, path, body, key=key or self.key)
        assert response.status == 200, (path, response.body[:400])
        return response.json()

    def paid_order(self, amount: int = 1999, **fields) -> dict:
        order = self.call("POST", "/v1/orders", {"name": "Green tea", "amount": amount, "currency": "usd",
                                                 "payment_methods": ["wallet"], **fields})
        payment = self.call("POST", "/v1/payments", {"order_id": order["id"], "payment_method": {
            "type": "wallet", "customer_id": self.customer}})
        assert payment["status"] == "succeeded"
        return {**order, "payment_id": payment["id"]}

    def events(self) -> list[dict]:
        found, after = [], ""
        while True:
            page = self.call("GET", f"/v1/events?limit=100{after}")
            found += page["data"]
            if not page["has_more"]:
                return found
            after = f"&starting_after={page['data'][-1]['id']}"

    def deliveries(self, query: str = "") -> list[dict]:
        return self.call("GET", f"/v1/webhook_deliveries?limit=100{query}")["data"]


def signed(secret: str, header: str, body: bytes) -> bool:
    fields = [part.partition("=") for part in header.split(",")]
    timestamp = next(value for name, _, value in fields if name == "t")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(name == "v1" and hmac.compare_digest(value, expected) for name, _, value in fields)


def test_a_paid_order_reaches_the_webhook_signed_over_the_exact_bytes(server, hooks):
    shop = Shop(server, hooks.url("paid"))
    order = shop.paid_order()
    hit = wait_for(lambda: next((hit for hit in hooks.of("paid") if hit.type == "order.paid"), None), "order.paid")
    assert hit.object_id == order["id"] and abs(int(hit.signature.split(",")[0][2:]) - time.time()) < 30
    assert signed(shop.webhook_secret, hit.signature, hit.body)
    assert not signed(shop.webhook_secret, hit.signature, hit.body.replace(b"1999", b"1998"))
    assert hit.body == server.request("GET", f"/v1/events/{hit.event_id}", key=shop.key).body
    delivery = wait_for(lambda: [item for item in shop.deliveries(f"&event_id={hit.event_id}")
                                 if item["channel"] == "webhook" and item["status"] == "delivered"], "recorded")[0]
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [200]


def test_the_notifier_is_woken_by_the_shards_announcements_not_a_fast_poll(server, hooks):
    """A commit wakes the notifier at once (the shard announces it); with nothing new it reads the journal about once
    a second, should an announcement be lost, not every 50 ms."""
    shop = Shop(server, hooks.url("woken"))
    woken = read_stats(server.data).woken_by_announcement
    shop.paid_order()
    wait_for(lambda: hooks.of("woken") and not shop.deliveries("&status=pending"), "delivered")
    wait_for(lambda: read_stats(server.data).woken_by_announcement > woken, "woken by an announcement")
    time.sleep(1.5)  # what the delivery set off (its outcome recorded, that entry read) is over
    before = read_stats(server.data)
    time.sleep(4)
    after = read_stats(server.data)
    assert after.journal_reads - before.journal_reads <= 10, (before, after)


def test_signatures_follow_a_rotation_of_the_webhook_secret(server, hooks):
    """While the old secret's grace lasts a delivery carries both signatures, the new one's first; a retry after the
    old secret is revoked carries the new one's alone."""
    shop = Shop(server, hooks.url("rotated"))
    merchant_id = shop.call("GET", "/v1/merchants/me")["id"]
    rotated = shop.call("POST", f"/v1/merchants/{merchant_id}/api_keys", {"expires_in": 3600})
    shop.key, old_secret, new_secret = rotated["api_key"], shop.webhook_secret, rotated["webhook_secret"]
    shop.paid_order()
    hit = wait_for(lambda: next(iter(hooks.of("rotated")), None), "a delivery in the grace")
    first, second = hit.signature.split(",")[1:]
    assert signed(new_secret, f"{hit.signature.split(',')[0]},{first}", hit.body)
    assert signed(old_secret, f"{hit.signature.split(',')[0]},{second}", hit.body)
    hooks.answers["rotated"] = 500
    shop.paid_order()
    wait_for(lambda: any(hit.status == 500 for hit in hooks.of("rotated")), "a failed attempt")
    newest = shop.call("POST", f"/v1/merchants/{merchant_id}/api_keys", {"expires_in": 0}, key=server.admin_token)
    shop.key = newest["api_key"]
    hooks.answers["rotated"] = 200
    wait_for(lambda: not shop.deliveries("&status=pending"), "delivered")
    retried = [hit for hit in hooks.of("rotated") if hit.status == 200][-1]
    assert retried.event_id != hit.event_id and any(other.status == 500 and other.event_id == retried.event_id
                                                    for other in hooks.of("rotated"))
    assert retried.signature.count("v1=") == 1 and signed(newest["webhook_secret"], retried.signature, retried.body)


def test_a_receipt_with_its_invoice_reaches_the_mail_server(server, hooks, inbox):
    shop = Shop(server, hooks.url("receipt"))
    order = shop.paid_order(amount=4250, customer_email="reader@example.com")
    message = wait_for(lambda: next((message for message in list(inbox.messages)
                                     if message["To"] == "reader@example.com"), None), "the receipt")
    assert "42.50 USD" in message["Subject"]
    attachment = next(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    text = PdfReader(io.BytesIO(attachment.get_content())).pages[0].extract_text()
    assert "42.50" in text and "Green tea" in text
    invoice = shop.call("GET", f"/v1/invoices?order_id={order['id']}")["data"][0]
    assert str(invoice["number"]) in attachment.get_filename()


def test_the_orders_ipn_url_gets_its_order_events_signed_and_a_refund_its_receipt(server, hooks, inbox):
    shop = Shop(server, hooks.url("shop-hook"))
    order = shop.paid_order(amount=3000, ipn_url=hooks.url("ipn"), customer_email="refunded@example.com")
    shop.call("POST", "/v1/refunds", {"payment_id": order["payment_id"], "amount": 1250})
    order_events = [event["id"] for event in reversed(shop.events()) if event["type"].startswith("order.")]
    assert len(order_events) == 2  # paid, then partially refunded
    hits = wait_for(lambda: len(hooks.of("ipn", ok_only=True)) == 2 and hooks.of("ipn"), "both order events")
    assert [hit.event_id for hit in hits] == order_events  # the order's events only, in order
    assert all(hit.object_id == order["id"] and signed(shop.webhook_secret, hit.signature, hit.body) for hit in hits)
    assert hits[0].body == server.request("GET", f"/v1/events/{hits[0].event_id}", key=shop.key).body
    message = wait_for(lambda: next((message for message in list(inbox.messages)
                                     if message["To"] == "refunded@example.com"
                                     and message["Subject"].startswith("Refund")), None), "the refund receipt")
    assert "12.50 USD" in message["Subject"] and "12.50 USD" in message.get_body().get_content()


def test_a_receiver_down_then_up_gets_the_same_event(server, hooks):
    down_port = free_port()
    shop = Shop(server, hooks.url("later", down_port))
    order = shop.paid_order()
    event_id = wait_for(lambda: [event["id"] for event in shop.events() if event["type"] == "order.paid"], "event")[0]
    wait_for(lambda: any(item["attempt_count"] >= 1 for item in shop.deliveries(f"&event_id={event_id}")),
             "a failed attempt")
    runner = hooks.listen(down_port)
    try:
        hit = wait_for(lambda: next((hit for hit in hooks.of("later") if hit.type == "order.paid"), None), "up")
        assert (hit.event_id, hit.object_id) == (event_id, order["id"])
        delivery = wait_for(lambda: [item for item in shop.deliveries(f"&event_id={event_id}")
                                     if item["status"] == "delivered"], "recorded")[0]
        codes = [attempt["status_code"] for attempt in delivery["attempts"]]
        assert codes[-1] == 200 and None in codes[:-1] and delivery["attempts"][0]["error"]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), hooks.loop).result(10)


def test_always_failing_is_dead_then_redelivered_and_replayed(server, hooks):
    hooks.answers["broken"] = 500
    shop = Shop(server, hooks.url("broken"))
    shop.paid_order()
    dead = wait_for(lambda: not shop.deliveries("&status=pending") and shop.deliveries("&status=dead"),
                    "dead letters")
    assert all(item["attempt_count"] == ATTEMPTS for item in dead)
    assert all(attempt["status_code"] == 500 for item in dead for attempt in item["attempts"])
    tried = len(hooks.of("broken"))
    assert tried == ATTEMPTS * len(dead)
    hooks.answers["broken"] = 200
    first = dead[0]
    shop.call("POST", f"/v1/events/{first['event_id']}/redeliver")
    wait_for(lambda: any(hit.event_id == first["event_id"] for hit in hooks.of("broken", ok_only=True)), "redeliver")
    replayed = shop.call("POST", "/v1/webhook_deliveries/replay", {"status": "dead"})
    assert (replayed["queued"], replayed["has_more"]) == (len(dead), False)
    wait_for(lambda: {hit.event_id for hit in hooks.of("broken", ok_only=True)} >= {item["event_id"] for item in dead},
             "replayed")
    wait_for(lambda: not shop.deliveries("&status=dead") and not shop.deliveries("&status=pending"), "all recorded")


def test_retries_follow_a_new_webhook_url(server, hooks):
    """A delivery being retried goes to the merchant's webhook_url as PATCHed, not the one it was made for."""
    hooks.answers["moved-from"] = 500
    shop = Shop(server, hooks.url("moved-from"))
    merchant_id = shop.call("GET", "/v1/merchants/me")["id"]
    shop.paid_order()
    wait_for(lambda: hooks.of("moved-from"), "a failed attempt")
    shop.call("PATCH", f"/v1/merchants/{merchant_id}", {"webhook_url": hooks.url("moved-to")}, key=server.admin_token)
    patched_at = time.time()
    expected = {event["id"] for event in shop.events()}
    wait_for(lambda: {hit.event_id for hit in hooks.of("moved-to", ok_only=True)} >= expected, "the new URL")
    assert {hit.event_id for hit in hooks.of("moved-from")} <= expected
    assert all(hit.at < patched_at + 1 for hit in hooks.of("moved-from")), "an attempt went to the old URL"
    delivered = wait_for(lambda: not shop.deliveries("&status=pending") and shop.deliveries(), "recorded")
    assert {(item["status"], item["target"]) for item in delivered} == {("delivered", hooks.url("moved-to"))}
    assert any(attempt["status_code"] == 500 for item in delivered for attempt in item["attempts"])


def assert_in_order(hits: list[Hit]) -> None:
    """Per object, the events it received (any answer) never go back to an earlier one (ids follow the journal)."""
    latest: dict[str, str] = {}
    for hit in hits:
        assert hit.event_id >= latest.get(hit.object_id, ""), (hit.object_id, hit.event_id, latest[hit.object_id])
        latest[hit.object_id] = hit.event_id


def test_events_about_one_object_arrive_in_order_while_the_receiver_fails_at_random(server, hooks):
    """More deliveries pile up (the receiver holding every request) than the notifier holds: the rest come later, in
    order."""
    hooks.hold("flaky")
    hooks.answers["flaky"] = lambda rng: 503 if rng.random() < 0.25 else 200
    shop = Shop(server, hooks.url("flaky"))
    full_before = read_stats(server.data).schedule_full
    for _ in range(4):
        order = shop.paid_order(amount=4000)
        for _ in range(3):
            shop.call("POST", "/v1/refunds", {"payment_id": order["payment_id"], "amount": 1000})
    expected = {event["id"] for event in shop.events()}
    assert len(expected) > MAX_PENDING
    wait_for(lambda: read_stats(server.data).schedule_full > full_before, "a full schedule")
    hooks.release("flaky")
    wait_for(lambda: {hit.event_id for hit in hooks.of("flaky", ok_only=True)} >= expected, "every event")
    hits = hooks.of("flaky")
    assert any(hit.status == 503 for hit in hits)
    by_object = collections.Counter(hit.object_id for hit in hits if hit.status == 200)
    assert max(by_object.values()) >= 4  # an order paid, then refunded in parts: one lane of several events
    assert_in_order(hits)


def test_metrics_count_deliveries_by_outcome_and_show_the_backlog(server):
    wait_for(lambda: read_stats(server.data) is not None, "stats")
    text = server.request("GET", "/metrics").body.decode()
    assert 'paygate_notifier_deliveries_total{channel="webhook",outcome="delivered"}' in text
    assert "paygate_notifier_backlog " in text


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def crash_mid_schedule(server: Server, hooks: Hooks, rounds: int) -> None:
    """Each round: orders paid while the receiver fails, the notifier killed once deliveries are being retried, the
    shard too, then the receiver failing at random; every event arrives, none recorded delivered arrives again."""
    shop = Shop(server, hooks.url(f"crash{rounds}"))
    for _ in range(rounds):
        hooks.answers[f"crash{rounds}"] = 503
        for _ in range(5):
            shop.paid_order()
        wait_for(lambda: any(item["attempt_count"] for item in shop.deliveries("&status=pending")), "retrying")
        notifier = read_stats(server.data).pid
        kill(notifier)
        kill(json.loads((server.data / "shard-0" / "shard.json").read_text())["pid"])
        hooks.answers[f"crash{rounds}"] = lambda rng: 503 if rng.random() < 0.2 else 200
        wait_for(lambda: (stats := read_stats(server.data)) is not None and stats.pid != notifier, "notifier back",
                 timeout_s=60)
        wait_for(lambda: server.request("GET", "/readyz").status == 200, "shard back", timeout_s=60)
    expected = {event["id"] for event in shop.events()}
    assert len(expected) >= 10 * rounds
    wait_for(lambda: {hit.event_id for hit in hooks.of(f"crash{rounds}", ok_only=True)} >= expected, "every event",
             timeout_s=60)
    wait_for(lambda: not shop.deliveries("&status=pending"), "all recorded", timeout_s=60)
    assert not shop.deliveries("&status=dead")
    oks = collections.defaultdict(list)
    for hit in hooks.of(f"crash{rounds}", ok_only=True):
        oks[hit.event_id].append(hit.at)
    delivered = [item for item in shop.deliveries("&status=delivered") if item["channel"] == "webhook"]
    assert {item["event_id"] for item in delivered} == expected
    for delivery in delivered:
        recorded = delivery["attempts"][-1]
        done_at = _unix(recorded["attempted_at"]) + recorded["duration_ms"] / 1000 + 0.05
        assert max(oks[delivery["event_id"]]) <= done_at, delivery  # nothing after the attempt recorded delivered


def test_killed_notifier_and_shard_lose_nothing_and_resend_nothing_recorded_delivered(server, hooks):
    crash_mid_schedule(server, hooks, rounds=1)


@pytest.mark.slow
def test_killed_again_and_again(server, hooks):
    crash_mid_schedule(server, hooks, rounds=5)


def _unix(rfc3339: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
def test_production_refuses_a_name_that_resolves_to_loopback(tmp_path, hooks):
    """Under --production the edge takes a webhook URL naming this machine (a name, not an address), and the
    notifier refuses the loopback address it resolves to: nothing reaches the receiver, the deliveries die."""
    name = socket.gethostname()
    if socket.gethostbyname(name) != "127.0.0.1":
        pytest.skip(f"{name} does not resolve to 127.0.0.1 here")
    server = Server(tmp_path / "data", actors=True, extra=("--production", "--webhook-retry-schedule", "0.1,0.1")).start()
    try:
        shop = Shop(server, hooks.url("production").replace("127.0.0.1", name))
        shop.paid_order()
        dead = wait_for(lambda: not shop.deliveries("&status=pending") and shop.deliveries("&status=dead"), "dead")
        assert {attempt["error"] for item in dead for attempt in item["attempts"]} == {"address_not_public"}
        assert hooks.of("production") == []
    finally:
        server.stop()
