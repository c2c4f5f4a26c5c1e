"""Events, webhook deliveries and invoices over HTTP, black-box: a real `paygate serve` (two shards, no actors, so
every delivery stays pending unless the test itself reports attempts, as the notifier would, to the shard).

Orders are paid from wallets (an operator's adjustment funds them): that needs no acquirer.
"""

import asyncio
import io
import uuid

import msgspec
import pypdf
import pytest

from edge_harness import Server
from engine.records import DeliveryResult, RecordDeliveryAttempts
from journal.client import ShardClient, ShardMap
from journal.processes import running_address, running_key, shard_folder
from test_http_api import error, fund, ok, post_concurrently, walk

SHARDS = 2
HOOK = "http://127.0.0.1:9/hook"  # nothing listens: no notifier runs here anyway
IPN = "http://127.0.0.1:9/ipn"

pytestmark = pytest.mark.usefixtures("double_entry_holds")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("events"), workers=1, shards=SHARDS,
                    extra=("--order-ip-limit", "100000")).start()
    yield server
    server.stop()


def merchant(server, webhook_url: str = HOOK) -> tuple[str, str]:
    """A new merchant's id and API key."""
    name = f"shop-{uuid.uuid4().hex[:8]}"
    created = ok(server, "POST", "/v1/merchants", {"name": name, "email": f"{name}@example.com", "tier": "premium",
                                                   "webhook_url": webhook_url}, key=server.admin_token)
    return created["id"], created["api_key"]


def paid_order(server, key: str, amount: int = 1500, **fields) -> dict:
    """An order paid from a wallet funded for it; the order as GET shows it once paid."""
    payer = ok(server, "POST", "/v1/customers", {"email": "payer@example.com"}, key=key)["id"]
    fund(server, payer, amount)
    created = ok(server, "POST", "/v1/orders", {"name": "Flat white", "amount": amount, "currency": "usd",
                                                "payment_methods": ["wallet"], **fields}, key=key)
    ok(server, "POST", "/v1/payments", {"order_id": created["id"], "payment_method": {
        "type": "wallet", "customer_id": payer}}, key=key)
    return ok(server, "GET", f"/v1/orders/{created['id']}", key=key)


def report_attempts(server, merchant_id: str, results: list[DeliveryResult]) -> None:
    """What the notifier does: the attempts' results, to the merchant's shard."""
    folder = shard_folder(server.data, ShardMap(SHARDS).shard_for(merchant_id))

    async def submit() -> None:
        client = ShardClient([running_address(folder)], running_key(folder), timeout_ms=5000)
        try:
            reply = await client.submit([RecordDeliveryAttempts(results)])
            assert reply.results[0].code == "ok", reply.results
        finally:
            client.close()
    asyncio.run(submit())


def dead(delivery_id: str, attempt: int = 1) -> DeliveryResult:
    return DeliveryResult(delivery_id=delivery_id, attempt=attempt, attempted_at=1_700_000_000_000_000_000,
                          status_code=500, error="", duration_ms=7, outcome="dead")


def test_a_paid_order_has_events_as_get_showed_its_objects_and_an_invoice(server):
    merchant_id, key = merchant(server)
    order = paid_order(server, key, ipn_url=IPN, customer_email="buyer@example.com")
    assert order["invoice_id"].startswith("inv_")
    events = ok(server, "GET", "/v1/events", key=key)
    assert [event["type"] for event in events["data"]] == ["order.paid", "payment.succeeded"]
    paid, succeeded = events["data"]
    assert set(paid) == {"id", "object", "type", "created", "data"} and paid["object"] == "event"
    assert paid["data"]["object"] == order  # the order exactly as its GET renders it
    payment = ok(server, "GET", f"/v1/payments/{order['payment_id']}", key=key)
    assert succeeded["data"]["object"] == payment
    reply = server.request("GET", f"/v1/events/{paid['id']}", key=key)
    assert reply.status == 200 and msgspec.json.decode(reply.body) == paid
    # A refund changes the order; the event keeps the order as it was.
    ok(server, "POST", "/v1/refunds", {"payment_id": order["payment_id"], "amount": 500}, key=key)
    assert ok(server, "GET", f"/v1/events/{paid['id']}", key=key) == paid
    refunded = ok(server, "GET", f"/v1/events?type=order.partially_refunded&object_id={order['id']}", key=key)
    assert refunded["data"][0]["data"]["object"] == ok(server, "GET", f"/v1/orders/{order['id']}", key=key)
    deliveries = ok(server, "GET", f"/v1/webhook_deliveries?event_id={paid['id']}", key=key)["data"]
    assert {(d["channel"], d["kind"], d["target"], d["status"]) for d in deliveries} == {
        ("webhook", "event", HOOK, "pending"), ("ipn", "event", IPN, "pending"),
        ("email", "receipt", "buyer@example.com", "pending")}
    assert all(d["object"] == "webhook_delivery" and d["attempts"] == [] for d in deliveries)


def test_lists_filter_page_and_refuse_bad_values(server):
    merchant_id, key = merchant(server)
    orders = [paid_order(server, key) for _ in range(3)]
    ids = walk(server, key, "/v1/events", 2)
    assert len(ids) == 6 and ids == [event["id"] for event in ok(server, "GET", "/v1/events", key=key)["data"]]
    assert walk(server, key, "/v1/events", 1, type="order.paid") == ids[0::2]
    assert [event["data"]["object"]["id"] for event in ok(server, "GET", f"/v1/events?object_id={orders[1]['id']}",
                                                          key=key)["data"]] == [orders[1]["id"]]
    error(server, "GET", "/v1/events?type=order.nothing", key=key, param="type")
    error(server, "GET", "/v1/events?limit=0", key=key, param="limit")
    error(server, "GET", "/v1/events?starting_after=evt_nothing", key=key, param="starting_after")
    error(server, "GET", "/v1/webhook_deliveries?status=lost", key=key, param="status")
    error(server, "GET", "/v1/webhook_deliveries?starting_after=whd_nothing", key=key, param="starting_after")
    assert len(walk(server, key, "/v1/webhook_deliveries", 4, status="pending")) == 6
    assert walk(server, key, "/v1/webhook_deliveries", 4, status="dead") == []


def test_another_merchants_events_deliveries_and_invoices_are_404(server):
    _, key = merchant(server)
    _, other = merchant(server)
    order = paid_order(server, key)
    event_id = ok(server, "GET", "/v1/events", key=key)["data"][0]["id"]
    error(server, "GET", f"/v1/events/{event_id}", key=other, status=404)
    error(server, "POST", f"/v1/events/{event_id}/redeliver", key=other, status=404)
    error(server, "GET", f"/v1/invoices/{order['invoice_id']}", key=other, status=404)
    error(server, "GET", f"/v1/invoices/{order['invoice_id']}.pdf", key=other, status=404)
    assert ok(server, "GET", f"/v1/invoices?order_id={order['id']}", key=other)["data"] == []
    assert ok(server, "GET", "/v1/events", key=other)["data"] == []
    assert ok(server, "GET", f"/v1/webhook_deliveries?event_id={event_id}", key=other)["data"] == []


def test_redelivery_queues_the_event_again(server):
    _, key = merchant(server)
    paid_order(server, key, ipn_url=IPN)
    paid = ok(server, "GET", "/v1/events?type=order.paid", key=key)["data"][0]
    assert ok(server, "POST", f"/v1/events/{paid['id']}/redeliver", key=key) == {
        "object": "redelivery", "queued": 2, "has_more": False}
    deliveries = ok(server, "GET", f"/v1/webhook_deliveries?event_id={paid['id']}", key=key)["data"]
    assert sorted(d["channel"] for d in deliveries) == ["ipn", "ipn", "webhook", "webhook"]
    _, silent = merchant(server, webhook_url="")
    paid_order(server, silent)
    quiet = ok(server, "GET", "/v1/events", key=silent)["data"][0]
    error(server, "POST", f"/v1/events/{quiet['id']}/redeliver", key=silent, status=409, code="no_delivery_target")


def test_dead_deliveries_are_listed_with_their_attempts_and_replayed(server):
    merchant_id, key = merchant(server)
    paid_order(server, key)
    pending = ok(server, "GET", "/v1/webhook_deliveries", key=key)["data"]
    report_attempts(server, merchant_id, [dead(delivery["id"]) for delivery in pending])
    listed = ok(server, "GET", "/v1/webhook_deliveries?status=dead", key=key)["data"]
    assert {d["id"] for d in listed} == {d["id"] for d in pending}
    attempt = listed[0]["attempts"][0]
    assert (attempt["status_code"], attempt["error"], attempt["duration_ms"]) == (500, None, 7)
    assert attempt["attempted_at"] == "2023-11-14T22:13:20.000Z" and listed[0]["next_attempt_at"] is None
    window = {"status": "dead", "created_gte": "2000-01-01T00:00:00Z", "created_lt": 4_000_000_000}
    assert ok(server, "POST", "/v1/webhook_deliveries/replay", {**window, "limit": 1}, key=key) == {
        "object": "replay", "queued": 1, "has_more": True}
    assert ok(server, "POST", "/v1/webhook_deliveries/replay", window, key=key)["queued"] == len(pending) - 1
    assert ok(server, "GET", "/v1/webhook_deliveries?status=dead", key=key)["data"] == []
    replayed = ok(server, "GET", "/v1/webhook_deliveries?status=pending", key=key)["data"]
    assert {d["attempt_count"] for d in replayed} == {1}
    error(server, "POST", "/v1/webhook_deliveries/replay", {"status": "pending"}, key=key, param="status")
    error(server, "POST", "/v1/webhook_deliveries/replay", {"status": "dead", "created_lt": "yesterday"}, key=key,
          param="created_lt")


def test_an_operator_replays_every_merchants_dead_deliveries(server):
    merchants = [merchant(server) for _ in range(4)]  # some on each shard, most likely
    for merchant_id, key in merchants:
        paid_order(server, key)
        report_attempts(server, merchant_id, [dead(d["id"]) for d in ok(
            server, "GET", "/v1/webhook_deliveries?status=pending", key=key)["data"]])
    replayed = ok(server, "POST", "/v1/webhook_deliveries/replay", {"status": "dead"}, key=server.admin_token)
    assert replayed["queued"] >= 2 * len(merchants)
    for _, key in merchants:
        assert ok(server, "GET", "/v1/webhook_deliveries?status=dead", key=key)["data"] == []


def test_invoice_as_json_and_pdf(server):
    _, key = merchant(server)
    order = paid_order(server, key, amount=123456)
    invoice = ok(server, "GET", f"/v1/invoices/{order['invoice_id']}", key=key)
    assert {name: invoice[name] for name in ("object", "number", "order_id", "order_name", "amount", "currency")} == {
        "object": "invoice", "number": 1, "order_id": order["id"], "order_name": "Flat white", "amount": 123456,
        "currency": "usd"}
    assert invoice["payment_method"] == {"type": "wallet", "brand": None, "last4": None}
    assert ok(server, "GET", f"/v1/invoices?order_id={order['id']}", key=key)["data"] == [invoice]
    reply = server.request("GET", f"/v1/invoices/{invoice['id']}.pdf", key=key)
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/pdf"
    text = pypdf.PdfReader(io.BytesIO(reply.body)).pages[0].extract_text()
    assert "1234.56 USD" in text and "Invoice number 1" in text and invoice["merchant_name"] in text
    assert invoice["pdf_url"].endswith(f"/v1/invoices/{invoice['id']}.pdf")
    error(server, "GET", "/v1/invoices/inv_nothing", key=key, status=404)
    error(server, "GET", "/v1/invoices?starting_after=inv_nothing", key=key, param="starting_after")


def test_invoice_numbers_have_no_gaps_under_many_orders_paid_at_once(server):
    _, key = merchant(server)
    count = 40
    payer = ok(server, "POST", "/v1/customers", {"email": "payer@example.com"}, key=key)["id"]
    fund(server, payer, count * 100)
    orders = post_concurrently(server, key, [("/v1/orders", {"name": f"Item {index}", "amount": 100,
                                                             "currency": "usd", "payment_methods": ["wallet"]})
                                             for index in range(count)])
    payments = post_concurrently(server, key, [("/v1/payments", {"order_id": body["id"], "payment_method": {
        "type": "wallet", "customer_id": payer}}) for _, body in orders])
    assert {status for status, _ in payments} == {200}
    invoices = walk(server, key, "/v1/invoices", 15)
    numbers = sorted(ok(server, "GET", f"/v1/invoices/{invoice_id}", key=key)["number"] for invoice_id in invoices)
    assert numbers == list(range(1, count + 1))
