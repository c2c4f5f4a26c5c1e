"""Nothing secret rests in clear: after card payments and card deposits through a real `paygate serve --host 0.0.0.0`
with its actors, a webhook secret rotated (deliveries signed under both) and a receipt mailed to the local mail sink,
no file under the data folder (journal, snapshots, mail, the notifier's files), no Ray log and no line serve printed
holds a card number, a CVC, a secret a merchant was given or the admin token; no process serve started shows one in
its command line or environment; the data folder is the owner's alone; only the HTTP port listens beyond loopback."""

import asyncio
import hashlib
import json
import mmap
import os
import pathlib
import re
import socket
import stat
import time
import uuid

import pytest

from edge_harness import Server
from test_internal_sockets import LOOPBACK, _listening_tcp, _socket_inodes
from test_notify_e2e import Hooks, signed

PAN = "4371853029648156"  # Luhn-valid, not a published test card: the acquirer authorizes it
CVC = "7293"
ADMIN_TOKEN = "adm_" + uuid.uuid4().hex + uuid.uuid4().hex
MAX_OUTPUT_LINES = 200_000
# Sealed by the merchant-credentials work that lands beside this: strict, so the mark goes when they are sealed.
SEALED_SECRETS = ("signing_secret", "webhook_secret")


class RecordingServer(Server):
    """Keeps every line serve prints (the harness keeps the last few hundred)."""

    def _read_output(self) -> None:
        for line in self.process.stdout:
            if len(self.output) < MAX_OUTPUT_LINES:
                self.output.append(line)


@pytest.fixture(scope="module")
def hooks():
    hooks = Hooks()
    yield hooks
    asyncio.run_coroutine_threadsafe(hooks.runner.cleanup(), hooks.loop).result(10)
    hooks.loop.call_soon_threadsafe(hooks.loop.stop)


@pytest.fixture(scope="module")
def run(tmp_path_factory, hooks):
    """The server after its payments, still running, and the secrets it handed out (the rotated set's as `new_*`)."""
    folder = tmp_path_factory.mktemp("secrets")
    rules = folder / "risk_rules.json"  # one card pays every payment here: no velocity limit in the way
    rules.write_text(json.dumps({"velocity": {"card_fingerprint": {"attempts": 1000, "window_s": 600}}}))
    server = RecordingServer(folder / "data", workers=2, actors=True,
                             environment={"PAYGATE_ADMIN_TOKEN": ADMIN_TOKEN, "PAYGATE_LOG_LEVEL": "INFO"},
                             extra=("--snapshot-every-batches", "5", "--host", "0.0.0.0", "--risk-rules", str(rules))
                             ).start()
    try:
        merchant = call(server, "POST", "/v1/merchants", {"name": "Shop", "email": "shop@example.com",
                                                          "webhook_url": hooks.url("shop")}, ADMIN_TOKEN)
        rotated = call(server, "POST", f"/v1/merchants/{merchant['id']}/api_keys", {"expires_in": 3600}, ADMIN_TOKEN)
        secrets = {name: merchant[name] for name in ("api_key", "client_secret", *SEALED_SECRETS)}
        secrets.update({f"new_{name}": rotated[name] for name in ("api_key", "client_secret", *SEALED_SECRETS)})
        pay_and_deposit(server, merchant["api_key"])
        mail_and_webhooks(server, hooks, secrets)
        yield server, secrets
    finally:
        server.stop()


def call(server, method: str, path: str, body, key: str, headers: dict | None = None) -> dict:
    response = server.request(method, path, body, key=key, headers=headers)
    assert response.status == 200, (path, response.status, response.body[:300])
    # The CVC as a value of its own: four digits can turn up inside a random hex id
    assert PAN.encode() not in response.body and not re.search(rb"(?<![0-9a-f])" + CVC.encode() + rb"(?![0-9a-f])", response.body)
    return response.json()


def pay_and_deposit(server, key: str) -> None:
    card = {"number": PAN, "exp_month": 12, "exp_year": 2031, "cvc": CVC, "holder_name": "Ada"}
    payments = []
    for number in range(4):
        body = {"amount": 1000 + number, "currency": "usd", "payment_method": {"type": "card", "card": card}}
        payments.append(call(server, "POST", "/v1/payments", body, key, {"Idempotency-Key": f"pay-{number}"}))
    # The same key and card with another CVC: the stored fingerprint never saw a CVC, so this is the same request.
    other_cvc = {**card, "cvc": "0000"}
    again = server.request("POST", "/v1/payments", {"amount": 1000, "currency": "usd", "payment_method": {
        "type": "card", "card": other_cvc}}, key=key, headers={"Idempotency-Key": "pay-0"})
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == payments[0]["id"]
    customer = call(server, "POST", "/v1/customers", {"email": "c@example.com", "name": "C"}, key,
                    {"Idempotency-Key": "customer"})
    deposit = call(server, "POST", f"/v1/customers/{customer['id']}/deposits", {
        "amount": 500, "currency": "usd", "payment_method": {"type": "card", "card": card}}, key,
        {"Idempotency-Key": "deposit"})
    token = payments[0]["payment_method"]["token"]
    payments.append(call(server, "POST", "/v1/payments", {"amount": 700, "currency": "usd", "payment_method": {
        "type": "card", "token": token}}, key, {"Idempotency-Key": "saved-card"}))
    deadline = time.monotonic() + 60
    for path in [f"/v1/payments/{payment['id']}" for payment in payments] + [f"/v1/deposits/{deposit['id']}"]:
        while call(server, "GET", path, None, key)["status"] != "succeeded":
            assert time.monotonic() < deadline, f"{path} never succeeded"
            time.sleep(0.2)


def mail_and_webhooks(server, hooks, secrets: dict[str, str]) -> None:
    """A paid order with a customer's email: its receipt reaches the mail sink in data/mail, and its webhooks carry a
    signature under the rotated secret and one under the old, in its grace."""
    order = call(server, "POST", "/v1/orders", {"name": "Tea", "amount": 900, "currency": "usd",
                                                "customer_email": "reader@example.com"}, secrets["new_api_key"])
    card = {"number": PAN, "exp_month": 12, "exp_year": 2031, "cvc": CVC}
    payment = call(server, "POST", "/v1/payments", {"order_id": order["id"], "payment_method": {
        "type": "card", "card": card}}, secrets["new_api_key"], {"Idempotency-Key": "order-payment"})
    deadline = time.monotonic() + 60
    while call(server, "GET", f"/v1/payments/{payment['id']}", None, secrets["new_api_key"])["status"] != "succeeded":
        assert time.monotonic() < deadline, "the order's payment never succeeded"
        time.sleep(0.2)
    while not (list((server.data / "mail").glob("*.eml")) and hooks.of("shop", ok_only=True)):
        assert time.monotonic() < deadline, "no receipt in data/mail or no webhook delivered"
        time.sleep(0.2)
    hit = hooks.of("shop", ok_only=True)[0]
    timestamp, first, second = hit.signature.split(",")
    assert signed(secrets["new_webhook_secret"], f"{timestamp},{first}", hit.body)
    assert signed(secrets["webhook_secret"], f"{timestamp},{second}", hit.body)


def files_under(folder: pathlib.Path) -> list[pathlib.Path]:
    return [path for path in folder.rglob("*") if path.is_file() and not path.is_symlink()]


def holds(path: pathlib.Path, needles: dict[str, bytes]) -> list[str]:
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return []
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as content:
                return [name for name, needle in needles.items() if content.find(needle) != -1]
    except FileNotFoundError:  # a temporary file renamed since it was listed (a cursor, stats): read under its name
        return []


def needles_of(named: dict[str, str]) -> dict[str, bytes]:
    needles = {name: value.encode() for name, value in named.items()}
    needles["pan grouped"] = " ".join(PAN[i:i + 4] for i in range(0, 16, 4)).encode()
    needles["cvc as a JSON string"] = f'"{CVC}"'.encode()
    needles["cvc as a msgpack string"] = b"\xa4" + CVC.encode()
    needles["cvc field"] = b'"cvc"'
    return needles


def found_anywhere(server, named: dict[str, str]) -> dict[str, list[str]]:
    needles = needles_of(named)
    data_files = files_under(server.data)
    assert [path for path in data_files if path.name == "data.mdb"], "no journal found"
    assert [path for path in data_files if path.name.startswith("snapshot-")], "no snapshot found"
    session = pathlib.Path(json.loads((server.data / "ray.json").read_bytes())["session_dir"])
    log_files = files_under(session / "logs")
    assert log_files, "no Ray logs found"
    found = {str(path): hits for path in data_files + log_files if (hits := holds(path, needles))}
    output = "".join(server.output).encode()
    found["serve output"] = [name for name, needle in needles.items() if needle in output]
    return {where: hits for where, hits in found.items() if hits}


def test_no_card_number_cvc_admin_token_or_hashed_credential_rests_or_is_logged(run):
    server, secrets = run
    hashed = {name: value for name, value in secrets.items() if name.removeprefix("new_") not in SEALED_SECRETS}
    named = {"pan": PAN, "admin token": ADMIN_TOKEN, **hashed}
    assert found_anywhere(server, named) == {}


def test_no_signing_or_webhook_secret_rests_or_is_logged(run):
    server, secrets = run
    sealed = {name: value for name, value in secrets.items() if name.removeprefix("new_") in SEALED_SECRETS}
    assert len(sealed) == 4 and found_anywhere(server, sealed) == {}


def test_the_data_folder_and_all_in_it_is_the_owners_alone(run):
    server, _ = run
    mail, notifier = list((server.data / "mail").glob("*.eml")), list((server.data / "notifier").iterdir())
    assert mail and notifier and (server.data / "cursors").is_dir()
    for path in [server.data / "mail", server.data / "notifier", server.data / "cursors"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in [*mail, *notifier]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(server.data.stat().st_mode) == 0o700
    for path in server.data.rglob("*"):
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # a temporary file renamed since it was listed
            continue
        if not stat.S_ISLNK(mode):
            assert stat.S_IMODE(mode) & 0o077 == 0, (path, oct(mode))


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_no_process_serve_started_has_a_secret_in_its_command_line_or_environment(run):
    server, secrets = run
    children = descendants(server.process.pid)
    assert len(children) >= 5, children  # edge workers, the shard, the simulated providers, Ray's processes
    secret = {name: value.encode() for name, value in {"admin token": ADMIN_TOKEN, "pan": PAN, **secrets}.items()}
    # The token's hash goes to the edge workers in their environment (owner-only), never where `ps` shows it.
    in_argv = {**secret, "admin token hash": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest().encode()}
    leaks = {}
    for pid in children:
        for part, needles in (("cmdline", in_argv), ("environ", secret)):
            try:
                content = pathlib.Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue  # it ended meanwhile
            if hits := [name for name, needle in needles.items() if needle in content]:
                leaks[f"{pid} {part}"] = hits
    assert leaks == {}


def is_rays(pid: int) -> bool:
    """A process of Ray's own (GCS, raylet, agents, the workers its actors run in) or serve, which hosts Ray's driver:
    each holds a gRPC server of Ray's."""
    try:
        command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return command.startswith(b"ray::") or b"/site-packages/ray/" in command or b"edge.cli\0serve" in command


def listening_beyond_loopback(pids: list[int]) -> dict[int, set[int]]:
    found = {}
    for pid in pids:
        if ports := {port for host, port in _listening_tcp(_socket_inodes([pid])) if host not in LOOPBACK}:
            found[pid] = ports
    return found


def test_only_the_http_port_of_paygates_own_processes_listens_beyond_loopback(run):
    """Edge workers, shards, the connector, the notifier's own sockets, the simulated providers and the mail sink, with
    serve given --host 0.0.0.0: the HTTP port alone is reachable from other hosts."""
    server, _ = run
    pids = descendants(server.process.pid)
    own = listening_beyond_loopback([pid for pid in pids if not is_rays(pid)])
    assert own and set().union(*own.values()) == {server.port}, own


def test_only_the_http_port_listens_beyond_loopback_ray_included(run):
    """Ray's GCS, raylet, agents, workers and serve's own driver too: a local runtime is on loopback."""
    server, _ = run
    assert any(is_rays(pid) for pid in descendants(server.process.pid))
    found = listening_beyond_loopback([server.process.pid, *descendants(server.process.pid)])
    assert set().union(*found.values()) == {server.port}, found


def test_links_given_out_name_the_machine_not_every_interface(run):
    """With --host 0.0.0.0, what serve prints and the URLs in its answers name the machine."""
    server, secrets = run
    machine = f"http://{socket.gethostname()}:{server.port}"
    assert f"paygate is serving at {machine} " in "".join(server.output)
    order = call(server, "POST", "/v1/orders", {"name": "Link", "amount": 100, "currency": "usd"},
                 secrets["new_api_key"])
    assert order["payment_url"] == f"{machine}/pay/{order['id']}"
