"""Risk rules end to end: a real `paygate serve` (two shards, Ray, the risk actor, the simulated providers) with a
rules file of small limits, over HTTP only. Its restart is a stop by SIGTERM, which Ray's driver takes for itself
unless serve takes it back: serve must leave as Ctrl-C makes it leave.

The risk actor publishes its table a moment after a payment or a block list change, so a test that needs the table
to have caught up pays until it refuses (a bounded wait). Every test uses cards of its own, so that no count of one
test reaches another; after every test the full double-entry check passes.
"""

import json
import os
import random
import signal
import time
import uuid

import pytest

from edge_harness import Server
from journal.processes import shard_folder

CARD_ATTEMPTS = 3
WINDOW_S = 600
BASIC_USD_LIMIT = 5000
RULES = {
    "velocity": {"card_fingerprint": {"attempts": CARD_ATTEMPTS, "window_s": WINDOW_S},
                 "ip": {"attempts": 50, "window_s": WINDOW_S}},
    "amount_limits": {"basic": {"usd": BASIC_USD_LIMIT}},
}
CARD_LIMIT_REASON = f"at most {CARD_ATTEMPTS} payment attempts in {WINDOW_S} s for this card"
EXPIRY = {"exp_month": 12, "exp_year": 2031}
NUMBERS: list[str] = []  # every card number this module used


pytestmark = pytest.mark.usefixtures("double_entry_holds")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("risk")
    rules = folder / "rules.json"
    rules.write_text(json.dumps(RULES))
    server = Server(folder / "data", workers=2, shards=2, actors=True,
                    extra=("--risk-rules", str(rules), "--order-ip-limit", "100000")).start()
    yield server
    server.stop()


# --- helpers -------------------------------------------------------------------------------------------------------

def call(server, method, path, body=None, key=None, status=200):
    reply = server.request(method, path, body, key=key)
    assert reply.status == status, (method, path, reply.status, reply.body[:300])
    assert not any(number.encode() in reply.body for number in NUMBERS), reply.body[:300]
    return reply.json()


def merchant(server, tier: str = "premium") -> str:
    """A fresh merchant's API key."""
    name = f"shop-{uuid.uuid4().hex[:8]}"
    return call(server, "POST", "/v1/merchants", {"name": name, "email": f"{name}@example.com", "tier": tier},
                key=server.admin_token)["api_key"]


def new_card() -> str:
    """A Luhn-valid visa number no other test uses (the simulated acquirer approves it)."""
    digits = "4" + "".join(random.choice("0123456789") for _ in range(14))
    total = sum(int(d) if i % 2 else (2 * int(d) - 9 if int(d) > 4 else 2 * int(d))
                for i, d in enumerate(reversed(digits)))
    number = digits + str(-total % 10)
    NUMBERS.append(number)
    return number


def card(number: str) -> dict:
    return {"type": "card", "card": {"number": number, **EXPIRY, "cvc": "123"}}


def pay(server, key, method: dict, **fields) -> dict:
    body = {"payment_method": method, **fields}
    if "order_id" not in fields:
        body = {"amount": 1000, "currency": "usd", **body}
    return call(server, "POST", "/v1/payments", body, key=key)


def refused(payment: dict, reason: str) -> bool:
    return (payment["status"], payment["failure_code"], payment["failure_message"]) == ("failed", "risk_rejected",
                                                                                       reason)


def until_refused(attempt, reason: str, timeout_s: float = 10) -> dict:
    """Pay again until the table has caught up and the payment is refused for `reason`."""
    deadline = time.monotonic() + timeout_s
    while True:
        payment = attempt()
        if payment["status"] == "failed":
            assert refused(payment, reason), payment
            return payment
        assert time.monotonic() < deadline, f"not refused for {reason!r} in {timeout_s} s: {payment}"
        time.sleep(0.2)


def settled(server, key, payment: dict) -> dict:
    """The payment once the acquirer has answered (or at once if it never went there)."""
    deadline = time.monotonic() + 10
    while payment["status"] == "processing":
        assert time.monotonic() < deadline, payment
        time.sleep(0.1)
        payment = call(server, "GET", f"/v1/payments/{payment['id']}", key=key)
    return payment


def block(server, **entry) -> dict:
    return call(server, "POST", "/v1/risk/blocklist", entry, key=server.admin_token)


def stop_by_sigterm(server) -> None:
    """As `kill`, systemd or docker stop it: exit code 0, no traceback, no shard process left behind."""
    shard_pids = [json.loads((shard_folder(server.data, shard) / "shard.json").read_text())["pid"]
                  for shard in range(server.shards)]
    os.kill(server.process.pid, signal.SIGTERM)
    assert server.process.wait(60) == 0, "".join(server.output)
    server.stop()  # gathers what it printed last
    assert "Traceback" not in "".join(server.output), "".join(server.output)
    for pid in shard_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --- the block list ------------------------------------------------------------------------------------------------

def test_a_blocked_card_is_refused_everywhere_with_the_reason_and_its_token_too(server):
    key, other_key = merchant(server), merchant(server)
    number = new_card()
    created = pay(server, key, card(number))
    assert settled(server, key, created)["status"] == "succeeded"
    fingerprint = created["payment_method"]["fingerprint"]
    assert len(fingerprint) == 24 and fingerprint not in number
    assert pay(server, other_key, card(number))["payment_method"]["fingerprint"] == fingerprint  # the same card
    entry = block(server, kind="card_fingerprint", value=fingerprint, reason="reported stolen")
    assert (entry["kind"], entry["value"], entry["merchant_id"], entry["deleted"]) == (
        "card_fingerprint", fingerprint, None, False)
    reason = "card on the block list: reported stolen"
    refusal = until_refused(lambda: pay(server, other_key, card(number)), reason)
    assert (refusal["amount_captured"], refusal["payment_method"]["fingerprint"]) == (0, fingerprint)
    time.sleep(1)  # no acquirer was asked: nothing comes back to change it
    later = call(server, "GET", f"/v1/payments/{refusal['id']}", key=other_key)
    assert [later[name] for name in ("status", "failure_message", "updated_at")] == [
        refusal[name] for name in ("status", "failure_message", "updated_at")]
    assert refused(pay(server, key, {"type": "card", "token": created["payment_method"]["token"]}), reason)
    the_order = call(server, "POST", "/v1/orders", {"name": "Tea", "amount": 700, "currency": "usd"}, key=key)
    assert refused(pay(server, key, card(number), order_id=the_order["id"]), reason)
    after = call(server, "GET", f"/v1/orders/{the_order['id']}", key=key)
    assert (after["status"], after["error_code"], after["error_message"]) == ("pending", "risk_rejected", reason)
    # other cards are not touched, and the order can still be paid
    paid = settled(server, key, pay(server, key, card(new_card()), order_id=the_order["id"]))
    assert paid["status"] == "succeeded"
    # off the list, the card pays again (at a merchant where its refused attempts have not reached the limit)
    call(server, "DELETE", f"/v1/risk/blocklist/{entry['id']}", key=server.admin_token)
    deadline = time.monotonic() + 10
    while pay(server, merchant(server), card(number))["status"] == "failed":
        assert time.monotonic() < deadline, "the card stayed refused after its block was removed"
        time.sleep(0.2)


def test_a_blocked_ip_address_is_refused_whatever_its_spelling(server):
    key = merchant(server)
    block(server, kind="ip", value="2001:db8::7")
    reason = "IP address on the block list"
    until_refused(lambda: pay(server, key, card(new_card()), customer_ip="2001:0db8:0:0:0:0:0:7"), reason)
    assert pay(server, key, card(new_card()), customer_ip="2001:db8::8")["status"] == "processing"
    assert pay(server, key, card(new_card()))["status"] == "processing"  # no address given: nothing to match


def test_blocked_emails_and_customers_refuse_their_orders_payments(server):
    key = merchant(server)
    merchant_id = call(server, "GET", "/v1/merchants/me", key=key)["id"]
    block(server, kind="email", value="Mallory@Example.com")
    block(server, kind="customer", value="c-13", merchant_id=merchant_id, reason="chargebacks")

    def order(**customer) -> str:
        return call(server, "POST", "/v1/orders", {"name": "Tea", "amount": 700, "currency": "usd", **customer},
                    key=key)["id"]

    until_refused(lambda: pay(server, key, card(new_card()), order_id=order(customer_email="mallory@example.COM")),
                  "email address on the block list")
    until_refused(lambda: pay(server, key, card(new_card()), order_id=order(customer_id="c-13")),
                  "customer on the block list: chargebacks")
    # the same customer id at another merchant is another customer
    other_key = merchant(server)
    the_order = call(server, "POST", "/v1/orders", {"name": "Tea", "amount": 700, "currency": "usd",
                                                    "customer_id": "c-13"}, key=other_key)
    assert pay(server, other_key, card(new_card()), order_id=the_order["id"])["status"] == "processing"


def test_the_block_list_over_http(server):
    admin = server.admin_token
    entry = block(server, kind="email", value="Eve@Example.com", reason="phishing")
    assert (entry["object"], entry["value"], entry["reason"]) == ("blocklist_entry", "eve@example.com", "phishing")
    assert entry["id"].startswith("blk_") and entry["created_at"].endswith("Z")
    listed = call(server, "GET", "/v1/risk/blocklist?limit=100", key=admin)
    assert entry in listed["data"] and listed["object"] == "list"
    problem = call(server, "POST", "/v1/risk/blocklist", {"kind": "email", "value": "eve@example.com"}, key=admin,
                   status=409)["error"]
    assert problem["code"] == "resource_exists"
    for body, param in (({"kind": "ip", "value": "300.1.2.3"}, "value"),
                        ({"kind": "customer", "value": "c-1"}, "merchant_id"),
                        ({"kind": "card_fingerprint", "value": "4242424242424242"}, "value"),
                        ({"kind": "phone", "value": "123"}, "kind")):
        problem = call(server, "POST", "/v1/risk/blocklist", body, key=admin, status=400)["error"]
        assert problem["param"] == param, problem
    problem = call(server, "POST", "/v1/risk/blocklist", {"kind": "customer", "value": "c-1",
                                                          "merchant_id": "mer_nobody"}, key=admin, status=404)["error"]
    assert problem["param"] == "merchant_id"
    call(server, "GET", "/v1/risk/blocklist", key=merchant(server), status=403)
    deleted = call(server, "DELETE", f"/v1/risk/blocklist/{entry['id']}", key=admin)
    assert deleted == {**entry, "deleted": True}
    call(server, "DELETE", f"/v1/risk/blocklist/{entry['id']}", key=admin, status=404)
    assert entry["id"] not in [item["id"] for item in call(server, "GET", "/v1/risk/blocklist?limit=100",
                                                           key=admin)["data"]]


# --- velocity ------------------------------------------------------------------------------------------------------

def test_too_many_attempts_with_one_card_are_refused_at_that_merchant_only(server):
    key, other_key = merchant(server), merchant(server)
    number = new_card()
    for _ in range(CARD_ATTEMPTS):
        assert pay(server, key, card(number))["status"] == "processing"
    refusal = until_refused(lambda: pay(server, key, card(number)), CARD_LIMIT_REASON)
    assert refusal["payment_method"]["card"]["last4"] == number[-4:]
    assert pay(server, key, card(new_card()))["status"] == "processing"  # another card
    assert pay(server, other_key, card(number))["status"] == "processing"  # another merchant


def test_the_acquirers_test_cards_keep_their_outcomes_however_often_used_but_can_be_blocked(server):
    """As in a PSP's test mode: the published test numbers are not held to attempt counts (the contract says
    4242424242424242 succeeds), yet the block list applies to them like to any card."""
    key = merchant(server)
    test_card = "4242424242424242"
    payments = [pay(server, key, card(test_card)) for _ in range(CARD_ATTEMPTS + 3)]
    time.sleep(1)  # the table has caught up with the attempts by now: still none refused
    payments.append(pay(server, key, card(test_card)))
    assert [settled(server, key, payment)["status"] for payment in payments] == ["succeeded"] * len(payments)
    entry = block(server, kind="card_fingerprint", value=payments[0]["payment_method"]["fingerprint"],
                  merchant_id=call(server, "GET", "/v1/merchants/me", key=key)["id"], reason="test block")
    until_refused(lambda: pay(server, key, card(test_card)), "card on the block list: test block")
    call(server, "DELETE", f"/v1/risk/blocklist/{entry['id']}", key=server.admin_token)


def test_a_bad_customer_ip_is_400(server):
    key = merchant(server)
    body = {"amount": 100, "currency": "usd", "payment_method": card(new_card()), "customer_ip": "not-an-address"}
    problem = call(server, "POST", "/v1/payments", body, key=key, status=400)["error"]
    assert (problem["code"], problem["param"]) == ("parameter_invalid", "customer_ip")


# --- amount limits per tier ----------------------------------------------------------------------------------------

def test_an_amount_over_the_tier_limit_is_refused(server):
    basic, premium = merchant(server, "basic"), merchant(server, "premium")
    over = BASIC_USD_LIMIT + 1
    reason = f"the amount {over} usd is above the basic tier's limit of {BASIC_USD_LIMIT}"
    assert refused(pay(server, basic, card(new_card()), amount=over), reason)
    assert settled(server, basic, pay(server, basic, card(new_card()), amount=BASIC_USD_LIMIT))["status"] == "succeeded"
    # a currency the rules file leaves out keeps its default limit (1,000 USD or about as much), in its minor units
    vnd_reason = "the amount 25000001 vnd is above the basic tier's limit of 25000000"
    assert refused(pay(server, basic, card(new_card()), amount=25_000_001, currency="vnd"), vnd_reason)
    assert pay(server, basic, card(new_card()), amount=25_000_000, currency="vnd")["status"] == "processing"
    assert pay(server, basic, card(new_card()), amount=1_600_000_001, currency="idr")["failure_code"] == "risk_rejected"
    assert pay(server, premium, card(new_card()), amount=over)["status"] == "processing"
    # through an order, and from a wallet: the order's amount counts
    the_order = call(server, "POST", "/v1/orders", {"name": "Bike", "amount": over, "currency": "usd"}, key=basic)
    assert refused(pay(server, basic, card(new_card()), order_id=the_order["id"]), reason)
    customer = call(server, "POST", "/v1/customers", {"email": "ann@example.com"}, key=basic)
    call(server, "POST", f"/v1/customers/{customer['id']}/adjustments",
         {"amount": 2 * over, "currency": "usd", "reason": "test funds"}, key=server.admin_token)
    from_wallet = pay(server, basic, {"type": "wallet", "customer_id": customer["id"]}, order_id=the_order["id"])
    assert refused(from_wallet, reason) and from_wallet["payment_method"]["type"] == "wallet"
    wallet = call(server, "GET", f"/v1/customers/{customer['id']}/wallet", key=basic)
    assert wallet["balances"] == [{"currency": "usd", "balance": 2 * over, "available": 2 * over}]
    assert call(server, "GET", f"/v1/orders/{the_order['id']}", key=basic)["status"] == "pending"


# --- what the risk actor keeps -------------------------------------------------------------------------------------

def test_counts_and_blocks_outlive_a_stop_by_sigterm_and_a_start(server):
    key = merchant(server)
    number = new_card()
    first = pay(server, key, card(number))
    for _ in range(CARD_ATTEMPTS - 1):
        pay(server, key, card(number))
    until_refused(lambda: pay(server, key, card(number)), CARD_LIMIT_REASON)
    block(server, kind="ip", value="192.0.2.99", reason="botnet")
    time.sleep(1.5)  # the actor saves its counts at most a second after they change
    stop_by_sigterm(server)
    server.start()
    assert call(server, "GET", f"/v1/payments/{first['id']}", key=key)["id"] == first["id"]
    assert refused(pay(server, key, card(number)), CARD_LIMIT_REASON)  # the first attempt after the restart
    until_refused(lambda: pay(server, key, card(new_card()), customer_ip="192.0.2.99"),
                  "IP address on the block list: botnet")
    assert pay(server, key, card(new_card()))["status"] == "processing"


def test_the_risk_files_hold_no_card_number(server):
    folder = server.data / "risk"
    deadline = time.monotonic() + 5
    while not (folder / "state.msgpack").exists():  # saved at most a second after the last payment
        assert time.monotonic() < deadline, list(folder.iterdir())
        time.sleep(0.1)
    files = [path for path in folder.iterdir() if path.is_file()]
    assert {path.name for path in files} >= {"table.msgpack", "state.msgpack"}
    assert NUMBERS, "run with the tests that pay"
    for path in files:
        content = path.read_bytes()
        assert not [number for number in NUMBERS if number.encode() in content], path
