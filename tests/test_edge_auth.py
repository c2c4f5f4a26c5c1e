"""edge.auth: derived merchant secrets, API key parsing, the admin token, EdDSA JWTs and their JWKS, request and
webhook signatures, and password hashes."""

import base64
import hashlib
import hmac
import stat

import jwt
import pytest

from actors.merchant_secrets import Secrets, webhook_signature
from edge.auth import (AdminToken, TokenIssuer, callback_signature, hash_password, hash_secret,
                       merchant_id_from_api_key, signature_valid, verify_password)
from edge.login import DUMMY_HASH

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
MERCHANT = "mer_0a1b2c3d"
OTHER_MERCHANT = "mer_ffee0011"
NOW = 1_700_000_000
PREFIXES = {"api_key": f"sk_{MERCHANT}_", "signing_secret": "sig_", "webhook_secret": "whsec_",
            "client_id": "cli_", "client_secret": "cs_"}
SECRET_METHODS = ["api_key", "signing_secret", "webhook_secret", "client_secret"]


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- derived secrets ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, prefix", PREFIXES.items())
def test_each_credential_has_its_prefix_and_is_deterministic(method, prefix):
    value = getattr(Secrets(KEY_A), method)(MERCHANT)
    assert value.startswith(prefix)
    assert value == getattr(Secrets(bytes(KEY_A)), method)(MERCHANT)


@pytest.mark.parametrize("method", SECRET_METHODS)
def test_secrets_differ_across_server_keys_and_merchants(method):
    merchants = (MERCHANT, OTHER_MERCHANT)
    values = {getattr(Secrets(key), method)(merchant) for key in (KEY_A, KEY_B) for merchant in merchants}
    assert len(values) == 4


def test_secrets_differ_across_purposes():
    secrets = Secrets(KEY_A)
    tails = {getattr(secrets, method)(MERCHANT).rsplit("_", 1)[1] for method in SECRET_METHODS}
    assert len(tails) == len(SECRET_METHODS)


@pytest.mark.parametrize("method", SECRET_METHODS)
def test_secret_parts_are_long_alphanumeric_and_free_of_underscores(method):
    tail = getattr(Secrets(KEY_A), method)(MERCHANT).rsplit("_", 1)[1]
    assert len(tail) >= 32 and tail.isascii() and tail.isalnum()


def test_api_key_round_trips_through_the_parser():
    secrets = Secrets(KEY_A)
    for merchant in (MERCHANT, OTHER_MERCHANT, "mer_abcdefghijklmnopqrstuvwxyz234567"):
        assert merchant_id_from_api_key(secrets.api_key(merchant)) == merchant


@pytest.mark.parametrize("merchant", ["", "mer_", "mer_ABC", "mer_a_b", "merchant_1", "mer_a\n"])
def test_api_key_refuses_ids_the_parser_could_not_read_back(merchant):
    with pytest.raises(ValueError):
        Secrets(KEY_A).api_key(merchant)


def test_short_server_key_is_refused():
    with pytest.raises(ValueError):
        Secrets(b"too short")


def test_server_key_is_created_once_private_and_reused(tmp_path):
    path = tmp_path / "keys" / "gateway.key"
    first = Secrets.of_data_folder(path.parent)
    assert len(path.read_bytes()) == 32 and mode(path) == 0o600
    assert Secrets.of_data_folder(path.parent).api_key(MERCHANT) == first.api_key(MERCHANT)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_hash_secret_is_hex_sha256():
    assert hash_secret("sk_x") == hashlib.sha256(b"sk_x").hexdigest()


# --- API key parsing -----------------------------------------------------------------------------------------------

SECRET_PART = "A1b2" * 10 + "xyz"


@pytest.mark.parametrize("key, merchant", [
    (f"sk_mer_abc123_{SECRET_PART}", "mer_abc123"),
    (f"sk_mer_abc123_{SECRET_PART[:32]}", "mer_abc123"),
    (f"sk_mer_abc123_{SECRET_PART[:31]}", None),
    (f"sk_mer_abc123_{SECRET_PART}\n", None),
    (f" sk_mer_abc123_{SECRET_PART}", None),
    (f"pk_mer_abc123_{SECRET_PART}", None),
    (f"sk_mer_ABC_{SECRET_PART}", None),
    (f"sk_mer_abc_123_{SECRET_PART}", None),
    (f"sk_mer__{SECRET_PART}", None),
    (f"sk_mer_abc123_{SECRET_PART[:-1]}_", None),
    (f"sk_mer_abc123_{SECRET_PART[:-1]}é", None),
    (f"sk_mer_abc١٢٣_{SECRET_PART}", None),
    ("sk_mer_abc123_", None),
    ("sk_mer_abc123", None),
    ("", None),
    ("_" * 10_000, None),
    ("sk_mer_" + "a" * 10_000 + "_" + SECRET_PART, None),
    (f"sk_mer_abc123_{'A' * 300}", None),
    ("\udcff\x00🙂", None),
    (None, None),
    (b"sk_mer_abc123_" + SECRET_PART.encode(), None),
])
def test_merchant_id_from_api_key(key, merchant):
    assert merchant_id_from_api_key(key) == merchant


# --- admin token ---------------------------------------------------------------------------------------------------

def test_admin_token_is_created_once_and_only_its_hash_is_stored(tmp_path):
    path = tmp_path / "admin.token"
    token, plaintext = AdminToken.load_or_create(path, None)
    assert plaintext.startswith("adm_") and len(plaintext) > 40
    assert path.read_text() == hash_secret(plaintext) and plaintext not in path.read_text()
    assert mode(path) == 0o600
    assert token.check(plaintext)

    again, second_plaintext = AdminToken.load_or_create(path, None)
    assert second_plaintext is None
    assert again.check(plaintext)
    assert path.read_text() == hash_secret(plaintext)


def test_override_wins_and_touches_no_file(tmp_path):
    path = tmp_path / "admin.token"
    _, created = AdminToken.load_or_create(path, None)
    token, plaintext = AdminToken.load_or_create(path, "adm_from_environment")
    assert plaintext is None
    assert token.check("adm_from_environment") and not token.check(created)
    assert not AdminToken.load_or_create(tmp_path / "unused.token", "adm_x")[0].check("adm_y")
    assert not (tmp_path / "unused.token").exists()


@pytest.mark.parametrize("attempt", ["", "adm_", "adm_wrong", "x" * 100_000, "\udcff", "ünïcode"])
def test_admin_token_rejects_other_tokens(tmp_path, attempt):
    token, _ = AdminToken.load_or_create(tmp_path / "admin.token", None)
    assert not token.check(attempt)


def test_admin_token_file_that_is_not_a_hash_is_refused(tmp_path):
    path = tmp_path / "admin.token"
    path.write_text("adm_plaintext_by_mistake")
    with pytest.raises(ValueError):
        AdminToken.load_or_create(path, None)


# --- JWTs ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def issuer(tmp_path) -> TokenIssuer:
    return TokenIssuer.load_or_create(tmp_path / "jwt.pem")


def test_token_round_trip(issuer):
    token = issuer.issue(MERCHANT, "api", ttl_s=900, now_s=NOW)
    claims = issuer.verify(token, "api", now_s=NOW + 899)
    assert {key: claims[key] for key in ("sub", "aud", "iat", "exp", "iss")} == {
        "sub": MERCHANT, "aud": "api", "iat": NOW, "exp": NOW + 900, "iss": "paygate"}
    assert claims["jti"] != issuer.verify(issuer.issue(MERCHANT, "api", 900, NOW), "api", NOW)["jti"]
    assert jwt.get_unverified_header(token)["kid"] == issuer.kid


def test_issued_token_verifies_through_the_jwks_alone(issuer):
    jwks = issuer.jwks()
    assert jwks == {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": jwks["keys"][0]["x"], "kid": issuer.kid,
                              "alg": "EdDSA", "use": "sig"}]}
    token = issuer.issue(MERCHANT, "api", ttl_s=900, now_s=NOW)
    published = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, published.key, algorithms=["EdDSA"], audience="api", issuer="paygate",
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["sub"] == MERCHANT


def test_key_is_created_once_private_and_reused(tmp_path, issuer):
    path = tmp_path / "jwt.pem"
    assert mode(path) == 0o600 and path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    reloaded = TokenIssuer.load_or_create(path)
    assert reloaded.jwks() == issuer.jwks()
    assert reloaded.verify(issuer.issue(MERCHANT, "api", 900, NOW), "api", NOW)


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    return ".".join((header, payload, ("B" if signature[0] == "A" else "A") + signature[1:]))


def swapped_payload(token: str, other: str) -> str:
    header, _, signature = token.split(".")
    return ".".join((header, other.split(".")[1], signature))


@pytest.mark.parametrize("case", ["wrong audience", "expired", "at expiry", "issued in the future", "tampered",
                                  "payload swapped", "another key", "unsigned", "HS256 with the public key",
                                  "garbage", "empty", "huge", "not a string"])
def test_invalid_tokens_give_none(tmp_path, issuer, case):
    good = issuer.issue(MERCHANT, "api", ttl_s=900, now_s=NOW)
    stranger = TokenIssuer.load_or_create(tmp_path / "other.pem")
    x = issuer.jwks()["keys"][0]["x"]
    token, audience, now = {
        "wrong audience": (good, "admin", NOW),
        "expired": (good, "api", NOW + 901),
        "at expiry": (good, "api", NOW + 900),
        "issued in the future": (good, "api", NOW - 3600),
        "tampered": (tampered(good), "api", NOW),
        "payload swapped": (swapped_payload(good, issuer.issue("mer_evil", "api", 900, NOW)), "api", NOW),
        "another key": (stranger.issue(MERCHANT, "api", 900, NOW), "api", NOW),
        "unsigned": (jwt.encode({"sub": MERCHANT, "aud": "api", "iat": NOW, "exp": NOW + 9, "iss": "paygate",
                                 "jti": "j"}, None, algorithm="none"), "api", NOW),
        "HS256 with the public key": (forged_hs256(x), "api", NOW),
        "garbage": ("not.a.jwt", "api", NOW),
        "empty": ("", "api", NOW),
        "huge": ("a." * 100_000, "api", NOW),
        "not a string": (None, "api", NOW),
    }[case]
    assert issuer.verify(token, audience, now) is None


def forged_hs256(x: str) -> str:
    """The classic confusion attack: an HMAC token keyed with the public key's bytes."""
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwt.utils.base64url_encode(
        f'{{"sub":"{MERCHANT}","aud":"api","iat":{NOW},"exp":{NOW + 9},"iss":"paygate","jti":"j"}}'.encode())
    signature = hmac.new(x.encode(), header + b"." + payload, hashlib.sha256).digest()
    return b".".join((header, payload, jwt.utils.base64url_encode(signature))).decode()


def test_claims_of_the_wrong_type_or_missing_give_none(issuer):
    private_key = issuer._private_key
    base = {"sub": MERCHANT, "aud": "api", "iat": NOW, "exp": NOW + 900, "iss": "paygate", "jti": "j"}
    variants = [{**base, "exp": float(NOW + 900)}, {**base, "iat": True}, {**base, "iss": "someone"},
                {key: value for key, value in base.items() if key != "jti"}]
    for claims in variants:
        token = jwt.encode(claims, private_key, algorithm="EdDSA", headers={"kid": issuer.kid})
        assert issuer.verify(token, "api", NOW) is None, claims


# --- request signatures --------------------------------------------------------------------------------------------

SIGNING_SECRET = "sig_test"
BODY = b'{"amount":1000,"currency":"USD"}'


def sign(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}.{method}.{path}.".encode() + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


GOOD = sign(SIGNING_SECRET, str(NOW), "POST", "/v1/payments", BODY)


@pytest.mark.parametrize("secret, timestamp, signature, method, path, body, expected", [
    (SIGNING_SECRET, str(NOW), GOOD, "POST", "/v1/payments", BODY, True),
    (SIGNING_SECRET, str(NOW), GOOD, "post", "/v1/payments", BODY, True),
    (SIGNING_SECRET, str(NOW), GOOD.upper().replace("V1=", "v1="), "POST", "/v1/payments", BODY, True),
    ("sig_other", str(NOW), GOOD, "POST", "/v1/payments", BODY, False),
    (SIGNING_SECRET, str(NOW), GOOD, "POST", "/v1/payments", BODY + b" ", False),
    (SIGNING_SECRET, str(NOW), GOOD, "PUT", "/v1/payments", BODY, False),
    (SIGNING_SECRET, str(NOW), GOOD, "POST", "/v1/refunds", BODY, False),
    (SIGNING_SECRET, str(NOW), GOOD, "POST", "/v1/payments?x=1", BODY, False),
    (SIGNING_SECRET, str(NOW), "", "POST", "/v1/payments", BODY, False),
    (SIGNING_SECRET, str(NOW), GOOD[3:], "POST", "/v1/payments", BODY, False),
    (SIGNING_SECRET, str(NOW), "v0=" + GOOD[3:], "POST", "/v1/payments", BODY, False),
    (SIGNING_SECRET, str(NOW), GOOD[:-1], "POST", "/v1/payments", BODY, False),
    (SIGNING_SECRET, str(NOW), "v1=ünïcode\udcff", "POST", "/v1/payments", BODY, False),
    (SIGNING_SECRET, str(NOW), None, "POST", "/v1/payments", BODY, False),
])
def test_request_signature(secret, timestamp, signature, method, path, body, expected):
    assert signature_valid([secret], timestamp, signature, method, path, body, now_s=NOW) is expected


@pytest.mark.parametrize("offset, expected", [(-301, False), (-300, True), (-299, True), (0, True), (299, True),
                                              (300, True), (301, False)])
def test_request_signature_time_window(offset, expected):
    timestamp = str(NOW + offset)
    signature = sign(SIGNING_SECRET, timestamp, "POST", "/v1/payments", BODY)
    assert signature_valid([SIGNING_SECRET], timestamp, signature, "POST", "/v1/payments", BODY, now_s=NOW) is expected


@pytest.mark.parametrize("timestamp", ["", "abc", "1.7e9", f"{NOW}.0", f" {NOW}", f"+{NOW}", f"{NOW:_}", "-1",
                                       "١٧٠٠٠٠٠٠٠٠", "9" * 100, None])
def test_request_signature_needs_an_integer_timestamp(timestamp):
    # the signature is made over the timestamp as sent, so only the timestamp's form can make these fail
    signature = sign(SIGNING_SECRET, str(timestamp), "POST", "/", BODY)
    assert not signature_valid([SIGNING_SECRET], timestamp, signature, "POST", "/", BODY, now_s=NOW)


@pytest.mark.parametrize("header, expected", [
    (f"v1={'0' * 64},{GOOD}", True),
    (f"{GOOD}, v1={'0' * 64}", True),
    (f"t={NOW},{GOOD}", True),
    (f"v1={'0' * 64},v1={'1' * 64}", False),
    (",,,", False),
])
def test_request_signature_with_several_values_during_rotation(header, expected):
    assert signature_valid([SIGNING_SECRET], str(NOW), header, "POST", "/v1/payments", BODY, now_s=NOW) is expected


def test_request_signature_custom_window():
    timestamp = str(NOW - 61)
    signature = sign(SIGNING_SECRET, timestamp, "GET", "/", b"")
    assert not signature_valid([SIGNING_SECRET], timestamp, signature, "GET", "/", b"", now_s=NOW, window_s=60)
    assert signature_valid([SIGNING_SECRET], timestamp, signature, "GET", "/", b"", now_s=NOW, window_s=61)


# --- webhook signatures --------------------------------------------------------------------------------------------

def test_webhook_signature():
    expected = hmac.new(b"whsec_x", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert webhook_signature(["whsec_x"], BODY, NOW) == f"t={NOW},v1={expected}"
    assert webhook_signature(["whsec_y"], BODY, NOW) != webhook_signature(["whsec_x"], BODY, NOW)


def test_a_webhook_carries_a_signature_per_live_secret_the_newest_first():
    new, old = (hmac.new(secret, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest() for secret in (b"n", b"o"))
    assert webhook_signature(["n", "o"], BODY, NOW) == f"t={NOW},v1={new},v1={old}"


def test_a_request_signature_is_checked_against_every_live_secret():
    timestamp = str(NOW)
    signature = sign("sig_old", timestamp, "POST", "/v1/payments", BODY)
    assert signature_valid(["sig_new", "sig_old"], timestamp, signature, "POST", "/v1/payments", BODY, now_s=NOW)
    assert not signature_valid(["sig_new"], timestamp, signature, "POST", "/v1/payments", BODY, now_s=NOW)
    assert not signature_valid([], timestamp, signature, "POST", "/v1/payments", BODY, now_s=NOW)


def test_a_callback_signature_has_one_spelling_however_it_is_written():
    """Case, order and spaces do not make a replayed callback look new; a wrong, stale or missing one is ""."""
    header = webhook_signature(["whsec_x"], BODY, NOW)
    timestamp, digest = (part.split("=", 1)[1] for part in header.split(","))
    spellings = [header, f"t={timestamp},v1={digest.upper()}", f"v1={digest},t={timestamp}",
                 f"t={timestamp}, v1={digest}", f" v1={digest.upper()} , t={timestamp} "]
    assert {callback_signature("whsec_x", spelling, BODY, NOW) for spelling in spellings} == {header}
    assert callback_signature("whsec_y", header, BODY, NOW) == ""
    assert callback_signature("whsec_x", header, BODY + b" ", NOW) == ""
    assert callback_signature("whsec_x", header, BODY, NOW + 301) == ""
    assert callback_signature("whsec_x", "", BODY, NOW) == ""


# --- passwords -----------------------------------------------------------------------------------------------------

def test_password_round_trip():
    stored = hash_password("correct horse battery staple")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "131072", "8", "1")  # OWASP's minimum
    assert verify_password("correct horse battery staple", stored)
    assert not verify_password("correct horse battery stapl", stored)
    assert not verify_password("", stored)
    assert hash_password("correct horse battery staple") != stored  # a fresh salt each time


def test_a_hash_made_with_the_older_parameters_still_verifies():
    salt = bytes(range(16))
    digest = hashlib.scrypt(b"secret", salt=salt, n=2**14, r=8, p=1, dklen=32)
    stored = f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert verify_password("secret", stored) and not verify_password("secrets", stored)


def test_the_dummy_hash_of_unknown_emails_costs_what_a_real_one_does():
    assert DUMMY_HASH.split("$")[:4] == hash_password("x").split("$")[:4]
    assert verify_password("", DUMMY_HASH) is False


def test_unicode_password_round_trip():
    stored = hash_password("pässwörd 🙂")
    assert verify_password("pässwörd 🙂", stored)
    assert not verify_password("passwörd 🙂", stored)


STORED = hash_password("secret")
_, _, _, _, SALT, DIGEST = STORED.split("$")


@pytest.mark.parametrize("stored", [
    "", "scrypt", "scrypt$$$$$", STORED + "$", STORED.replace("scrypt", "bcrypt"),
    f"scrypt$x$8$1${SALT}${DIGEST}", f"scrypt$16383$8$1${SALT}${DIGEST}", f"scrypt$1$8$1${SALT}${DIGEST}",
    f"scrypt$1048576$8$1${SALT}${DIGEST}", f"scrypt$16384$8$1000000${SALT}${DIGEST}",
    f"scrypt$16384$0$1${SALT}${DIGEST}", f"scrypt$16384$8$1$!!!!${DIGEST}", f"scrypt$16384$8$1${SALT}$",
    f"scrypt$16384$8$1${SALT}${'A' * 100_000}", f"scrypt$16384$8$1${SALT}${DIGEST[:-2]}",
    "\udcff" * 10, None, 12,
])
def test_malformed_stored_password_is_refused_without_raising(stored):
    assert verify_password("secret", stored) is False
