"""Dashboard login against a real `paygate serve` with two edge workers: growing delays per account whatever worker
an attempt lands on, password hashing that leaves the event loop free, and old hashes made anew at login."""

import asyncio
import base64
import concurrent.futures
import hashlib
import time
import urllib.parse
import uuid

import pytest

from edge.auth import verify_password
from edge.limits import LOGIN_FREE_FAILURES
from edge.login import CURRENT_PARAMETERS
from edge_harness import Server
from engine.queries import GetMerchant
from engine.records import AddDashboardUser, DashboardUser
from journal.client import ShardClient
from journal.processes import running_address, running_key

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # behind a trusted proxy, so each test's merchant logs in from an address of its own: the per-IP window of
    # one worker would otherwise count every test's attempts together
    started = Server(tmp_path_factory.mktemp("login"), workers=2, extra=("--trusted-proxy", "127.0.0.1")).start()
    yield started
    started.stop()


def login(server: Server, merchant_id: str, email: str, password: str):
    query = urllib.parse.urlencode({"merchant_id": merchant_id})
    octets = hashlib.sha256(merchant_id.encode()).digest()[:3]
    return server.request("POST", f"/v1/auth/login?{query}", {"email": email, "password": password},
                          headers={"X-Forwarded-For": "10." + ".".join(map(str, octets))})


def dashboard_user(server: Server) -> tuple[str, str]:
    """A new merchant's id and the email of its dashboard user, once a login with it works."""
    reply = server.request("POST", "/v1/merchants", {"name": "Shop", "email": "owner@example.com"},
                           key=server.admin_token)
    merchant_id = reply.json()["id"]
    email = f"clerk-{uuid.uuid4().hex[:8]}@example.com"
    added = server.request("POST", f"/v1/merchants/{merchant_id}/dashboard_users",
                           {"email": email, "password": PASSWORD}, key=server.admin_token)
    assert added.status == 200, added.body
    assert login(server, merchant_id, email, PASSWORD).status == 200
    return merchant_id, email


def test_failed_logins_lock_the_account_on_every_worker_with_growing_delays(server):
    merchant_id, email = dashboard_user(server)
    for _ in range(LOGIN_FREE_FAILURES):
        assert login(server, merchant_id, email, "wrong password!").status == 401
    # whichever worker answers, the account now waits; the right password too, and the other spelling of the email
    for attempt in (PASSWORD, "wrong password!", PASSWORD):
        locked = login(server, merchant_id, email.upper() if attempt == PASSWORD else email, attempt)
        assert locked.status == 429 and locked.json()["error"]["code"] == "login_locked", locked.body
        assert locked.headers["Retry-After"] == "1"
    time.sleep(1.1)
    assert login(server, merchant_id, email, "wrong password!").status == 401  # the sixth failure: 2 s now
    assert login(server, merchant_id, email, PASSWORD).headers["Retry-After"] == "2"
    time.sleep(2.1)
    assert login(server, merchant_id, email, PASSWORD).status == 200  # and a success clears the count
    assert login(server, merchant_id, email, "wrong password!").status == 401


def test_an_unknown_email_is_locked_out_like_a_known_one(server):
    merchant_id, _ = dashboard_user(server)
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(LOGIN_FREE_FAILURES):
        assert login(server, merchant_id, nobody, PASSWORD).status == 401
    assert login(server, merchant_id, nobody, PASSWORD).json()["error"]["code"] == "login_locked"


def test_logins_in_progress_leave_the_api_answering(server):
    merchant_id, email = dashboard_user(server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # distinct unknown emails: each costs a full hash and none is locked out
        logins = [pool.submit(login, server, merchant_id, f"x{index}-{email}", PASSWORD) for index in range(4)]
        time.sleep(0.2)
        slowest_s = 0.0
        while not all(future.done() for future in logins):
            started = time.monotonic()
            assert server.request("GET", "/healthz").status == 200
            slowest_s = max(slowest_s, time.monotonic() - started)
            time.sleep(0.05)
        assert [future.result().status for future in logins] == [401] * 4
    assert slowest_s < 0.5


def stored_hash(server: Server, merchant_id: str, email: str, replacing: str | None = None) -> str:
    """The user's stored password hash, read from the shard itself; first set to `replacing` when given."""
    async def work() -> str:
        shard = server.data / "shard-0"
        client = ShardClient([running_address(shard)], running_key(shard), timeout_ms=5000)
        try:
            if replacing is not None:
                await client.submit([AddDashboardUser(merchant_id, DashboardUser(email, replacing))])
            merchant = (await client.read(GetMerchant(merchant_id=merchant_id))).record
            return next(user.password_hash for user in merchant.users if user.email == email)
        finally:
            client.close()

    return asyncio.run(work())


def test_a_password_hashed_with_older_parameters_is_hashed_anew_at_login(server):
    merchant_id, email = dashboard_user(server)
    salt = bytes(range(16))
    digest = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    old = f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert stored_hash(server, merchant_id, email, replacing=old) == old
    assert login(server, merchant_id, email, PASSWORD).status == 200
    new = stored_hash(server, merchant_id, email)
    assert new.startswith(CURRENT_PARAMETERS) and verify_password(PASSWORD, new)
    assert login(server, merchant_id, email, PASSWORD).status == 200
    assert stored_hash(server, merchant_id, email) == new  # once only
