"""The Idempotency-Key's request fingerprint: keyed, without card number or CVC, and still matching records made
before it (a plain SHA-256 of the whole request) for the 24 hours such keys live."""

import asyncio
import hashlib

import orjson
import pytest

from actors.merchant_secrets import Secrets
from edge.http import RequestFingerprints
from journal.client import ShardClient
from journal.processes import running_address, running_key
from engine.records import CreateCustomer, Customer, Idempotent

from edge_harness import Server

VISA, MASTERCARD = "4242424242424242", "5555555555554444"
KEY = bytes(range(32))


def payment(number=VISA, cvc="123", **fields) -> bytes:
    card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": cvc, "holder_name": "A"}
    return orjson.dumps({"amount": 100, "currency": "usd", "payment_method": {"type": "card", "card": card}, **fields})


@pytest.fixture
def fingerprints():
    return RequestFingerprints(KEY, Secrets(bytes(32)).card_fingerprint)


def test_requests_differing_only_in_cvc_or_spacing_of_the_number_store_the_same_fingerprint(fingerprints):
    first = fingerprints.of("POST", "/v1/payments", payment(cvc="123"))
    assert first.startswith("hmac-sha256:")
    assert fingerprints.of("POST", "/v1/payments", payment(cvc="999")) == first
    assert fingerprints.of("POST", "/v1/payments", payment(number="4242 4242 4242 4242", cvc="000")) == first


def test_another_card_amount_path_or_key_is_another_fingerprint(fingerprints):
    first = fingerprints.of("POST", "/v1/payments", payment())
    assert fingerprints.of("POST", "/v1/payments", payment(number=MASTERCARD)) != first
    assert fingerprints.of("POST", "/v1/payments", payment(amount=101)) != first
    assert fingerprints.of("POST", "/v1/customers/cus_a/deposits", payment()) != first
    other_key = RequestFingerprints(bytes(32), Secrets(bytes(32)).card_fingerprint)
    assert other_key.of("POST", "/v1/payments", payment()) != first


def test_a_fingerprint_is_not_the_unkeyed_hash_of_any_spelling_of_the_request(fingerprints):
    fingerprint = fingerprints.of("POST", "/v1/payments", payment())
    assert hashlib.sha256(b"POST /v1/payments\n" + payment()).hexdigest() not in fingerprint


def test_a_password_is_left_out_of_the_fingerprint(fingerprints):
    user = {"email": "a@example.com", "password": "correct horse battery"}
    first = fingerprints.of("POST", "/v1/merchants/mer_a/dashboard_users", orjson.dumps(user))
    assert first == fingerprints.of("POST", "/v1/merchants/mer_a/dashboard_users",
                                    orjson.dumps({**user, "password": "another long password"}))
    assert first != fingerprints.of("POST", "/v1/merchants/mer_a/dashboard_users",
                                    orjson.dumps({**user, "email": "b@example.com"}))


def test_a_body_that_is_not_a_json_object_is_fingerprinted_as_it_is(fingerprints):
    assert fingerprints.of("POST", "/v1/transfers", b"[1, 2]") != fingerprints.of("POST", "/v1/transfers", b"[2, 1]")
    assert fingerprints.of("POST", "/v1/x", b"not json") != fingerprints.of("POST", "/v1/x", b"")


def test_a_short_key_is_refused():
    with pytest.raises(ValueError):
        RequestFingerprints(b"short", str)


def test_a_key_recorded_before_keyed_fingerprints_replays_its_request_and_refuses_another(tmp_path):
    server = Server(tmp_path / "data").start()
    try:
        body = {"email": "old@example.com", "name": "Old"}
        unkeyed = hashlib.sha256(b"POST /v1/customers\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        first = Customer(id="cus_recordedbefore", merchant_id="mer_demo", email=body["email"], name=body["name"])

        async def record_the_old_way() -> None:
            client = ShardClient([running_address(tmp_path / "data" / "shard-0")], running_key(tmp_path / "data" / "shard-0"))
            try:
                await client.submit([Idempotent(merchant_id="mer_demo", key="old-key",
                                                request_hash=unkeyed.hexdigest(), command=CreateCustomer(first))])
            finally:
                client.close()

        asyncio.run(record_the_old_way())
        headers = {"Idempotency-Key": "old-key"}
        replay = server.request("POST", "/v1/customers", {"name": "Old", "email": "old@example.com"},
                                key=server.demo_key, headers=headers)
        assert (replay.status, replay.json()["id"], replay.headers["Idempotent-Replayed"]) == (
            200, "cus_recordedbefore", "true")
        other = server.request("POST", "/v1/customers", {**body, "name": "New"}, key=server.demo_key, headers=headers)
        assert (other.status, other.json()["error"]["code"]) == (409, "idempotency_key_reused")
        fresh = {"Idempotency-Key": "new-key"}
        created = server.request("POST", "/v1/customers", body, key=server.demo_key, headers=fresh)
        again = server.request("POST", "/v1/customers", body, key=server.demo_key, headers=fresh)
        assert created.status == again.status == 200 and again.json()["id"] == created.json()["id"]
        assert (server.data / "request_fingerprint.key").stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()
