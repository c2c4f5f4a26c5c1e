"""Black-box HTTP tests of credential rotation and signed-request replay, against a real `paygate serve` with two edge
workers: new sets work beside the old for their grace, then alone; revocation; listing without secrets; OAuth tokens
die with their set; a copy of a signed request is refused on every worker, when racing, and after a restart; no
secret rests in the data folder."""

import concurrent.futures
import hashlib
import hmac
import json
import time
import urllib.parse
import uuid

import pytest

from edge_harness import Server, assert_ledger_ok

ORDER = {"name": "Coffee", "amount": 1999, "currency": "usd"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SECRET_FIELDS = ("api_key", "client_secret", "signing_secret", "webhook_secret")
CACHE_WAIT_S = 6  # the edge keeps merchant records up to 2 s per worker
MERCHANT_CACHE_S = 2.5
ATTEMPTS_PER_WORKER = 8  # connections land on either worker: enough that both answer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("credentials"), workers=2,
                     extra=("--order-ip-limit", "1000", "--last-used-every-s", "1")).start()
    yield started
    assert_ledger_ok(started)
    started.stop()


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def create_merchant(server: Server, **fields) -> dict:
    response = server.request("POST", "/v1/merchants", {"name": "Shop", "email": "o@example.com", **fields},
                              key=server.admin_token)
    assert response.status == 200, response.body
    return response.json()


def rotate(server: Server, merchant_id: str, key: str, **body):
    return server.request("POST", f"/v1/merchants/{merchant_id}/api_keys", body, key=key,
                          headers={"Idempotency-Key": unique()})


def rotated(server: Server, merchant: dict, expires_in: int) -> dict:
    response = rotate(server, merchant["id"], server.admin_token, expires_in=expires_in)
    assert response.status == 200, response.body
    return response.json()


def me(server: Server, key: str):
    return server.request("GET", "/v1/merchants/me", key=key)


def eventually(send, status: int, timeout_s: float = CACHE_WAIT_S):
    """`send()` again until it answers `status` (merchant records are cached a moment per worker); the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = send()
        if response.status == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def settled() -> None:
    """Every worker has read the merchant's record again since it changed (each caches it up to 2 s)."""
    time.sleep(MERCHANT_CACHE_S)


def on_every_worker(send, status: int) -> None:
    statuses = [send().status for _ in range(ATTEMPTS_PER_WORKER)]
    assert statuses == [status] * ATTEMPTS_PER_WORKER, statuses


def signed_headers(secret: str, body: bytes, ts: int, path: str = "/v1/orders") -> dict:
    digest = hmac.new(secret.encode(), f"{ts}.POST.{path}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Paygate-Timestamp": str(ts), "Paygate-Signature": f"v1={digest}"}


def send_signed(server: Server, api_key: str, headers: dict, body: bytes, idempotency_key: str | None = None):
    extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return server.request("POST", "/v1/orders", raw=body, key=api_key, headers={**headers, **extra})


def oauth(server: Server, merchant: dict, client_secret: str):
    form = {"grant_type": "client_credentials", "client_id": merchant["client_id"], "client_secret": client_secret}
    return server.request("POST", "/oauth/token", raw=urllib.parse.urlencode(form).encode(), headers=FORM)


def test_a_rotation_answers_new_secrets_once_and_both_sets_work_until_the_old_expires(server):
    merchant = create_merchant(server)
    response = rotate(server, merchant["id"], merchant["api_key"], expires_in=3)  # the merchant rotates its own
    assert response.status == 200, response.body
    new = response.json()
    assert new["id"].startswith("key_") and new["object"] == "api_key" and new["client_id"] == merchant["client_id"]
    assert all(new[field] and new[field] != merchant[field] for field in SECRET_FIELDS)
    assert new["api_key"].startswith(f"sk_{merchant['id']}_")
    assert eventually(lambda: me(server, new["api_key"]), 200).status == 200
    settled()
    on_every_worker(lambda: me(server, new["api_key"]), 200)
    on_every_worker(lambda: me(server, merchant["api_key"]), 200)
    time.sleep(3)
    on_every_worker(lambda: me(server, merchant["api_key"]), 401)
    on_every_worker(lambda: me(server, new["api_key"]), 200)


def test_a_set_in_its_grace_cannot_rotate_again_and_a_replay_shows_no_secret(server):
    merchant = create_merchant(server)
    key = unique()
    first = server.request("POST", f"/v1/merchants/{merchant['id']}/api_keys", {}, key=merchant["api_key"],
                           headers={"Idempotency-Key": key})
    assert first.status == 200, first.body
    new = first.json()
    replay = server.request("POST", f"/v1/merchants/{merchant['id']}/api_keys", {}, key=merchant["api_key"],
                            headers={"Idempotency-Key": key})
    assert replay.status == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["id"] == new["id"] and not any(field in replay.json() for field in SECRET_FIELDS)
    assert eventually(lambda: me(server, new["api_key"]), 200).status == 200
    settled()
    # the old key, leaked say, cannot revoke the set that replaced it
    refused = eventually(lambda: rotate(server, merchant["id"], merchant["api_key"], expires_in=0), 403)
    assert refused.status == 403 and refused.json()["error"]["code"] == "credential_in_grace", refused.body
    on_every_worker(lambda: me(server, new["api_key"]), 200)
    assert rotate(server, merchant["id"], new["api_key"], expires_in=0).status == 200


def test_zero_expires_in_revokes_the_old_sets_at_once(server):
    merchant = create_merchant(server)
    new = rotated(server, merchant, expires_in=0)
    assert eventually(lambda: me(server, merchant["api_key"]), 401).status == 401
    settled()
    on_every_worker(lambda: me(server, merchant["api_key"]), 401)
    on_every_worker(lambda: me(server, new["api_key"]), 200)


def test_the_list_shows_live_sets_newest_first_with_last_use_and_never_a_secret(server):
    merchant = create_merchant(server)
    new = rotated(server, merchant, expires_in=600)
    assert eventually(lambda: me(server, new["api_key"]), 200).status == 200
    settled()

    def listed():
        response = server.request("GET", f"/v1/merchants/{merchant['id']}/api_keys", key=new["api_key"])
        assert response.status == 200, response.body
        return response

    deadline = time.monotonic() + CACHE_WAIT_S
    while len(listed().json()["data"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    body = listed().json()
    assert [item["id"] for item in body["data"]] == [new["id"], "key_initial"]
    assert all(set(item) == {"id", "object", "client_id", "created_at", "expires_at", "last_used_at"}
               for item in body["data"])
    assert body["data"][0]["expires_at"] is None and body["data"][1]["expires_at"] is not None
    text = json.dumps(body)
    assert not any(secret in text for secret in (*(new[f] for f in SECRET_FIELDS),
                                                 *(merchant[f] for f in SECRET_FIELDS)))
    # each worker reports the sets it saw used every second here (a minute by default)
    deadline = time.monotonic() + CACHE_WAIT_S
    while listed().json()["data"][0]["last_used_at"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert listed().json()["data"][0]["last_used_at"] is not None


def test_another_merchant_can_neither_rotate_nor_list_yours(server):
    victim, other = create_merchant(server), create_merchant(server)
    assert rotate(server, victim["id"], other["api_key"]).status == 404
    listing = server.request("GET", f"/v1/merchants/{victim['id']}/api_keys", key=other["api_key"])
    assert listing.status == 404
    assert me(server, victim["api_key"]).status == 200


@pytest.mark.parametrize("body, param", [({"expires_in": -1}, "expires_in"), ({"expires_in": 31 * 86400}, "expires_in"),
                                         ({"expires_in": "soon"}, "expires_in"), ({"secret": "x"}, "secret")])
def test_a_bad_rotation_is_400(server, body, param):
    merchant = create_merchant(server)
    response = rotate(server, merchant["id"], server.admin_token, **body)
    assert response.status == 400, response.body
    assert response.json()["error"]["param"] == param
    assert me(server, merchant["api_key"]).status == 200


def test_the_signing_secret_rotates_with_its_grace(server):
    merchant = create_merchant(server, require_signature=True)
    new = rotated(server, merchant, expires_in=3)

    def signed_order(secret: str):
        body = json.dumps({**ORDER, "name": unique("order")}).encode()  # the same signed message twice is a replay
        return send_signed(server, new["api_key"], signed_headers(secret, body, int(time.time())), body)

    assert eventually(lambda: signed_order(new["signing_secret"]), 200).status == 200
    assert signed_order(merchant["signing_secret"]).status == 200
    time.sleep(3)
    assert eventually(lambda: signed_order(merchant["signing_secret"]), 401).status == 401
    response = signed_order(merchant["signing_secret"])
    assert response.json()["error"]["code"] == "signature_invalid"
    assert signed_order(new["signing_secret"]).status == 200


def test_oauth_tokens_die_with_their_client_secret_at_their_next_use(server):
    merchant = create_merchant(server)
    old_token = oauth(server, merchant, merchant["client_secret"]).json()["access_token"]
    assert me(server, old_token).status == 200
    new = rotated(server, merchant, expires_in=0)
    assert eventually(lambda: me(server, old_token), 401).status == 401
    settled()
    on_every_worker(lambda: me(server, old_token), 401)
    assert oauth(server, merchant, merchant["client_secret"]).status == 401
    new_token = oauth(server, merchant, new["client_secret"])
    assert new_token.status == 200, new_token.body
    assert me(server, new_token.json()["access_token"]).status == 200


def test_a_copy_of_a_signed_request_is_401_on_every_worker_under_any_key(server):
    merchant = create_merchant(server, require_signature=True)
    body = json.dumps({**ORDER, "name": unique("signed")}).encode()
    headers = signed_headers(merchant["signing_secret"], body, int(time.time()))
    first_key = unique()
    first = send_signed(server, merchant["api_key"], headers, body, first_key)
    assert first.status == 200, first.body
    for _ in range(ATTEMPTS_PER_WORKER):
        copy = send_signed(server, merchant["api_key"], headers, body, unique())
        assert copy.status == 401 and copy.json()["error"]["code"] == "signature_replayed", copy.body
    assert send_signed(server, merchant["api_key"], headers, body).status == 401
    # a retry under the first request's key is that request: its first answer again
    retry = send_signed(server, merchant["api_key"], headers, body, first_key)
    assert retry.status == 200 and retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.json()["id"] == first.json()["id"]


def test_racing_copies_of_a_signed_request_apply_once(server):
    merchant = create_merchant(server, require_signature=True)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            body = json.dumps({**ORDER, "name": unique("race")}).encode()
            headers = signed_headers(merchant["signing_secret"], body, int(time.time()))
            copies = [pool.submit(send_signed, server, merchant["api_key"], headers, body, unique()) for _ in range(4)]
            statuses = sorted(future.result().status for future in copies)
            assert statuses == [200, 401, 401, 401], statuses


def test_a_copy_is_refused_after_a_restart_and_no_secret_rests_in_the_data_folder(tmp_path):
    folder = tmp_path / "data"
    before = Server(folder, workers=2, extra=("--snapshot-every-batches", "2")).start()
    try:
        merchant = create_merchant(before, require_signature=True)
        new = rotated(before, merchant, expires_in=600)
        body = json.dumps(ORDER).encode()
        headers = signed_headers(new["signing_secret"], body, int(time.time()))
        assert eventually(lambda: send_signed(before, new["api_key"], headers, body), 200).status == 200
        for number in range(4):  # a few more batches, so that a snapshot is written
            assert create_merchant(before, name=f"filler {number}")
    finally:
        before.stop()
    secrets = [value for credentials in (merchant, new) for value in (credentials[f] for f in SECRET_FIELDS)]
    snapshots = list(folder.rglob("snapshot-*.bin"))
    assert snapshots, sorted(str(path) for path in folder.rglob("*"))
    # the scan reads what the shard keeps: the merchant and its new set's id are there, in journal and snapshot
    assert all(merchant["id"].encode() in path.read_bytes() and new["id"].encode() in path.read_bytes()
               for path in (max(snapshots), next(folder.rglob("data.mdb"))))
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path
    after = Server(folder, workers=2).start()
    after.admin_token = before.admin_token
    try:
        copy = send_signed(after, new["api_key"], headers, body, unique())
        assert copy.status == 401 and copy.json()["error"]["code"] == "signature_replayed", copy.body
        for api_key, signing_secret in ((new["api_key"], new["signing_secret"]),  # both sets, the old in its grace
                                        (merchant["api_key"], merchant["signing_secret"])):
            fresh = json.dumps({**ORDER, "name": unique("fresh")}).encode()
            response = send_signed(after, api_key, signed_headers(signing_secret, fresh, int(time.time())), fresh)
            assert response.status == 200, response.body
    finally:
        after.stop()
