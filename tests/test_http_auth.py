"""Black-box HTTP tests of who may do what: the admin token, merchant API keys, OAuth2 client credentials and their
JWKS, request signing, dashboard logins, tenant isolation, rate limits and IP allow lists, idempotency keys (across
edge workers and restarts) and Request-Id, against a real `paygate serve` (shard processes + edge workers)."""

import base64
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import time
import urllib.parse
import uuid

import jwt
import pytest

from edge import cli
from edge_harness import Response, Server, assert_ledger_ok
from journal.client import ShardMap

ORDER = {"name": "Coffee", "amount": 1999, "currency": "usd"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SECRETS = ("api_key", "signing_secret", "webhook_secret", "client_secret")
CACHE_WAIT_S = 6  # the edge keeps merchant records up to 2 s per worker
PASSWORD = "correct horse battery staple"

_live: list[Server] = []  # every server this module started and has not stopped: the ledger check visits each


# --- servers and the ledger check ------------------------------------------------------------------------------------

def start_server(path, **options) -> Server:
    server = Server(path, **options).start()
    _live.append(server)
    return server


def stop_server(server: Server) -> None:
    _live.remove(server)
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = start_server(tmp_path_factory.mktemp("edge"), workers=2, extra=("--order-ip-limit", "1000"))
    yield started
    stop_server(started)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """One edge worker (token buckets are per worker process) and the per-IP order limit at 3."""
    started = start_server(tmp_path_factory.mktemp("limited"), workers=1, extra=("--order-ip-limit", "3"))
    yield started
    stop_server(started)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """Two shards, the per-IP order limit at its default (10 per 10 minutes)."""
    started = start_server(tmp_path_factory.mktemp("sharded"), workers=1, shards=2)
    yield started
    stop_server(started)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """Behind a proxy on loopback (`--trusted-proxy`): X-Forwarded-For names the client."""
    started = start_server(tmp_path_factory.mktemp("proxied"), workers=1, extra=("--trusted-proxy", "127.0.0.0/8"))
    yield started
    stop_server(started)


@pytest.fixture(autouse=True)
def ledger_stays_balanced(server):
    yield
    for each in _live:
        assert_ledger_ok(each)


# --- helpers ---------------------------------------------------------------------------------------------------------

def unique(prefix: str = "k") -> str:
    """A fresh id or key, short enough for any id field."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def create_merchant(server: Server, **fields) -> dict:
    body = {"name": "Shop", "email": "owner@example.com", **fields}
    response = server.request("POST", "/v1/merchants", body, key=server.admin_token)
    assert response.status == 200, response.body
    return response.json()


def create_order(server: Server, key: str, headers: dict | None = None, **fields):
    return server.request("POST", "/v1/orders", {**ORDER, **fields}, key=key, headers=headers)


def assert_error(response, status: int, error_type: str, code: str | None = None) -> dict:
    assert response.status == status, (response.status, response.body)
    assert response.headers.get("Request-Id"), response.headers
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}, error
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def signed_headers(secret: str, method: str, path: str, body: bytes, ts: int) -> dict:
    digest = hmac.new(secret.encode(), f"{ts}.{method}.{path}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Paygate-Timestamp": str(ts), "Paygate-Signature": f"v1={digest}"}


def eventually(send, accept, timeout_s: float = CACHE_WAIT_S):
    """Repeat `send()` until its response has status `accept` (or passes `accept(response)`): merchant records are
    cached a moment per edge worker. Returns the last response."""
    accepted = accept if callable(accept) else (lambda response: response.status == accept)
    deadline = time.monotonic() + timeout_s
    while True:
        response = send()
        if accepted(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def oauth(server: Server, **form):
    return server.request("POST", "/oauth/token", raw=urllib.parse.urlencode(form).encode(), headers=FORM)


def oauth_token(server: Server, merchant: dict) -> str:
    response = oauth(server, grant_type="client_credentials", client_id=merchant["client_id"],
                     client_secret=merchant["client_secret"])
    assert response.status == 200, response.body
    return response.json()["access_token"]


def jwks_decode(server: Server, token: str, **options) -> dict:
    keys = jwt.PyJWKSet.from_dict(server.request("GET", "/.well-known/jwks.json").json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(key for key in keys.keys if key.key_id == kid)
    return jwt.decode(token, key.key, algorithms=["EdDSA"], **options)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def me(server: Server, key: str, headers: dict | None = None):
    return server.request("GET", "/v1/merchants/me", key=key, headers=headers)


# --- 1. admin and merchants ------------------------------------------------------------------------------------------

def test_admin_creates_a_merchant_and_its_secrets_appear_only_in_that_reply(server):
    merchant = create_merchant(server, tier="premium")
    assert merchant["id"].startswith("mer_") and merchant["status"] == "active" and merchant["tier"] == "premium"
    assert merchant["api_key"].startswith(f"sk_{merchant['id']}_")
    assert merchant["signing_secret"].startswith("sig_") and merchant["webhook_secret"].startswith("whsec_")
    assert merchant["client_id"].startswith("cli_") and merchant["client_secret"].startswith("cs_")
    assert len({merchant[name] for name in SECRETS}) == len(SECRETS)

    for key in (server.admin_token, merchant["api_key"]):
        shown = server.request("GET", f"/v1/merchants/{merchant['id']}", key=key)
        assert shown.status == 200 and shown.json()["id"] == merchant["id"]
        assert not set(SECRETS) & set(shown.json())
        assert not any(merchant[name].encode() in shown.body for name in SECRETS)


def test_a_merchant_keeps_its_settlement_account(server):
    account = {"bank": "BIDV", "account_number": "1234567890", "account_name": "Long Chau Pharmacy Chain"}
    merchant = create_merchant(server, settlement_account=account)
    assert merchant["settlement_account"] == account
    moved = {**account, "account_number": "9876543210"}
    patched = server.request("PATCH", f"/v1/merchants/{merchant['id']}", {"settlement_account": moved},
                             key=server.admin_token)
    assert patched.status == 200 and patched.json()["settlement_account"] == moved
    assert me(server, merchant["api_key"]).json()["settlement_account"] == moved
    for bad in ({"bank": "BIDV"}, {**account, "account_number": "12"}, {**account, "iban": "x"}):
        response = server.request("POST", "/v1/merchants", {"name": "Shop", "email": "shop@example.com",
                                                           "settlement_account": bad}, key=server.admin_token)
        assert_error(response, 400, "invalid_request_error")


ADMIN_AUTHORIZATIONS = {
    "merchant key": (lambda server: f"Bearer {server.demo_key}", 403, "permission_error"),
    "none": (lambda server: None, 401, "authentication_error"),
    "wrong token": (lambda server: "Bearer adm_wrong-token", 401, "authentication_error"),
    "empty bearer": (lambda server: "Bearer ", 401, "authentication_error"),
    "token without scheme": (lambda server: server.admin_token, 401, "authentication_error"),
    "basic scheme": (lambda server: "Basic " + base64.b64encode(f"{server.admin_token}:".encode()).decode(), 401,
                     "authentication_error"),
}


@pytest.mark.parametrize("authorization", ADMIN_AUTHORIZATIONS)
def test_creating_a_merchant_needs_the_admin_token(server, authorization):
    header, status, error_type = ADMIN_AUTHORIZATIONS[authorization]
    value = header(server)
    headers = {"Authorization": value} if value is not None else {}
    response = server.request("POST", "/v1/merchants", {"name": "Nope", "email": "nope@example.com"}, headers=headers)
    assert_error(response, status, error_type)


@pytest.mark.parametrize("viewer, status", [("admin", 200), ("itself", 200), ("another merchant", 404)])
def test_a_merchant_record_is_visible_to_the_admin_and_itself_only(server, viewer, status):
    merchant = create_merchant(server, name=unique("Visible"))
    key = {"admin": server.admin_token, "itself": merchant["api_key"], "another merchant": server.demo_key}[viewer]
    response = server.request("GET", f"/v1/merchants/{merchant['id']}", key=key)
    if status == 200:
        assert response.status == 200 and response.json()["name"] == merchant["name"]
    else:
        assert_error(response, 404, "invalid_request_error", "resource_missing")
        assert merchant["name"].encode() not in response.body


def test_merchants_me_names_the_caller(server):
    merchant = create_merchant(server)
    response = me(server, merchant["api_key"])
    assert response.status == 200
    assert {k: response.json()[k] for k in ("id", "client_id")} == {"id": merchant["id"],
                                                                    "client_id": merchant["client_id"]}
    assert_error(me(server, None), 401, "authentication_error")


@pytest.mark.parametrize("fields", [
    {"tier": "basic"},
    {"tier": "premium"},
    {"status": "suspended"},
    {"webhook_url": "https://shop.example.com/hooks"},
    {"ip_allowlist": ["10.0.0.0/8", "192.168.1.7"]},
])
def test_admin_patches_a_merchant(server, fields):
    merchant = create_merchant(server)
    response = server.request("PATCH", f"/v1/merchants/{merchant['id']}", fields, key=server.admin_token)
    assert response.status == 200, response.body
    assert {name: response.json()[name] for name in fields} == fields

    def shows_the_change(response) -> bool:
        return response.status == 200 and all(response.json()[name] == value for name, value in fields.items())

    path = f"/v1/merchants/{merchant['id']}"
    assert shows_the_change(eventually(lambda: server.request("GET", path, key=server.admin_token), shows_the_change))


@pytest.mark.parametrize("credential, body, status, error_type", [
    ("itself", {"tier": "premium"}, 403, "permission_error"),
    ("another merchant", {"status": "active"}, 403, "permission_error"),
    (None, {"tier": "premium"}, 401, "authentication_error"),
    ("admin", {"tier": "gold"}, 400, "invalid_request_error"),
    ("admin", {"status": "deleted"}, 400, "invalid_request_error"),
    ("admin", {"api_key_hash": "00"}, 400, "invalid_request_error"),
])
def test_patching_a_merchant_is_admin_only_and_validated(server, credential, body, status, error_type):
    merchant = create_merchant(server, tier="standard")
    key = {"itself": merchant["api_key"], "another merchant": server.demo_key, "admin": server.admin_token,
           None: None}[credential]
    assert_error(server.request("PATCH", f"/v1/merchants/{merchant['id']}", body, key=key), status, error_type)
    unchanged = server.request("GET", f"/v1/merchants/{merchant['id']}", key=server.admin_token).json()
    assert (unchanged["tier"], unchanged["status"]) == ("standard", "active")


def test_patching_an_unknown_merchant_is_404(server):
    response = server.request("PATCH", "/v1/merchants/mer_doesnotexist", {"tier": "basic"}, key=server.admin_token)
    assert_error(response, 404, "invalid_request_error")


def test_sub_accounts_by_admin_and_by_the_merchant_itself(server):
    merchant = create_merchant(server)
    path = f"/v1/merchants/{merchant['id']}/sub_accounts"
    first = server.request("POST", path, {"name": "Store 1"}, key=server.admin_token)
    assert first.status == 200, first.body
    assert first.json()["name"] == "Store 1" and first.json()["id"].startswith("sub_")
    second = server.request("POST", path, {"name": "Store 2"}, key=merchant["api_key"])
    assert second.status == 200 and second.json()["name"] == "Store 2"

    assert_error(server.request("POST", path, {"name": "Intruder"}, key=server.demo_key), 404, "invalid_request_error")
    assert_error(server.request("POST", path, {"name": "Anonymous"}), 401, "authentication_error")
    assert_error(server.request("POST", path, {}, key=server.admin_token), 400, "invalid_request_error")

    def names(response) -> list[str]:
        return [sub["name"] for sub in response.json()["sub_accounts"]]

    shown = eventually(lambda: server.request("GET", f"/v1/merchants/{merchant['id']}", key=server.admin_token),
                       lambda response: names(response) == ["Store 1", "Store 2"])
    assert names(shown) == ["Store 1", "Store 2"]


def test_a_sub_account_create_answers_the_new_sub_account_and_its_replay_the_same(server):
    merchant = create_merchant(server)
    path, key = f"/v1/merchants/{merchant['id']}/sub_accounts", merchant["api_key"]
    headers = {"Idempotency-Key": unique()}
    first = server.request("POST", path, {"name": "Store 1"}, key=key, headers=headers)
    assert first.status == 200, first.body
    created = first.json()
    assert created == {"id": created["id"], "object": "sub_account", "merchant_id": merchant["id"], "name": "Store 1",
                       "created_at": created["created_at"]}
    assert created["id"].startswith("sub_") and created["created_at"].endswith("Z")
    other = server.request("POST", path, {"name": "Store 2"}, key=key).json()
    assert (other["object"], other["merchant_id"], other["name"]) == ("sub_account", merchant["id"], "Store 2")
    assert other["id"] != created["id"]

    # After a newer sub-account exists, the replay still answers the first one.
    again = server.request("POST", path, {"name": "Store 1"}, key=key, headers=headers)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true" and again.body == first.body

    shown = eventually(lambda: server.request("GET", "/v1/merchants/me", key=key),
                       lambda response: len(response.json()["sub_accounts"]) == 2)
    assert shown.json()["sub_accounts"] == [{"id": sub["id"], "name": sub["name"], "created_at": sub["created_at"]}
                                            for sub in (created, other)]


# --- 2. API keys -----------------------------------------------------------------------------------------------------

def _tampered(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


BAD_KEYS = {
    "tampered": lambda merchant: _tampered(merchant["api_key"]),
    "nonexistent merchant": lambda merchant: merchant["api_key"].replace(merchant["id"], "mer_0000nothere"),
    "another merchant's id": lambda merchant: merchant["api_key"].replace(merchant["id"], "mer_demo"),
    "truncated": lambda merchant: merchant["api_key"][:-5],
    "garbage": lambda merchant: "not-a-key",
    "prefix only": lambda merchant: "sk_",
    "very long": lambda merchant: merchant["api_key"] + "x" * 5000,
    "secret part only": lambda merchant: merchant["api_key"].rsplit("_", 1)[1],
    "client secret as key": lambda merchant: merchant["client_secret"],
}


@pytest.fixture(scope="module")
def keyed_merchant(server):
    return create_merchant(server)


def test_a_fresh_merchant_key_works(server):
    merchant = create_merchant(server)
    assert me(server, merchant["api_key"]).json()["id"] == merchant["id"]
    assert create_order(server, merchant["api_key"]).status == 200


@pytest.mark.parametrize("kind", BAD_KEYS)
def test_bad_api_keys_are_401(server, keyed_merchant, kind):
    key = BAD_KEYS[kind](keyed_merchant)
    for method, path, body in (("GET", "/v1/merchants/me", None), ("POST", "/v1/orders", ORDER)):
        assert_error(server.request(method, path, body, key=key), 401, "authentication_error")


# --- 3. OAuth2 client credentials ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oauth_merchant(server):
    return create_merchant(server)


def test_client_credentials_give_a_bearer_token_accepted_like_an_api_key(server, oauth_merchant):
    response = oauth(server, grant_type="client_credentials", client_id=oauth_merchant["client_id"],
                     client_secret=oauth_merchant["client_secret"])
    assert response.status == 200, response.body
    body = response.json()
    assert body["token_type"] == "Bearer" and isinstance(body["expires_in"], int) and body["expires_in"] > 0
    token = body["access_token"]
    assert me(server, token).json()["id"] == oauth_merchant["id"]
    order = create_order(server, token)
    assert order.status == 200
    assert server.request("GET", f"/v1/orders/{order.json()['id']}", key=oauth_merchant["api_key"]).status == 200


def test_the_token_verifies_against_the_jwks(server, oauth_merchant):
    token = oauth_token(server, oauth_merchant)
    claims = jwks_decode(server, token, audience="api")
    assert claims["sub"] == oauth_merchant["id"]
    assert claims["exp"] > time.time()
    with pytest.raises(jwt.InvalidAudienceError):
        jwks_decode(server, token, audience="dashboard")


@pytest.mark.parametrize("change, status", [
    ({"client_secret": "cs_wrong"}, 401),
    ({"client_secret": ""}, 401),
    ({"client_id": "cli_mer_0000nothere"}, 401),
    ({"client_id": "someone"}, 401),
    ({"grant_type": "password"}, 400),
    ({"grant_type": ""}, 400),
])
def test_token_requests_that_are_refused(server, oauth_merchant, change, status):
    form = {"grant_type": "client_credentials", "client_id": oauth_merchant["client_id"],
            "client_secret": oauth_merchant["client_secret"], **change}
    response = oauth(server, **form)
    assert_error(response, status, "authentication_error" if status == 401 else "invalid_request_error")
    assert b"access_token" not in response.body


def test_another_merchants_secret_is_refused(server, oauth_merchant):
    demo = {"client_id": "cli_mer_demo"}
    response = oauth(server, grant_type="client_credentials", client_secret=oauth_merchant["client_secret"], **demo)
    assert_error(response, 401, "authentication_error")


def _resign_none(token: str) -> str:
    _, payload, _ = token.split(".")
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}."


def _other_subject(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64url(payload))
    claims["sub"] = "mer_demo"
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def _flip_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(unb64url(signature))
    raw[0] ^= 1
    return f"{header}.{payload}.{b64url(bytes(raw))}"


TOKEN_TAMPERING = {
    "signature flipped": _flip_signature,
    "subject changed": _other_subject,
    "alg none": _resign_none,
    "signature dropped": lambda token: token.rsplit(".", 1)[0] + ".",
    "truncated": lambda token: token[:-10],
}


@pytest.mark.parametrize("tamper", TOKEN_TAMPERING)
def test_a_tampered_token_is_401(server, oauth_merchant, tamper):
    token = TOKEN_TAMPERING[tamper](oauth_token(server, oauth_merchant))
    assert_error(me(server, token), 401, "authentication_error")


# --- 4. request signing ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signing_merchant(server):
    merchant = create_merchant(server, require_signature=True)
    assert merchant["require_signature"] is True
    return merchant


SIGNING_CASES = {
    # case: (what is signed differs from what is sent: timestamp offset, body, method, secret) -> status
    "correct": ({}, 200),
    "290 s old": ({"offset": -290}, 200),
    "290 s ahead": ({"offset": 290}, 200),
    "301 s old": ({"offset": -301}, 401),
    "301 s ahead": ({"offset": 301}, 401),
    "body altered after signing": ({"signed_body": b'{"name":"Coffee","amount":1,"currency":"usd"}'}, 401),
    "other method signed": ({"method": "PUT"}, 401),
    "other path signed": ({"path": "/v1/orderz"}, 401),
    "wrong secret": ({"secret": "sig_wrong"}, 401),
}


def send_signed_order(server: Server, merchant: dict, offset: int = 0, signed_body: bytes | None = None,
                      method: str = "POST", path: str = "/v1/orders", secret: str | None = None):
    body = json.dumps(ORDER).encode()
    headers = signed_headers(secret or merchant["signing_secret"], method, path,
                             body if signed_body is None else signed_body, int(time.time()) + offset)
    return server.request("POST", "/v1/orders", raw=body, key=merchant["api_key"], headers=headers)


def test_the_signature_covers_the_path_as_sent(server, signing_merchant):
    """Percent-escapes stay as the client sent them (here %41, an escaped "A")."""
    path = "/v1/orders/ord_%41"
    as_sent = signed_headers(signing_merchant["signing_secret"], "GET", path, b"", int(time.time()))
    decoded = signed_headers(signing_merchant["signing_secret"], "GET", "/v1/orders/ord_A", b"", int(time.time()))
    assert_error(server.request("GET", path, key=signing_merchant["api_key"], headers=as_sent), 404,
                 "invalid_request_error", "resource_missing")
    assert_error(server.request("GET", path, key=signing_merchant["api_key"], headers=decoded), 401,
                 "authentication_error", "signature_invalid")


def test_an_unsigned_request_is_401_when_signing_is_required(server, signing_merchant):
    for method, path, body in (("GET", "/v1/merchants/me", None), ("POST", "/v1/orders", ORDER)):
        response = server.request(method, path, body, key=signing_merchant["api_key"])
        assert_error(response, 401, "authentication_error", "signature_invalid")


@pytest.mark.parametrize("case", SIGNING_CASES)
def test_signed_requests(server, signing_merchant, case):
    changes, status = SIGNING_CASES[case]
    response = send_signed_order(server, signing_merchant, **changes)
    if status == 200:
        assert response.status == 200, response.body
    else:
        assert_error(response, status, "authentication_error", "signature_invalid")


def test_the_signed_path_excludes_the_query_string(server, signing_merchant):
    headers = signed_headers(signing_merchant["signing_secret"], "GET", "/v1/orders", b"", int(time.time()))
    response = server.request("GET", "/v1/orders?limit=1", key=signing_merchant["api_key"], headers=headers)
    assert response.status == 200, response.body


def test_an_oauth_token_does_not_skip_the_signature(server, signing_merchant):
    token = oauth_token(server, signing_merchant)
    assert_error(me(server, token), 401, "authentication_error", "signature_invalid")
    headers = signed_headers(signing_merchant["signing_secret"], "GET", "/v1/merchants/me", b"", int(time.time()))
    assert me(server, token, headers).status == 200


@pytest.mark.parametrize("signature, status", [(None, 200), ("wrong", 401), ("empty", 401), ("correct", 200)])
def test_a_signature_is_checked_whenever_sent(server, keyed_merchant, signature, status):
    ts = int(time.time())
    headers = {
        None: {},
        "wrong": {"Paygate-Timestamp": str(ts), "Paygate-Signature": "v1=" + "0" * 64},
        "empty": {"Paygate-Timestamp": str(ts), "Paygate-Signature": ""},
        "correct": signed_headers(keyed_merchant["signing_secret"], "GET", "/v1/merchants/me", b"", ts),
    }[signature]
    response = me(server, keyed_merchant["api_key"], headers)
    if status == 200:
        assert response.status == 200, response.body
    else:
        assert_error(response, status, "authentication_error", "signature_invalid")


# --- 5. dashboard users ----------------------------------------------------------------------------------------------

def add_dashboard_user(server: Server, merchant_id: str, email: str, password: str = PASSWORD, *, key: str | None):
    return server.request("POST", f"/v1/merchants/{merchant_id}/dashboard_users",
                          {"email": email, "password": password}, key=key)


def login(server: Server, merchant_id: str, email: str, password: str):
    query = urllib.parse.urlencode({"merchant_id": merchant_id})
    return server.request("POST", f"/v1/auth/login?{query}", {"email": email, "password": password})


def test_dashboard_login_and_the_password_never_shown(server):
    merchant = create_merchant(server)
    email = f"{unique('clerk')}@example.com"
    created = add_dashboard_user(server, merchant["id"], email, key=server.admin_token)
    assert created.status == 200, created.body
    replies = [created]

    ok = eventually(lambda: login(server, merchant["id"], email, PASSWORD), 200)
    assert ok.status == 200, ok.body
    assert ok.json()["token_type"] == "Bearer" and ok.json()["expires_in"] > 0
    assert jwks_decode(server, ok.json()["access_token"], options={"verify_aud": False})["sub"] == merchant["id"]
    replies.append(ok)

    for refused_email, password in ((email, PASSWORD + "!"), (email, PASSWORD[:-1]), (email, ""),
                                    (email.upper(), PASSWORD), (f"{unique('nobody')}@example.com", PASSWORD)):
        refused = login(server, merchant["id"], refused_email, password)
        assert_error(refused, 401, "authentication_error")
        replies.append(refused)

    replies += [server.request("GET", f"/v1/merchants/{merchant['id']}", key=server.admin_token),
                me(server, merchant["api_key"]),
                server.request("PATCH", f"/v1/merchants/{merchant['id']}", {"tier": "premium"},
                               key=server.admin_token)]
    for reply in replies:
        assert PASSWORD.encode() not in reply.body
        assert b"scrypt" not in reply.body and b'"password' not in reply.body  # no password or password_hash field


def test_a_dashboard_email_names_one_login(server):
    email = f"{unique('shared')}@example.com"
    first, second = create_merchant(server), create_merchant(server)
    assert add_dashboard_user(server, first["id"], email, PASSWORD, key=server.admin_token).status == 200
    added = add_dashboard_user(server, second["id"], email, PASSWORD + " two", key=server.admin_token)
    if added.status != 200:  # refusing the duplicate email is one correct answer
        assert_error(added, 409, "invalid_request_error")
        return
    for merchant, password in ((first, PASSWORD), (second, PASSWORD + " two")):
        response = login(server, merchant["id"], email, password)
        assert response.status == 200, response.body
        claims = jwks_decode(server, response.json()["access_token"], options={"verify_aud": False})
        assert claims["sub"] == merchant["id"]


@pytest.mark.parametrize("credential, password, status, error_type", [
    ("admin", "short1234", 400, "invalid_request_error"),  # 9 characters
    ("itself", PASSWORD, 403, "permission_error"),
    (None, PASSWORD, 401, "authentication_error"),
])
def test_dashboard_users_are_created_by_the_admin_with_a_long_password(server, credential, password, status,
                                                                       error_type):
    merchant = create_merchant(server)
    key = {"admin": server.admin_token, "itself": merchant["api_key"], None: None}[credential]
    error = assert_error(add_dashboard_user(server, merchant["id"], "x@example.com", password, key=key),
                         status, error_type)
    if status == 400:
        assert error["param"] == "password"
    assert login(server, merchant["id"], "x@example.com", password).status == 401


# --- 6. tenant isolation ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tenants(server):
    """Merchant A with an order, a customer with a funded wallet, and a ledger account; merchant B with nothing."""
    a, b = create_merchant(server, name="Tenant A"), create_merchant(server, name="Tenant B")
    order = create_order(server, a["api_key"])
    customer = server.request("POST", "/v1/customers", {"email": "c@example.com", "name": "C"}, key=a["api_key"])
    deposit = server.request("POST", f"/v1/customers/{customer.json()['id']}/adjustments",
                             {"amount": 5000, "currency": "usd", "reason": "test funds"}, key=server.admin_token)
    account = server.request("POST", "/v1/accounts", {"id": unique("acct"), "currency": "usd"}, key=a["api_key"])
    replies = (order, customer, deposit, account)
    assert all(reply.status == 200 for reply in replies), [reply.body for reply in replies]
    ids = {"order": order.json()["id"], "customer": customer.json()["id"], "account": account.json()["id"]}
    return a, b, ids


def snapshot_of(server: Server, merchant: dict, ids: dict) -> dict:
    paths = {"order": f"/v1/orders/{ids['order']}", "customer": f"/v1/customers/{ids['customer']}",
             "wallet": f"/v1/customers/{ids['customer']}/wallet", "account": f"/v1/accounts/{ids['account']}"}
    replies = {name: server.request("GET", path, key=merchant["api_key"]) for name, path in paths.items()}
    assert all(reply.status == 200 for reply in replies.values()), {n: r.body for n, r in replies.items()}
    return {name: reply.json() for name, reply in replies.items()}


FOREIGN_REQUESTS = [
    ("GET", "/v1/orders/{order}", None),
    ("PATCH", "/v1/orders/{order}", {"name": "hijacked", "amount": 1}),
    ("DELETE", "/v1/orders/{order}", None),
    ("GET", "/v1/customers/{customer}", None),
    ("GET", "/v1/customers/{customer}/wallet", None),
    ("POST", "/v1/customers/{customer}/withdrawals", {"amount": 100, "currency": "usd"}),
    ("POST", "/v1/customers/{customer}/deposits", {"amount": 100, "currency": "usd", "payment_method": {"type": "qr"}}),
    ("POST", "/v1/payments", {"order_id": "{order}", "payment_method": {"type": "wallet", "customer_id": "{customer}"}}),
    ("GET", "/v1/accounts/{account}", None),
]


def _fill(value, ids: dict):
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {name: _fill(item, ids) for name, item in value.items()}
    return value


@pytest.mark.parametrize("method, path, body", FOREIGN_REQUESTS, ids=[f"{m} {p}" for m, p, _ in FOREIGN_REQUESTS])
def test_another_merchants_objects_are_404_and_unchanged(server, tenants, method, path, body):
    a, b, ids = tenants
    before = snapshot_of(server, a, ids)
    response = server.request(method, _fill(path, ids), _fill(body, ids), key=b["api_key"])
    assert_error(response, 404, "invalid_request_error")
    assert not any(value.encode() in response.body for value in ("Tenant A", "c@example.com"))
    assert snapshot_of(server, a, ids) == before


def test_a_transfer_cannot_reach_another_merchants_account(server, tenants):
    a, b, ids = tenants
    before = snapshot_of(server, a, ids)
    own = server.request("POST", "/v1/accounts", {"id": unique("acct"), "currency": "usd"}, key=b["api_key"]).json()
    for debit, credit, code in ((own["id"], ids["account"], "credit_account_not_found"),
                                (ids["account"], own["id"], "debit_account_not_found")):
        transfer = {"id": unique("tr"), "debit_account_id": debit, "credit_account_id": credit, "amount": 10,
                    "currency": "usd"}
        response = server.request("POST", "/v1/transfers", transfer, key=b["api_key"])
        assert response.status == 200 and response.json()["result"] == code, response.body
    assert snapshot_of(server, a, ids) == before


def test_orders_list_shows_only_the_callers_orders(server, tenants):
    a, b, ids = tenants
    listed = server.request("GET", "/v1/orders?limit=100", key=b["api_key"])
    assert listed.status == 200 and ids["order"] not in {order["id"] for order in listed.json()["data"]}


def test_the_same_idempotency_key_in_two_merchants_names_two_orders(server, tenants):
    a, b, _ = tenants
    headers = {"Idempotency-Key": unique()}
    first, second = (create_order(server, merchant["api_key"], headers) for merchant in (a, b))
    assert first.status == second.status == 200
    assert first.json()["id"] != second.json()["id"]
    assert second.headers.get("Idempotent-Replayed") is None
    assert server.request("GET", f"/v1/orders/{first.json()['id']}", key=b["api_key"]).status == 404


def test_a_48_character_account_id_is_accepted(server, keyed_merchant):
    """Ledger ids carry the merchant's id as a prefix: a client id of the longest published length must still fit."""
    account_id = ("a" + uuid.uuid4().hex * 2)[:48]
    response = server.request("POST", "/v1/accounts", {"id": account_id, "currency": "usd"},
                              key=keyed_merchant["api_key"])
    assert response.status == 200, response.body
    assert response.json()["id"] == account_id


# --- 7. rate limits, allow lists, suspension -------------------------------------------------------------------------

def assert_retry_after(response) -> int:
    assert_error(response, 429, "rate_limit_error")
    value = response.headers.get("Retry-After")
    assert value is not None and value.isdigit() and int(value) >= 1, value
    return int(value)


def test_the_per_ip_order_limit(limited):
    keys = [unique() for _ in range(3)]
    admitted = [create_order(limited, limited.demo_key, {"Idempotency-Key": key}) for key in keys]
    assert [reply.status for reply in admitted] == [200, 200, 200], [reply.body for reply in admitted]

    assert_retry_after(create_order(limited, limited.demo_key))
    other_merchant = create_merchant(limited, tier="premium")
    assert_retry_after(create_order(limited, other_merchant["api_key"]))  # the limit is the address's, not the key's

    replay = create_order(limited, limited.demo_key, {"Idempotency-Key": keys[0]})  # a replay is no new order
    assert replay.status == 200 and replay.json()["id"] == admitted[0].json()["id"]
    assert len(limited.request("GET", "/v1/orders?limit=100", key=limited.demo_key).json()["data"]) == 3


def test_the_per_ip_window_is_configurable(tmp_path):
    server = start_server(tmp_path, workers=1, extra=("--order-ip-limit", "1", "--order-ip-window-s", "2"))
    try:
        assert create_order(server, server.demo_key).status == 200
        assert assert_retry_after(create_order(server, server.demo_key)) <= 2
        time.sleep(2.1)  # the window has slid past the first order
        assert create_order(server, server.demo_key).status == 200
    finally:
        stop_server(server)


def order_from(server: Server, source_ip: str, key: str, headers: dict | None = None) -> Response:
    """POST /v1/orders from `source_ip`, a loopback address bound as the TCP source: the client IP the server sees."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30,
                                            source_address=(source_ip, 0))
    try:
        connection.request("POST", "/v1/orders", json.dumps(ORDER), {"Content-Type": "application/json",
                                                                     "Authorization": f"Bearer {key}", **(headers or {})})
        reply = connection.getresponse()
        return Response(reply.status, reply.headers, reply.read())
    finally:
        connection.close()


def test_one_ip_has_one_order_window_across_shards(two_shards):
    shard_map = ShardMap(2)
    by_shard: dict[int, dict] = {}
    while len(by_shard) < 2:
        merchant = create_merchant(two_shards, tier="premium")
        by_shard.setdefault(shard_map.shard_for(merchant["id"]), merchant)
    keys = [merchant["api_key"] for merchant in by_shard.values()]
    idempotency_keys = [unique() for _ in range(10)]
    admitted = [order_from(two_shards, "127.0.9.1", keys[index % 2], {"Idempotency-Key": idempotency_key})
                for index, idempotency_key in enumerate(idempotency_keys)]
    assert [reply.status for reply in admitted] == [200] * 10, [reply.body for reply in admitted]

    for key in keys:  # the 11th, whichever shard its merchant is on, waits for the first to leave the window
        assert 500 < assert_retry_after(order_from(two_shards, "127.0.9.1", key)) <= 600
    for index in range(2):  # a replay answers the first order, and takes no slot: the window is full
        replay = order_from(two_shards, "127.0.9.1", keys[index], {"Idempotency-Key": idempotency_keys[index]})
        assert replay.status == 200 and replay.json()["id"] == admitted[index].json()["id"], replay.body
        assert replay.headers.get("Idempotent-Replayed") == "true"
    assert order_from(two_shards, "127.0.9.2", keys[1]).status == 200  # another address has its own window
    assert [len(two_shards.request("GET", "/v1/orders?limit=100", key=key).json()["data"]) for key in keys] == [5, 6]


def test_the_per_merchant_tier_bucket(limited):
    merchant = create_merchant(limited, tier="basic")
    statuses, refused = [], None
    for _ in range(130):
        response = me(limited, merchant["api_key"])
        statuses.append(response.status)
        if response.status == 429 and refused is None:
            refused = response
    assert set(statuses) == {200, 429}, statuses
    assert statuses.index(429) >= 100, statuses  # the basic burst is 100
    assert statuses.count(200) <= 110, statuses  # then about one a second
    assert_retry_after(refused)
    assert me(limited, limited.demo_key).status == 200  # each merchant has its own bucket


@pytest.mark.parametrize("allowlist, status", [
    (["10.9.9.9"], 403),
    (["127.0.0.0/8"], 200),
    (["10.0.0.0/8", "127.0.0.1"], 200),
    (["::1"], 403),
    ([], 200),
])
def test_the_ip_allow_list(server, allowlist, status):
    merchant = create_merchant(server, ip_allowlist=["10.9.9.9"])
    assert_error(me(server, merchant["api_key"]), 403, "permission_error", "ip_not_allowed")
    patched = server.request("PATCH", f"/v1/merchants/{merchant['id']}", {"ip_allowlist": allowlist},
                             key=server.admin_token)
    assert patched.status == 200 and patched.json()["ip_allowlist"] == allowlist

    def token():  # a token is API access too
        return oauth(server, grant_type="client_credentials", client_id=merchant["client_id"],
                     client_secret=merchant["client_secret"])

    for send in (lambda: me(server, merchant["api_key"]), lambda: create_order(server, merchant["api_key"]), token):
        response = eventually(send, status)
        if status == 200:
            assert response.status == 200, response.body
        else:
            assert_error(response, 403, "permission_error", "ip_not_allowed")


@pytest.mark.parametrize("entry", ["not-an-ip", "10.0.0.300", "garbage/8", ""])
def test_a_malformed_allow_list_entry_is_400_and_locks_nobody_out(server, entry):
    response = server.request("POST", "/v1/merchants", {"name": "Shop", "email": "shop@example.com",
                                                       "ip_allowlist": ["127.0.0.1", entry]}, key=server.admin_token)
    assert assert_error(response, 400, "invalid_request_error", "parameter_invalid")["param"] == "ip_allowlist"
    merchant = create_merchant(server)
    patched = server.request("PATCH", f"/v1/merchants/{merchant['id']}", {"ip_allowlist": [entry]},
                             key=server.admin_token)
    assert assert_error(patched, 400, "invalid_request_error", "parameter_invalid")["param"] == "ip_allowlist"
    assert me(server, merchant["api_key"]).status == 200


@pytest.mark.parametrize("where, allowlist, status", [
    ("proxied", ["203.0.113.7"], 200),  # the client the trusted proxy names
    ("proxied", ["127.0.0.0/8"], 403),  # the proxy itself is not the client
    ("server", ["203.0.113.7"], 403),  # no trusted proxy: the header is the caller's own claim
    ("server", ["127.0.0.0/8"], 200),
])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(request, where, allowlist, status):
    server = request.getfixturevalue(where)
    merchant = create_merchant(server, ip_allowlist=allowlist)
    response = me(server, merchant["api_key"], headers={"X-Forwarded-For": "203.0.113.7"})
    if status == 200:
        assert response.status == 200, response.body
    else:
        assert_error(response, 403, "permission_error", "ip_not_allowed")


@pytest.mark.parametrize("value", ["10.0.0.300", "garbage/8", ""])
def test_a_malformed_trusted_proxy_is_a_usage_error(capsys, value):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["serve", "--trusted-proxy", "127.0.0.1", "--trusted-proxy", value])
    assert stopped.value.code == 2
    assert f"--trusted-proxy: not an IP address or network: {value!r}" in capsys.readouterr().err


def test_more_than_100_trusted_proxies_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["serve", *["--trusted-proxy", "10.0.0.1"] * 101])
    assert stopped.value.code == 2 and "at most 100 --trusted-proxy values" in capsys.readouterr().err


def test_the_admin_token_on_a_merchant_route_is_403_not_a_bad_credential(server):
    assert_error(me(server, server.admin_token), 403, "permission_error", "merchant_only")


def test_a_suspended_merchant_is_403_until_reactivated(server):
    merchant = create_merchant(server)
    token = oauth_token(server, merchant)
    path = f"/v1/merchants/{merchant['id']}"
    assert server.request("PATCH", path, {"status": "suspended"}, key=server.admin_token).json()["status"] == "suspended"
    for key in (merchant["api_key"], token):
        for send in (lambda: me(server, key), lambda: create_order(server, key)):
            assert_error(eventually(send, 403), 403, "permission_error", "account_suspended")
    assert server.request("PATCH", path, {"status": "active"}, key=server.admin_token).status == 200
    for key in (merchant["api_key"], token):
        assert eventually(lambda: me(server, key), 200).status == 200


# --- 8. idempotency keys ---------------------------------------------------------------------------------------------

def test_the_same_json_spaced_or_ordered_otherwise_is_the_same_body(server):
    headers = {"Idempotency-Key": unique(), "Content-Type": "application/json"}
    first = server.request("POST", "/v1/orders", raw=b'{"name":"Tea","amount":700,"currency":"usd"}',
                           key=server.demo_key, headers=headers)
    again = server.request("POST", "/v1/orders", raw=b'{ "currency" : "usd",\n  "amount": 700, "name": "Tea" }',
                           key=server.demo_key, headers=headers)
    assert (first.status, again.status, again.headers.get("Idempotent-Replayed")) == (200, 200, "true")
    assert again.json() == first.json()


def test_a_replayed_error_says_it_is_a_replay(server):
    customer = server.request("POST", "/v1/customers", {"email": "ann@example.com"}, key=server.demo_key).json()
    headers = {"Idempotency-Key": unique()}
    path = f"/v1/customers/{customer['id']}/withdrawals"
    first, again = (server.request("POST", path, {"amount": 10**9, "currency": "usd"}, key=server.demo_key,
                                   headers=headers) for _ in range(2))
    assert (first.status, again.status) == (402, 402) and again.json() == first.json()
    assert (first.headers.get("Idempotent-Replayed"), again.headers.get("Idempotent-Replayed")) == (None, "true")


def test_a_repeated_request_replays_the_first_response(server):
    headers = {"Idempotency-Key": unique()}
    first, second = create_order(server, server.demo_key, headers), create_order(server, server.demo_key, headers)
    assert first.status == second.status == 200
    assert first.headers.get("Idempotent-Replayed") is None
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.json() == first.json()


def _post_order(server, key):
    return "/v1/orders", key, {**ORDER, "amount": 100}, {**ORDER, "amount": 200}


def _post_customer(server, key):
    return "/v1/customers", key, {"email": "a@example.com"}, {"email": "b@example.com"}


def _post_account(server, key):
    return "/v1/accounts", key, {"currency": "usd"}, {"currency": "eur"}


def _post_transfer(server, key):
    accounts = [server.request("POST", "/v1/accounts", {"id": unique("acct"), "currency": "usd"}, key=key).json()["id"]
                for _ in range(2)]
    transfer = {"id": unique("tr"), "debit_account_id": accounts[0], "credit_account_id": accounts[1],
                "currency": "usd"}
    return "/v1/transfers", key, {**transfer, "amount": 10}, {**transfer, "amount": 20}


def _post_merchant(server, key):
    return ("/v1/merchants", server.admin_token, {"name": "A", "email": "a@example.com"},
            {"name": "B", "email": "a@example.com"})


def _post_sub_account(server, key):
    merchant = create_merchant(server)
    return f"/v1/merchants/{merchant['id']}/sub_accounts", server.admin_token, {"name": "A"}, {"name": "B"}


def _post_dashboard_user(server, key):
    merchant = create_merchant(server)
    return (f"/v1/merchants/{merchant['id']}/dashboard_users", server.admin_token,
            {"email": "a@example.com", "password": PASSWORD}, {"email": "b@example.com", "password": PASSWORD + "2"})


REUSED_KEY_CASES = [
    pytest.param(_post_order, id="orders"),
    pytest.param(_post_customer, id="customers"),
    pytest.param(_post_account, id="accounts"),
    pytest.param(_post_transfer, id="transfers"),
    pytest.param(_post_merchant, id="merchants"),
    pytest.param(_post_sub_account, id="sub_accounts"),
    pytest.param(_post_dashboard_user, id="dashboard_users"),
]


@pytest.mark.parametrize("case", REUSED_KEY_CASES)
def test_the_same_key_with_a_different_body_is_409(server, keyed_merchant, case):
    path, key, body, other_body = case(server, keyed_merchant["api_key"])
    headers = {"Idempotency-Key": unique()}
    first = server.request("POST", path, body, key=key, headers=headers)
    assert first.status == 200, first.body
    assert_error(server.request("POST", path, other_body, key=key, headers=headers), 409, "invalid_request_error",
                 "idempotency_key_reused")
    again = server.request("POST", path, body, key=key, headers=headers)
    assert again.status == 200 and again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"


def test_a_key_is_honoured_by_every_edge_worker(server):
    headers = {"Idempotency-Key": unique()}
    first = create_order(server, server.demo_key, headers)
    assert first.status == 200
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        repeats = list(pool.map(lambda _: create_order(server, server.demo_key, headers), range(24)))
    assert all(reply.status == 200 and reply.headers.get("Idempotent-Replayed") == "true" for reply in repeats)
    assert all(reply.json() == first.json() for reply in repeats)


def test_concurrent_first_requests_create_one_order(server):
    headers = {"Idempotency-Key": unique()}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: create_order(server, server.demo_key, headers), range(16)))
    assert all(reply.status == 200 for reply in replies), [reply.body for reply in replies]
    assert len({reply.body for reply in replies}) == 1
    assert sum(reply.headers.get("Idempotent-Replayed") != "true" for reply in replies) == 1


@pytest.mark.parametrize("length, status", [(1, 200), (255, 200), (256, 400), (1000, 400), (0, 400)])
def test_key_length(server, length, status):
    key = (uuid.uuid4().hex * 40)[:length]
    response = create_order(server, server.demo_key, {"Idempotency-Key": key})
    if status == 200:
        assert response.status == 200, response.body
    else:
        assert_error(response, 400, "invalid_request_error")


def test_a_key_that_is_not_utf8_is_refused_without_harming_other_requests(server, keyed_merchant):
    order = create_order(server, server.demo_key).json()
    poisoned = [("POST", "/v1/orders", ORDER), ("PATCH", f"/v1/orders/{order['id']}", {"name": "renamed"})]

    def send(index: int):
        if index % 2:
            method, path, body = poisoned[index // 2 % 2]
            headers = {"Idempotency-Key": "key-\xff"}  # http.client sends the byte 0xff
            return "poisoned", server.request(method, path, body, key=server.demo_key, headers=headers)
        return "innocent", create_order(server, keyed_merchant["api_key"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(send, range(160)))
    statuses = {kind: sorted({reply.status for k, reply in replies if k == kind}) for kind in ("poisoned", "innocent")}
    assert statuses["innocent"] == [200], statuses
    assert all(status < 500 for status in statuses["poisoned"]), statuses
    for kind, reply in replies:
        if reply.status >= 400:
            assert_error(reply, reply.status, "invalid_request_error")


@pytest.fixture(scope="module")
def restarted(tmp_path_factory):
    """A server that answered keyed requests, was stopped, and was started again on the same data folder."""
    folder = tmp_path_factory.mktemp("restart")
    before = start_server(folder, workers=1)
    order_key, merchant_key = unique(), unique()
    merchant_body = {"name": "Restarted", "email": "r@example.com"}
    order = create_order(before, before.demo_key, {"Idempotency-Key": order_key})
    merchant = before.request("POST", "/v1/merchants", merchant_body, key=before.admin_token,
                              headers={"Idempotency-Key": merchant_key})
    assert order.status == merchant.status == 200
    stop_server(before)
    after = start_server(folder, workers=1)
    after.admin_token = before.admin_token  # printed only at first start
    yield {"server": after, "demo_key": before.demo_key, "order": (order_key, order.json()),
           "merchant": (merchant_key, merchant_body, merchant.json())}
    stop_server(after)


def test_an_order_key_replays_after_a_restart(restarted):
    after = restarted["server"]
    key, order = restarted["order"]
    replay = create_order(after, restarted["demo_key"], {"Idempotency-Key": key})
    assert replay.status == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["id"] == order["id"]
    # the same order; only payment_url follows the server's new address
    assert {**replay.json(), "payment_url": None} == {**order, "payment_url": None}
    assert replay.json()["payment_url"].endswith(f"/pay/{order['id']}")
    assert_error(create_order(after, restarted["demo_key"], {"Idempotency-Key": key}, amount=1), 409,
                 "invalid_request_error", "idempotency_key_reused")


def test_a_merchant_creation_replays_after_a_restart_with_the_same_secrets(restarted):
    after = restarted["server"]
    key, body, merchant = restarted["merchant"]
    replay = after.request("POST", "/v1/merchants", body, key=after.admin_token, headers={"Idempotency-Key": key})
    assert replay.status == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert (replay.json()["id"], replay.json()["api_key"]) == (merchant["id"], merchant["api_key"])
    assert all(replay.json()[name] == merchant[name] for name in SECRETS)
    assert me(after, merchant["api_key"]).json()["id"] == merchant["id"]


# --- 9. Request-Id ---------------------------------------------------------------------------------------------------

REQUESTS = [
    ("GET", "/healthz", None, None),
    ("GET", "/.well-known/jwks.json", None, None),
    ("GET", "/v1/merchants/me", None, "demo"),
    ("POST", "/v1/orders", ORDER, "demo"),
    ("POST", "/v1/orders", ORDER, None),  # 401
    ("POST", "/v1/merchants", {"name": "x", "email": "x@example.com"}, "demo"),  # 403
    ("GET", "/v1/orders/ord_missing", None, "demo"),  # 404
    ("GET", "/v1/no/such/route", None, None),  # 404 unmatched
    ("PUT", "/v1/orders", ORDER, "demo"),  # 405
    ("POST", "/v1/orders", b"{not json", "demo"),  # 400
    ("POST", "/oauth/token", None, None),  # 400 grant_type
    ("GET", "/v1/admin/ledger_check", None, "admin"),
]


def test_every_response_carries_a_request_id(server):
    seen = set()
    for method, path, body, credential in REQUESTS:
        key = {"demo": server.demo_key, "admin": server.admin_token, None: None}[credential]
        raw = body if isinstance(body, bytes) else None
        response = server.request(method, path, None if raw else body, key=key, raw=raw)
        request_id = response.headers.get("Request-Id")
        assert request_id, (method, path, response.status)
        seen.add(request_id)
    assert len(seen) == len(REQUESTS)


def test_a_client_request_id_is_echoed(server):
    request_id = unique("req")
    for key in (server.demo_key, "bad-key"):
        assert me(server, key, {"Request-Id": request_id}).headers.get("Request-Id") == request_id
