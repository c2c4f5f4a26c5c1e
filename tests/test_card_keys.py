"""The card key ring and `paygate rotate-kek`: cards sealed again under a new key through a journaled command, old
keys retired, the journal still replaying clean, and a card whose key is gone a clear 4xx."""

import os
import subprocess
import sys

import pytest

from edge import cards
from edge_harness import Server
from engine.payments import MAX_RESEALED_CARDS
from engine.queries import ListCards
from engine.records import CardDetails, CreateMerchant, CreatePayment, Merchant, Payment, ResealCards, ResealedCard
from ledger_helpers import Driver

VISA = "4242424242424242"
CARD = {"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "123", "holder_name": "Ada"}


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_the_first_key_is_made_once_and_a_new_key_seals_while_old_cards_still_open(tmp_path):
    ring = cards.KeyRing.load(tmp_path)
    assert cards.KeyRing.load(tmp_path).current.key_id == ring.current.key_id
    assert mode(tmp_path / "card_kek.key") == 0o600
    old_card = cards.seal(ring.current, VISA, 12, 2030)
    new = cards.add_key(tmp_path)
    ring = cards.KeyRing.load(tmp_path)
    assert ring.current.key_id == new.key_id and mode(tmp_path / "card_keys" / "00000001.key") == 0o600
    assert cards.open_card(ring, old_card) == VISA
    resealed = cards.reseal(ring, old_card)
    assert resealed.key_id == new.key_id and resealed.last4 == "4242" and resealed.ciphertext != old_card.ciphertext
    assert cards.retire_keys(tmp_path, new) == [old_card.key_id]
    ring = cards.KeyRing.load(tmp_path)
    assert ring.key_ids() == [new.key_id] and not (tmp_path / "card_kek.key").exists()
    assert cards.open_card(ring, resealed) == VISA
    with pytest.raises(cards.CardUnavailable) as raised:
        cards.open_card(ring, old_card)
    assert VISA not in str(raised.value)


def test_a_ring_of_too_many_keys_or_a_short_key_is_refused(tmp_path):
    (tmp_path / "card_kek.key").write_bytes(b"short")
    with pytest.raises(ValueError):
        cards.KeyRing.load(tmp_path)
    (tmp_path / "card_kek.key").write_bytes(bytes(32))
    (tmp_path / "card_keys").mkdir()
    for generation in range(1, cards.MAX_KEYS + 1):
        (tmp_path / "card_keys" / f"{generation:08d}.key").write_bytes(os.urandom(32))
    with pytest.raises(ValueError):
        cards.KeyRing.load(tmp_path)


def test_reseal_cards_replaces_only_the_sealing_it_read_and_survives_a_snapshot():
    driver = Driver()
    driver.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")))
    for token in ("tok_a", "tok_b"):
        payment = Payment(id=f"pay_{token}", merchant_id="m1", amount=100, currency="usd", method="card",
                          token_id=token, card=CardDetails("visa", "4242", 12, 2030))
        driver.ok(CreatePayment(payment=payment, sealed_card=f"old {token}".encode()))
    driver.ok(ResealCards([ResealedCard("tok_a", b"old tok_a", b"new tok_a"),
                           ResealedCard("tok_b", b"something else", b"new tok_b"),
                           ResealedCard("tok_missing", b"", b"new")]))
    for engine in (driver, driver.restored()):
        listed = {token: vaulted.sealed for token, vaulted in engine.query(ListCards(0, 10)).cards}
        assert listed == {"tok_a": b"new tok_a", "tok_b": b"old tok_b"}
    assert [token for token, _ in driver.query(ListCards(1, 10)).cards] == ["tok_b"]
    too_many = [ResealedCard("tok_a", b"new tok_a", b"x")] * (MAX_RESEALED_CARDS + 1)
    assert driver.do(ResealCards(too_many)).code == "too_many_cards"


def test_cards_are_paged_by_position_from_an_index_that_restore_rebuilds():
    driver = Driver()
    driver.ok(CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")))
    tokens = [f"tok_{number:03d}" for number in range(25)]
    for token in tokens:
        payment = Payment(id=f"pay_{token}", merchant_id="m1", amount=100, currency="usd", method="card",
                          token_id=token, card=CardDetails("visa", "4242", 12, 2030))
        driver.ok(CreatePayment(payment=payment, sealed_card=token.encode()))
    # A payment refused (its id is taken) vaults nothing: the index keeps no position for it.
    again = Payment(id="pay_tok_000", merchant_id="m1", amount=100, currency="usd", method="card",
                    token_id="tok_new", card=CardDetails("visa", "4242", 12, 2030))
    driver.refused(CreatePayment(payment=again, sealed_card=b"x"), "exists")
    for engine in (driver, driver.restored()):
        payments = engine.engine.commerce.payments
        assert list(payments.card_ids.values()) == list(payments.cards) == tokens  # position -> token, in order
        walked = [token for start in range(0, 30, 7) for token, _ in engine.query(ListCards(start, 7)).cards]
        assert walked == tokens
        assert engine.query(ListCards(24, 7)).cards == [("tok_024", payments.cards["tok_024"])]


def paygate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=300)


def pay(server, body: dict, key: str, status: int = 200) -> dict:
    response = server.request("POST", "/v1/payments", {"amount": 1000, "currency": "usd", **body}, key=key,
                              headers={"Idempotency-Key": os.urandom(8).hex()})
    assert response.status == status, response.body[:300]
    return response.json()


def test_rotate_kek_reseals_every_card_through_the_journal_and_retires_the_old_key(tmp_path):
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        tokens = [pay(server, {"payment_method": {"type": "card", "card": {**CARD, "cvc": str(100 + n)}}},
                      server.demo_key)["payment_method"]["token"] for n in range(3)]
        old_key_id = cards.KeyRing.load(data).current.key_id
        rotated = paygate("rotate-kek", "--data", str(data))
        assert rotated.returncode == 0, rotated.stderr
        assert "resealed=3" in rotated.stdout and f"retired={old_key_id}" in rotated.stdout
        assert not (data / "card_kek.key").exists() and len(list((data / "card_keys").iterdir())) == 1
        for token in tokens:  # a saved card opens under the new key: it gets as far as the (absent) acquirer
            assert pay(server, {"payment_method": {"type": "card", "token": token}}, server.demo_key)["status"]
        # the edge workers took up the new key: a card saved now opens, its old key being gone
        fresh = pay(server, {"payment_method": {"type": "card", "card": CARD}}, server.demo_key)
        pay(server, {"payment_method": {"type": "card", "token": fresh["payment_method"]["token"]}}, server.demo_key)
    finally:
        server.stop()
    verified = paygate("verify", "--data", str(data))
    assert verified.returncode == 0 and " ok " in verified.stdout, verified.stdout + verified.stderr
    for key_file in (data / "card_keys").iterdir():  # paygate has lost its key: the saved cards cannot open
        key_file.unlink()
    server = Server(data).start()
    try:
        lost = pay(server, {"payment_method": {"type": "card", "token": tokens[0]}}, server.demo_key, status=422)
        assert lost["error"]["code"] == "card_key_unavailable" and lost["error"]["param"] == "payment_method.token"
    finally:
        server.stop()


def test_rotate_kek_without_a_running_serve_changes_no_key(tmp_path):
    data = tmp_path / "data"
    Server(data).start().stop()
    before = sorted(path.name for path in data.iterdir())
    rotated = paygate("rotate-kek", "--data", str(data))
    assert rotated.returncode == 1 and len(rotated.stderr.strip().splitlines()) == 1
    assert sorted(path.name for path in data.iterdir()) == before
