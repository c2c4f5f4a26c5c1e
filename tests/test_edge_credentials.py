"""The edge's side of credential sets: sealed secrets, which set a key or secret is of, and the webhook signature
header that carries a signature per live webhook secret while a rotation's grace lasts."""

import hashlib
import hmac
import os

from actors.merchant_secrets import MerchantSecrets, SecretSealer, Secrets, seal_context
from edge.auth import hash_secret
from edge.credentials import api_key_set, client_secret_set, set_live
from engine.credentials import INITIAL_CREDENTIAL_ID
from engine.records import Credential, Merchant
from engine.types import NANOSECONDS_PER_SECOND as S

NOW_S = 1_700_000_000
NOW = NOW_S * S
BODY = b'{"id":"evt_1"}'
DERIVED = Secrets(b"k" * 32)
SEALER = SecretSealer(os.urandom(32))


def merchant_rotated(grace_ends: int) -> Merchant:
    """mer_a, its derived first set in its grace until `grace_ends`, and set key_2 with sealed secrets."""
    credentials = [
        Credential(id=INITIAL_CREDENTIAL_ID, api_key_hash=hash_secret(DERIVED.api_key("mer_a")),
                   client_secret_hash=hash_secret(DERIVED.client_secret("mer_a")), expires_at=grace_ends),
        Credential(id="key_2", api_key_hash=hash_secret("sk_mer_a_new"), client_secret_hash=hash_secret("cs_new"),
                   sealed_signing_secret=SEALER.seal("sig_new", seal_context("mer_a", "key_2", "signing")),
                   sealed_webhook_secret=SEALER.seal("whsec_new", seal_context("mer_a", "key_2", "webhook"))),
    ]
    return Merchant(id="mer_a", name="A", email="a@example.com", client_id="cli_mer_a", credentials=credentials)


def v1(secret: str) -> str:
    return hmac.new(secret.encode(), f"{NOW_S}.".encode() + BODY, hashlib.sha256).hexdigest()


def test_a_sealed_secret_opens_only_with_its_key_and_for_its_context():
    sealed = SEALER.seal("sig_x", "mer_a/key_2/signing")
    assert b"sig_x" not in sealed
    assert SEALER.unseal(sealed, "mer_a/key_2/signing") == "sig_x"
    assert SEALER.unseal(sealed, "mer_b/key_2/signing") is None  # moved to another merchant
    assert SecretSealer(os.urandom(32)).unseal(sealed, "mer_a/key_2/signing") is None  # another key
    assert SEALER.unseal(sealed[:-1], "mer_a/key_2/signing") is None
    assert SEALER.unseal(b"", "mer_a/key_2/signing") is None


def test_the_sealing_key_is_created_once_owner_only(tmp_path):
    path = tmp_path / "credentials.key"
    sealed = SecretSealer.of_data_folder(tmp_path).seal("s", "c")
    assert path.stat().st_mode & 0o777 == 0o600
    assert SecretSealer.of_data_folder(tmp_path).unseal(sealed, "c") == "s"


def test_during_the_grace_a_webhook_carries_the_new_signature_then_the_old():
    secrets = MerchantSecrets(DERIVED, SEALER)
    merchant = merchant_rotated(grace_ends=NOW + S)
    old = DERIVED.webhook_secret("mer_a")
    assert secrets.webhook_header(merchant, BODY, NOW_S) == f"t={NOW_S},v1={v1('whsec_new')},v1={v1(old)}"
    assert secrets.webhook_header(merchant_rotated(grace_ends=NOW), BODY, NOW_S) == f"t={NOW_S},v1={v1('whsec_new')}"


def test_signing_secrets_are_the_live_sets_newest_first():
    secrets = MerchantSecrets(DERIVED, SEALER)
    assert secrets.signing_secrets(merchant_rotated(NOW + S), NOW) == ["sig_new", DERIVED.signing_secret("mer_a")]
    assert secrets.signing_secrets(merchant_rotated(NOW), NOW) == ["sig_new"]


def test_keys_secrets_and_tokens_are_known_by_their_live_set():
    merchant = merchant_rotated(grace_ends=NOW + S)
    assert api_key_set(merchant, DERIVED.api_key("mer_a"), NOW).id == INITIAL_CREDENTIAL_ID
    assert api_key_set(merchant, DERIVED.api_key("mer_a"), NOW + S) is None
    assert api_key_set(merchant, "sk_mer_a_new", NOW + S).id == "key_2"
    assert client_secret_set(merchant, "cs_new", NOW).id == "key_2"
    assert client_secret_set(merchant, "cs_wrong", NOW) is None
    assert set_live(merchant, INITIAL_CREDENTIAL_ID, NOW) and not set_live(merchant, INITIAL_CREDENTIAL_ID, NOW + S)
    assert set_live(merchant, "key_2", NOW + S) and not set_live(merchant, "key_9", NOW)
