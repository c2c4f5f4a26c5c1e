"""Merchants' credential sets in the engine (rotation, grace, revocation, last use) and the window of signed
requests that refuses a copy of one, kept in snapshots."""

import msgspec
import pytest

from engine import Engine
from engine.credentials import INITIAL_CREDENTIAL_ID, MAX_CREDENTIALS, live_sets
from engine.queries import GetMerchant
from engine.records import CreateMerchant, CreateOrder, Credential, Idempotent, Merchant, Order, RotateCredentials, \
    Signed, TouchCredentials
from engine.types import NANOSECONDS_PER_SECOND as S
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S
DAY_S = 86400


def legacy_merchant(mid: str = "m1") -> Merchant:
    """A merchant as journals before credential sets hold it: derived secrets, two of them in clear."""
    return Merchant(id=mid, name="Shop", email="shop@example.com", api_key_hash=f"akh-{mid}", client_id=f"cli_{mid}",
                    client_secret_hash=f"csh-{mid}", signing_secret="sig_clear", webhook_secret="whsec_clear")


def rotation(credential_id: str, expires_in_s: int = DAY_S, mid: str = "m1") -> RotateCredentials:
    return RotateCredentials(merchant_id=mid, expires_in_s=expires_in_s, credential=Credential(
        id=credential_id, api_key_hash=f"akh-{credential_id}", client_secret_hash=f"csh-{credential_id}",
        sealed_signing_secret=b"sealed-sig", sealed_webhook_secret=b"sealed-wh"))


def order(oid: str) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id="m1", name=oid, amount=10, currency="USD"))


def signed(command, digest: str = "d1", expires_at: int = T0 + 400 * S) -> Signed:
    return Signed(merchant_id="m1", message_digest=digest, expires_at=expires_at, command=command)


@pytest.fixture
def shop() -> Driver:
    shop = Driver()
    shop.ok(CreateMerchant(legacy_merchant()), at=T0)
    return shop


def merchant_of(shop: Driver, mid: str = "m1") -> Merchant:
    return shop.query(GetMerchant(merchant_id=mid)).record


def live_ids(shop: Driver, at: int) -> list[str]:
    return [credential.id for credential in live_sets(merchant_of(shop), at)]


def test_a_merchant_never_rotated_has_its_derived_set_alone(shop):
    assert live_ids(shop, T0) == [INITIAL_CREDENTIAL_ID]
    assert live_sets(merchant_of(shop), T0)[0].api_key_hash == "akh-m1"


def test_a_rotation_keeps_the_old_set_for_its_grace_then_only_the_new_one(shop):
    outcome = shop.do(rotation("key_2", expires_in_s=60))
    assert outcome.code == "ok"
    rotated_at = shop.now
    assert live_ids(shop, rotated_at) == ["key_2", INITIAL_CREDENTIAL_ID]
    assert live_ids(shop, rotated_at + 60 * S - 1) == ["key_2", INITIAL_CREDENTIAL_ID]
    assert live_ids(shop, rotated_at + 60 * S) == ["key_2"]
    stored = merchant_of(shop)
    # the legacy clear secrets go with the first rotation: the edge derives the first set's
    assert (stored.signing_secret, stored.webhook_secret) == ("", "")
    assert stored.credentials[1].created_at == rotated_at


def test_zero_grace_revokes_every_older_set_at_once(shop):
    shop.ok(rotation("key_2"))
    shop.ok(rotation("key_3", expires_in_s=0))
    assert live_ids(shop, shop.now) == ["key_3"]
    assert [credential.id for credential in merchant_of(shop).credentials] == ["key_3"]  # revoked sets are dropped


def test_a_shorter_grace_never_lengthens_an_earlier_one(shop):
    shop.ok(rotation("key_2", expires_in_s=10))
    first = shop.now
    shop.ok(rotation("key_3", expires_in_s=DAY_S))
    assert live_ids(shop, first + 10 * S) == ["key_3", "key_2"]


@pytest.mark.parametrize("command, code", [
    (rotation("key_2", mid="m9"), "merchant_not_found"),
    (rotation("key_2", expires_in_s=-1), "expires_in_invalid"),
    (rotation("key_2", expires_in_s=31 * DAY_S), "expires_in_invalid"),
    (rotation(INITIAL_CREDENTIAL_ID), "exists"),
    (rotation("not_a_key"), "credential_id_invalid"),
    (rotation("key_" + "x" * 300), "credential_id_invalid"),
])
def test_rotations_refused_change_nothing(shop, command, code):
    shop.refused(command, code)


def test_only_the_newest_set_or_the_admin_may_rotate(shop):
    shop.ok(rotation("key_2"))
    asked_by_old = rotation("key_3")
    asked_by_old.requested_by = INITIAL_CREDENTIAL_ID
    shop.refused(asked_by_old, "credential_in_grace")
    asked_by_new = rotation("key_3", expires_in_s=0)
    asked_by_new.requested_by = "key_2"
    shop.ok(asked_by_new)
    shop.ok(rotation("key_4"))  # the admin asks for nobody's set


def test_at_most_ten_live_sets(shop):
    for number in range(2, MAX_CREDENTIALS + 1):
        shop.ok(rotation(f"key_{number}"))
    shop.refused(rotation("key_11"), "credential_limit_reached")
    shop.ok(rotation("key_11", expires_in_s=0))  # revoking the others makes room
    assert live_ids(shop, shop.now) == ["key_11"]


def test_touch_stamps_the_last_use_with_the_batch_time_and_ignores_unknown_sets(shop):
    shop.ok(rotation("key_2"))
    shop.ok(TouchCredentials([("m1", "key_2"), ("m1", "key_gone"), ("m9", "key_2")]))
    stamped = {credential.id: credential.last_used_at for credential in merchant_of(shop).credentials}
    assert stamped == {INITIAL_CREDENTIAL_ID: 0, "key_2": shop.now}


def test_touching_a_merchant_never_rotated_stores_its_first_set(shop):
    shop.ok(TouchCredentials([("m1", INITIAL_CREDENTIAL_ID)]))
    stored = merchant_of(shop)
    assert [(c.id, c.last_used_at) for c in stored.credentials] == [(INITIAL_CREDENTIAL_ID, shop.now)]
    assert stored.signing_secret == ""


def test_a_signed_message_is_applied_once_within_its_window(shop):
    assert shop.do(signed(order("o1")), at=T0 + S).code == "ok"
    replay = shop.do(signed(order("o2")), at=T0 + 2 * S)
    assert replay.code == "signature_replayed"
    assert shop.do(signed(order("o3"), digest="d2"), at=T0 + 3 * S).code == "ok"
    # once its window is over, the timestamp it signs is refused at the edge, and the engine forgets it
    assert shop.do(signed(order("o4")), at=T0 + 400 * S).code == "ok"


def test_an_idempotent_retry_of_a_signed_request_answers_its_first_outcome(shop):
    first = shop.do(Idempotent(merchant_id="m1", key="k1", request_hash="h", command=signed(order("o1"))))
    again = shop.do(Idempotent(merchant_id="m1", key="k1", request_hash="h", command=signed(order("o1"))))
    assert (first.code, again.code, again.replayed) == ("ok", "ok", True)
    other_key = shop.do(Idempotent(merchant_id="m1", key="k2", request_hash="h", command=signed(order("o2"))))
    assert other_key.code == "signature_replayed"
    # a refusal of the moment is not the key's answer: the same key, signed anew, is tried again
    signed_anew = shop.do(Idempotent(merchant_id="m1", key="k2", request_hash="h",
                                     command=signed(order("o2"), digest="d2")))
    assert (signed_anew.code, signed_anew.replayed) == ("ok", False)


def test_a_rotation_that_raises_later_in_its_command_leaves_the_older_sets_as_they_were(shop):
    assert shop.do(rotation("key_2")).code == "ok"
    before = shop.engine.state_hash()
    key = Idempotent(merchant_id="m1", key="k-rotate", request_hash="h", command=rotation("key_3", expires_in_s=0))
    shop.engine.commerce.idempotency.remember = lambda *arguments: 1 / 0  # a bug after the sets were replaced
    assert shop.do(key).code == "internal_error"
    assert shop.engine.state_hash() == before


def test_an_oversized_rotation_or_digest_is_refused(shop):
    oversized = rotation("key_2")
    oversized.credential.sealed_signing_secret = b"x" * 300
    shop.refused(oversized, "credential_invalid")
    assert shop.do(signed(order("o1"), digest="d" * 300)).code == "signature_invalid"


def test_signed_ledger_commands_answer_their_codes(shop):
    from engine.types import Account, CreateAccounts
    outcome = shop.do(signed(CreateAccounts([Account("m1:a", "USD")])))
    assert (outcome.code, outcome.codes) == ("ok", [0])


def test_signatures_and_sets_survive_a_snapshot_and_replay_the_same(shop):
    shop.ok(rotation("key_2"), signed(order("o1")))
    restored = shop.restored()
    assert restored.engine.state_hash() == shop.engine.state_hash()
    assert restored.do(signed(order("o2"))).code == "signature_replayed"
    assert [c.id for c in merchant_of(restored).credentials] == [INITIAL_CREDENTIAL_ID, "key_2"]


def test_commands_decode_from_the_wire_as_sent(shop):
    decoder = msgspec.msgpack.Decoder(Idempotent)
    command = Idempotent(merchant_id="m1", key="k", request_hash="h", command=signed(rotation("key_2")))
    assert decoder.decode(msgspec.msgpack.encode(command)) == command


def test_a_snapshot_from_before_signatures_and_sets_restores(shop):
    fields = msgspec.msgpack.decode(shop.engine.snapshot())
    del fields[8][0]["credentials"]  # merchants as written before sets existed
    older = msgspec.msgpack.encode(fields[:-1])  # and no signatures field at all
    restored = Engine.restore(older)
    assert restored.commerce.credentials.signatures == {}
    assert [c.id for c in live_sets(restored.commerce.merchants.by_id["m1"], T0)] == [INITIAL_CREDENTIAL_ID]
