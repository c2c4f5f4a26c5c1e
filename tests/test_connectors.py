"""The PSP connector actors and the provider follower on a real Ray runtime and a real shard process.

Ray starts once for the module (it takes seconds). Authorizations go first to a fake provider, a small aiohttp
server on a thread of this process that answers by card number and records what it was sent; follow-ups and stuck
payments then go to the real simulated piggybank and bank processes.
"""

import asyncio
import json
import pathlib
import pickle
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

ray = pytest.importorskip("ray")
import pynng  # noqa: E402
from aiohttp import web  # noqa: E402

from actors import followers, psp, runtime  # noqa: E402
from actors.connector_wire import (  # noqa: E402
    Authorization,
    AuthorizationBatch,
    CardData,
    ConnectorClient,
    batch_decoder,
    batch_encoder,
)
from actors.connectors import spawn  # noqa: E402
from actors.services import PROVIDERS, ProviderProcesses, ProviderService, write_secret  # noqa: E402
from engine.queries import GetPaymentRecord  # noqa: E402
from engine.records import (  # noqa: E402
    CancelPayment,
    CapturePayment,
    CardDetails,
    CreateMerchant,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    Idempotent,
    Merchant,
    Payment,
    Payout,
    RecordPspResult,
    Refund,
)
from journal.auth import KEY_BYTES, MessageKey, load_key  # noqa: E402
from journal.client import ShardClient  # noqa: E402
from journal.recovery import batch_decoder as journal_batch_decoder  # noqa: E402
from journal.wire import ReplyStatus  # noqa: E402
from shard_harness import address, free_ports, primary_config, start  # noqa: E402

MERCHANT = "mer_conn"
GOOD_CARD = "4242424242424242"  # the provider answers 202
BAD_CARD = "4242424242424241"  # Luhn-invalid: 402 incorrect_number
FAILING_CARD = "4000000000000119"  # 500 every time
CARDS = (GOOD_CARD, BAD_CARD, FAILING_CARD)
CVC = "7391"
# Four digits alone turn up by chance in megabytes of logs (ports, pids, ids): a leak would name the field, or be
# the msgpack string of the CVC.
CVC_LEAK = re.compile(rb"(?i)cvc\W{0,8}" + CVC.encode() + rb"\b|\xa4" + CVC.encode())
RETRIES = 2
WAIT_S = 15


class FakeProvider:
    """POST /v1/authorizations on a loopback port, answering by card number; keeps every request it got."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict] = []
        self.calls: list[tuple[str, str, str]] = []  # follow-ups and lookups: (method, path, reference or payment)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-provider", daemon=True)

    def start(self) -> "FakeProvider":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/authorizations", self._authorize)
        app.router.add_get("/v1/authorizations", self._look_up)
        app.router.add_post("/v1/captures", self._follow_up)
        app.router.add_post("/v1/voids", self._follow_up)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _authorize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        number = body["card"]["number"]
        if number == FAILING_CARD:
            return web.json_response({"error": "processing_error"}, status=500)
        if number == BAD_CARD:
            return web.json_response({"error": "incorrect_number"}, status=402)
        return web.json_response({"psp_reference": f"psp_{body['payment_id']}"}, status=202)

    async def _look_up(self, request: web.Request) -> web.Response:
        payment_id = request.query["payment_id"]
        self.calls.append(("GET", request.path, payment_id))
        return web.json_response({"psp_reference": f"psp_{payment_id}", "status": "authorized"})

    async def _follow_up(self, request: web.Request) -> web.Response:
        reference = (await request.json())["psp_reference"]
        self.calls.append(("POST", request.path, reference))
        return web.json_response({"psp_reference": reference})

    def count(self, payment_id: str) -> int:
        return sum(1 for body in list(self.requests) if body["payment_id"] == payment_id)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def run(coroutine):
    return asyncio.run(coroutine)


# Each shard's message key file, by its client address (the test shards each have their own).
KEY_FILES: dict[str, str] = {}


async def with_shard(shard_address: str, work):
    client = ShardClient([shard_address], load_key(KEY_FILES[shard_address]), timeout_ms=5000)
    try:
        return await work(client)
    finally:
        client.close()


def authorization(payment_id: str, number: str, capture: bool = True) -> Authorization:
    return Authorization(payment_id, MERCHANT, 1250, "usd", capture, CardData(number, 12, 2030, CVC))


def create_payments(shard_address: str, payment_ids: list[str]) -> None:
    async def work(client: ShardClient) -> None:
        reply = await client.submit([
            CreatePayment(payment=Payment(id=payment_id, merchant_id=MERCHANT, amount=1250, currency="usd",
                                          card=CardDetails("visa", "4242", 12, 2030)), processing_timeout_s=3600)
            for payment_id in payment_ids])
        assert reply.status == ReplyStatus.OK
        assert [outcome.code for outcome in reply.results] == ["ok"] * len(payment_ids)

    run(with_shard(shard_address, work))


def payment(shard_address: str, payment_id: str) -> Payment:
    async def work(client: ShardClient) -> Payment:
        return (await client.read(GetPaymentRecord(MERCHANT, "payment", payment_id))).record

    return run(with_shard(shard_address, work))


def committed_psp_results(shard_address: str) -> list[list[RecordPspResult]]:
    """The RecordPspResult commands of each committed batch that holds any."""
    async def work(client: ShardClient) -> list:
        found, sequence = [], 1
        while entries := await client.read_entries(sequence, limit=256):
            for entry in entries:
                commands = journal_batch_decoder.decode(entry.payload).commands
                results = [command for command in commands if type(command) is RecordPspResult]
                if results:
                    found.append(results)
            sequence = entries[-1].sequence + 1
        return found

    return run(with_shard(shard_address, work))


def wait_for(predicate, timeout_s: float = WAIT_S, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# Module fixtures: one Ray runtime, one shard, one provider, one connector


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    began = time.monotonic()
    description = runtime.start(None, tmp_path_factory.mktemp("paygate"))
    print(f"\n{description} (started in {time.monotonic() - began:.1f} s)")
    yield description
    runtime.stop()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    config = primary_config(tmp_path_factory.mktemp("connector-shard") / "shard")
    KEY_FILES[config.client_address] = config.key_file
    process = start(config)

    async def work(client: ShardClient) -> None:
        reply = await client.submit([CreateMerchant(Merchant(id=MERCHANT, name="Connector test", email="c@example.com"))])
        assert reply.results[0].code == "ok"

    run(with_shard(config.client_address, work))
    yield config
    process.stop()


@pytest.fixture(scope="module")
def provider():
    fake = FakeProvider().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def connector(ray_runtime, shard, provider):
    listen_address = address(free_ports(1)[0])
    handle = spawn("piggybank", provider.url, listen_address, [[shard.client_address]], shard.key_file, name="testbank",
                   retries=RETRIES, backoff_s=0.05)
    client = ConnectorClient(listen_address, load_key(shard.key_file))
    assert client.wait_connected(5)
    yield handle, client, listen_address
    client.close()
    ray.get(handle.stop.remote(), timeout=30)


def stats(handle) -> dict:
    return ray.get(handle.stats.remote(), timeout=10)


@pytest.fixture(scope="module")
def first_batch(connector, shard, provider):
    """One batch of three authorizations (202, 402, 500) pushed and fully handled."""
    handle, client, _ = connector
    ids = {GOOD_CARD: "pay_conn_good", BAD_CARD: "pay_conn_bad", FAILING_CARD: "pay_conn_failing"}
    create_payments(shard.client_address, list(ids.values()))
    before = stats(handle)
    batch = AuthorizationBatch([authorization(ids[number], number) for number in CARDS])
    assert client.send(batch) is True
    wait_for(lambda: stats(handle)["submitted"] - before["submitted"] >= 2 and not stats(handle)["batches_in_flight"],
             what="the connector to record both results")
    time.sleep(0.3)  # any late duplicate would show up now
    return ids, before, stats(handle)


# The wire types


def test_card_data_is_redacted_from_reprs_and_refuses_pickling():
    item = authorization("pay_x", GOOD_CARD)
    assert GOOD_CARD not in repr(item) and CVC not in repr(item) and GOOD_CARD not in str(item.card)
    with pytest.raises(TypeError):
        pickle.dumps(item)
    batch = AuthorizationBatch([item])
    assert batch_decoder.decode(batch_encoder.encode(batch)).items[0].card.number == GOOD_CARD


def test_send_fails_fast_when_no_connector_listens():
    with ConnectorClient(address(free_ports(1)[0]), MessageKey(bytes(KEY_BYTES))) as client:
        began = time.monotonic()
        assert client.send(AuthorizationBatch([authorization("pay_nobody", GOOD_CARD)])) is False
        assert time.monotonic() - began < 0.05
        assert client.wait_connected(0.2) is False
        assert client.send(AuthorizationBatch([authorization("pay_nobody", GOOD_CARD)])) is False


# The actor


def test_each_item_of_a_pushed_batch_reaches_the_provider_once(first_batch, provider):
    ids, before, after = first_batch
    assert provider.count(ids[GOOD_CARD]) == 1
    assert provider.count(ids[BAD_CARD]) == 1
    assert provider.count(ids[FAILING_CARD]) == 1 + RETRIES
    sent = [body for body in provider.requests if body["payment_id"] == ids[GOOD_CARD]][0]
    assert sent == {"payment_id": ids[GOOD_CARD], "merchant_id": MERCHANT, "amount": 1250, "currency": "usd",
                    "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2030, "cvc": CVC}, "capture": True}
    delta = {key: after[key] - before[key] for key in before}
    assert delta == {"batches": 1, "sent": 3, "accepted": 1, "declined": 1, "failed": 1, "retried": RETRIES,
                     "submitted": 2, "submit_failed": 0, "invalid_messages": 0, "batches_in_flight": 0,
                     "follow_ups": 0, "refused": 0, "follow_ups_failed": 0, "status_queries": 0, "stuck_settled": 0}


def test_a_decline_fails_the_payment_with_incorrect_number(first_batch, shard):
    ids, _, _ = first_batch
    declined = payment(shard.client_address, ids[BAD_CARD])
    assert (declined.status, declined.failure_code) == ("failed", "incorrect_number")
    assert declined.callback_ids == [f"cn_{ids[BAD_CARD]}_declined"]


def test_a_provider_error_is_retried_then_fails_the_payment_with_processing_error(first_batch, shard):
    ids, _, _ = first_batch
    failed = payment(shard.client_address, ids[FAILING_CARD])
    assert (failed.status, failed.failure_code, failed.failure_message) == (
        "failed", "processing_error", "the acquirer failed")


def test_an_accepted_authorization_submits_nothing_and_the_results_of_a_batch_go_in_one_submit(first_batch, shard):
    ids, _, _ = first_batch
    assert payment(shard.client_address, ids[GOOD_CARD]).status == "processing"
    recorded = committed_psp_results(shard.client_address)
    assert [sorted(command.payment_id for command in batch) for batch in recorded] == [
        sorted([ids[BAD_CARD], ids[FAILING_CARD]])]


def test_card_numbers_and_cvcs_are_neither_in_the_ray_logs_nor_in_the_journal(first_batch, shard):
    ids, _, _ = first_batch
    numbers = [number.encode() for number in CARDS]
    logs = runtime.logs_folder()
    assert logs is not None and logs.is_dir()
    log_text = b"".join(path.read_bytes() for path in logs.rglob("*") if path.is_file())
    # What is there: the connector's own log lines, naming the failed payment but not its card.
    assert b"connector testbank listening" in log_text and ids[FAILING_CARD].encode() in log_text
    assert not any(number in log_text for number in numbers) and not CVC_LEAK.search(log_text)
    shard_folder = pathlib.Path(shard.data)
    files = [*shard_folder.rglob("*"), pathlib.Path(shard.data).with_suffix(".log")]
    journal_bytes = b"".join(path.read_bytes() for path in files if path.is_file())
    assert ids[BAD_CARD].encode() in journal_bytes  # the journal holds the payments and their results
    assert b"incorrect_number" in journal_bytes
    assert not any(number in journal_bytes for number in numbers) and not CVC_LEAK.search(journal_bytes)


def test_an_undecodable_message_is_dropped_and_the_connector_goes_on(connector, shard, provider):
    handle, client, listen_address = connector
    before = stats(handle)
    with pynng.Push0(dial=listen_address, send_timeout=1000) as raw:
        raw.send(b"\x93not an authorization batch")
    create_payments(shard.client_address, ["pay_conn_after_garbage"])
    assert client.send(AuthorizationBatch([authorization("pay_conn_after_garbage", GOOD_CARD)]))
    wait_for(lambda: provider.count("pay_conn_after_garbage") == 1, what="the provider to be asked")
    after = wait_for(lambda: (s := stats(handle))["accepted"] > before["accepted"] and s)
    assert after["invalid_messages"] == before["invalid_messages"] + 1


def test_an_authorization_without_the_key_is_dropped_unread(connector, shard, provider):
    """A local process that reaches the connector's socket cannot have a card charged, with no key or a wrong one."""
    handle, client, listen_address = connector
    before = stats(handle)
    create_payments(shard.client_address, ["pay_conn_forged"])
    forged = batch_encoder.encode(AuthorizationBatch([authorization("pay_conn_forged", GOOD_CARD)]))
    with pynng.Push0(dial=listen_address, send_timeout=1000) as raw:
        raw.send(forged)
        raw.send(MessageKey(bytes(KEY_BYTES)).seal(forged))
    wait_for(lambda: stats(handle)["invalid_messages"] == before["invalid_messages"] + 2, what="both dropped")
    assert provider.count("pay_conn_forged") == 0 and stats(handle)["batches"] == before["batches"]


def test_spawn_again_finds_the_running_connector(connector, shard, provider):
    handle, _, listen_address = connector
    again = spawn("piggybank", provider.url, listen_address, [[shard.client_address]], shard.key_file, name="testbank")
    assert again._actor_id == handle._actor_id
    assert ray.get(again.ping.remote()) == f"connector-testbank listening on {listen_address}"


@pytest.fixture(scope="module")
def unreachable_connector(ray_runtime, shard):
    """A connector whose provider is not there: every attempt is a connection error."""
    listen_address = address(free_ports(1)[0])
    provider_url = f"http://127.0.0.1:{free_ports(1)[0]}"
    handle = spawn("piggybank", provider_url, listen_address, [[shard.client_address]], shard.key_file, name="unreachable",
                   retries=RETRIES, backoff_s=0.05)
    client = ConnectorClient(listen_address, load_key(shard.key_file))
    assert client.wait_connected(5)
    yield handle, client
    client.close()
    ray.kill(handle)


def test_connection_errors_are_retried_then_fail_the_payment(unreachable_connector, shard):
    handle, client = unreachable_connector
    create_payments(shard.client_address, ["pay_conn_unreachable"])
    assert client.send(AuthorizationBatch([authorization("pay_conn_unreachable", GOOD_CARD)]))
    done = wait_for(lambda: (s := stats(handle))["submitted"] and s, what="the failure to be recorded")
    assert (done["sent"], done["failed"], done["retried"], done["accepted"]) == (1, 1, RETRIES, 0)
    failed = payment(shard.client_address, "pay_conn_unreachable")
    assert (failed.status, failed.failure_code) == ("failed", "processing_error")


def test_a_stopped_connector_is_seen_at_once_by_its_clients(unreachable_connector):
    handle, client = unreachable_connector
    assert ray.get(handle.stop.remote(), timeout=30)["batches_in_flight"] == 0
    assert ray.get(handle.ping.remote()) == "connector-unreachable stopped"
    wait_for(lambda: not client.connected, timeout_s=5, what="the pipe to close")
    began = time.monotonic()
    assert client.send(AuthorizationBatch([authorization("pay_conn_late", GOOD_CARD)])) is False
    assert time.monotonic() - began < 0.05


# The connector interface, in process


def test_a_provider_answers_failed_to_what_it_does_not_offer_and_unknown_providers_are_refused():
    async def ask() -> list:
        settings = psp.ConnectorSettings(url="http://127.0.0.1:9")
        bank, piggybank = psp.make("bank", settings), psp.make("piggybank", settings)
        return [await bank.capture(psp.CaptureRequest(merchant_id=MERCHANT, payment_id="pay_x", amount=1,
                                                      currency="usd")),
                await bank.status(psp.PaymentStatusQuery(merchant_id=MERCHANT, payment_id="pay_x")),
                await piggybank.payout(psp.PayoutRequest(merchant_id=MERCHANT, payout_id="po_x", amount=1,
                                                         currency="usd"))]

    assert run(ask()) == [psp.Failed("bank does not take captures"), psp.Failed("bank does not take payment status "
                                                                                "queries"),
                          psp.Failed("piggybank does not take payouts")]
    with pytest.raises(ValueError, match="no connector for 'nobank'"):
        psp.make("nobank", psp.ConnectorSettings(url="http://127.0.0.1:9"))


def test_a_follow_up_uses_the_reference_the_gateway_has_and_looks_it_up_only_without_one():
    provider = FakeProvider().start()
    try:
        connector = psp.make("piggybank", psp.ConnectorSettings(url=provider.url, retries=0))

        async def follow_ups() -> list:
            await connector.start()
            try:
                return [await connector.follow_up(psp.CaptureRequest(
                            merchant_id=MERCHANT, payment_id="pay_known", amount=500, currency="usd",
                            psp_reference="psp_pay_known")),
                        await connector.follow_up(psp.VoidRequest(merchant_id=MERCHANT, payment_id="pay_unknown"))]
            finally:
                await connector.close()

        assert run(follow_ups()) == [psp.Accepted("psp_pay_known"), psp.Accepted("psp_pay_unknown")]
        assert provider.calls == [("POST", "/v1/captures", "psp_pay_known"),
                                  ("GET", "/v1/authorizations", "pay_unknown"),
                                  ("POST", "/v1/voids", "psp_pay_unknown")]
    finally:
        provider.stop()


class EchoConnector(psp.Connector):
    """A provider that authorizes everything and knows every payment: what a new provider's module looks like."""

    name = "echo"

    async def authorize(self, request: Authorization) -> psp.Verdict:
        return psp.Accepted(f"echo_{request.payment_id}")

    async def status(self, query: psp.StatusQuery) -> psp.StatusAnswer | psp.Failed:
        return psp.StatusAnswer(status=psp.AUTHORIZED, psp_reference=f"echo_{query.payment_id}")


def test_a_new_provider_is_one_class_named_in_the_registry(monkeypatch):
    monkeypatch.setitem(psp.CONNECTORS, "echo", f"{__name__}.EchoConnector")
    echo = psp.make("echo", psp.ConnectorSettings(url="http://echo.invalid"))

    async def ask() -> list:
        return [await echo.authorize(authorization("pay_echo", GOOD_CARD)),
                await echo.status(psp.PaymentStatusQuery(merchant_id=MERCHANT, payment_id="pay_echo")),
                await echo.follow_up(psp.VoidRequest(merchant_id=MERCHANT, payment_id="pay_echo"))]

    assert run(ask()) == [psp.Accepted("echo_pay_echo"),
                          psp.StatusAnswer(status="authorized", psp_reference="echo_pay_echo"),
                          psp.Failed("echo does not take voids")]



# Follow-ups and stuck payments: the real simulated acquirer and bank, their connectors and the provider follower

ACQUIRER_MERCHANT = "mer_acquirer"
SILENT_CARD = "4000000000000036"  # piggybank accepts it and never calls back
DECLINED_CARD = "4000000000000002"
THREE_D_SECURE_CARD = "4000000000003220"
STUCK_TIMEOUT_S = 4  # the follower asks a quarter of that before the deadline
LONG_TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def simulators(tmp_path_factory):
    """piggybank and the bank as processes; their callbacks go nowhere (there is no edge here): results come by
    status query, or the test records them as the edge would."""
    folder = tmp_path_factory.mktemp("providers")
    write_secret(folder / "secret", "whsec_connector_tests")
    nowhere = f"http://127.0.0.1:{free_ports(1)[0]}/callbacks"
    processes = ProviderProcesses([ProviderService(name, "127.0.0.1", port, nowhere, str(folder / "secret"))
                                   for name, port in zip(PROVIDERS, free_ports(len(PROVIDERS)))]).start()
    try:
        processes.wait_ready()
        yield {service.name: service.url for service in processes.services}
    finally:
        processes.stop()


class Acquirer:
    """The piggybank connector (with its nng client), the shard, and piggybank's own view of each payment."""

    def __init__(self, handle, client: ConnectorClient, shard_address: str, urls: dict[str, str]) -> None:
        self.handle = handle
        self.client = client
        self.shard_address = shard_address
        self.urls = urls

    def submit(self, commands: list) -> list:
        async def work(client: ShardClient) -> list:
            reply = await client.submit(commands)
            assert reply.status == ReplyStatus.OK
            return reply.results

        return run(with_shard(self.shard_address, work))

    def payment(self, payment_id: str) -> Payment:
        async def work(client: ShardClient) -> Payment:
            return (await client.read(GetPaymentRecord(ACQUIRER_MERCHANT, "payment", payment_id))).record

        return run(with_shard(self.shard_address, work))

    def at_piggybank(self, payment_id: str) -> dict:
        query = urllib.parse.urlencode({"merchant_id": ACQUIRER_MERCHANT, "payment_id": payment_id})
        try:
            with urllib.request.urlopen(f"{self.urls['piggybank']}/v1/authorizations?{query}", timeout=5) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as failure:
            return json.loads(failure.read())

    def at_bank(self, payout_id: str) -> dict | None:
        """The bank's view of a payout, None until it has one."""
        try:
            with urllib.request.urlopen(f"{self.urls['bank']}/v1/payouts/{payout_id}", timeout=5) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as failure:
            if failure.code == 404:
                return None
            raise

    def start_payments(self, cards: dict[str, str], timeout_s: int, capture: bool) -> None:
        """Card payments (payment id -> card number) made on the shard and sent to piggybank by the connector."""
        outcomes = self.submit([CreatePayment(payment=Payment(
            id=payment_id, merchant_id=ACQUIRER_MERCHANT, amount=1000, currency="usd",
            capture_method="automatic" if capture else "manual", card=CardDetails("visa", number[-4:], 12, 2030)),
            processing_timeout_s=timeout_s) for payment_id, number in cards.items()])
        assert [outcome.code for outcome in outcomes] == ["ok"] * len(cards)
        assert self.client.send(AuthorizationBatch([
            Authorization(payment_id, ACQUIRER_MERCHANT, 1000, "usd", capture, CardData(number, 12, 2030, CVC))
            for payment_id, number in cards.items()]))

    def authorize(self, payment_ids: list[str], hold_timeout_s: int = LONG_TIMEOUT_S) -> None:
        """Manual-capture payments authorized at piggybank, recorded as the edge records a callback."""
        self.start_payments(dict.fromkeys(payment_ids, GOOD_CARD), LONG_TIMEOUT_S, capture=False)
        views = [wait_for(lambda payment_id=payment_id: (view := self.at_piggybank(payment_id))["status"] ==
                          "authorized" and view, what=f"{payment_id} authorized") for payment_id in payment_ids]
        outcomes = self.submit([RecordPspResult(
            merchant_id=ACQUIRER_MERCHANT, payment_id=view["payment_id"], callback_id=f"cb_{view['payment_id']}",
            result="authorized", psp_reference=view["psp_reference"], hold_timeout_s=hold_timeout_s,
            transfer_id=f"{ACQUIRER_MERCHANT}:{view['payment_id']}.authorization") for view in views])
        assert [outcome.record.status for outcome in outcomes] == ["requires_capture"] * len(payment_ids)

    def stats(self) -> dict:
        return stats(self.handle)


@pytest.fixture(scope="module")
def acquirer(ray_runtime, shard, simulators, tmp_path_factory):
    """The piggybank and bank connectors and the provider follower of the shard."""
    listen_address = address(free_ports(1)[0])
    shards = [[shard.client_address]]
    handle = spawn("piggybank", simulators["piggybank"], listen_address, shards, shard.key_file, authorization_hold_s=LONG_TIMEOUT_S)
    bank = spawn("bank", simulators["bank"], None, shards, shard.key_file)
    follower = followers.spawn(shards, shard.key_file, tmp_path_factory.mktemp("cursors"), list(PROVIDERS), status_query_margin_s=5)
    client = ConnectorClient(listen_address, load_key(shard.key_file))
    assert client.wait_connected(5)
    acquirer = Acquirer(handle, client, shard.client_address, simulators)
    acquirer.submit([CreateMerchant(Merchant(id=ACQUIRER_MERCHANT, name="Acquirer test", email="a@example.com"))])
    yield acquirer
    client.close()
    for each in (follower, bank, handle):
        ray.kill(each)


def test_stuck_payments_are_asked_about_and_settled_before_their_deadline(acquirer):
    before = acquirer.stats()
    lost = {"pay_stuck_lost_authorized": GOOD_CARD, "pay_stuck_lost_declined": DECLINED_CARD,
            "pay_stuck_lost_3ds": THREE_D_SECURE_CARD}
    cards = {"pay_stuck_silent": SILENT_CARD, **lost}
    started = time.monotonic()
    acquirer.start_payments(cards, STUCK_TIMEOUT_S, capture=True)
    wait_for(lambda: all(acquirer.payment(payment_id).callback_ids for payment_id in lost), what="settlements")
    elapsed = time.monotonic() - started
    assert STUCK_TIMEOUT_S * 3 / 4 - 0.2 <= elapsed < STUCK_TIMEOUT_S, elapsed  # asked a quarter early
    # Their callbacks were lost (they go nowhere here): the status query brought their results.
    authorized = acquirer.payment("pay_stuck_lost_authorized")
    assert (authorized.status, authorized.amount_captured, authorized.psp_reference) == (
        "succeeded", 1000, acquirer.at_piggybank("pay_stuck_lost_authorized")["psp_reference"])
    declined = acquirer.payment("pay_stuck_lost_declined")
    assert (declined.status, declined.failure_code) == ("failed", "card_declined")
    three_d_secure = acquirer.payment("pay_stuck_lost_3ds")
    assert three_d_secure.callback_ids == ["status_pay_stuck_lost_3ds_requires_action"]
    assert three_d_secure.next_action_url.startswith(acquirer.urls["piggybank"] + "/3ds/pb_")
    # Still pending at piggybank: asked, and left processing until its deadline...
    assert acquirer.payment("pay_stuck_silent").status == "processing"
    after = acquirer.stats()
    assert (after["status_queries"] - before["status_queries"], after["stuck_settled"] - before["stuck_settled"],
            after["follow_ups"] - before["follow_ups"]) == (len(cards), len(lost), 0)
    assert acquirer.at_piggybank("pay_stuck_lost_authorized")["voided"] is False
    # ...where the engine fails it, and piggybank is told to drop it: it will never call back. So too the payment
    # whose cardholder never finishes 3-D Secure: a late answer authorizes nothing.
    for payment_id in ("pay_stuck_silent", "pay_stuck_lost_3ds"):
        failed = wait_for(lambda: (now := acquirer.payment(payment_id)).status == "failed" and now,
                          what="the engine's deadline")
        assert (failed.failure_code, failed.failure_message) == ("processing_timeout", "the acquirer did not answer in time")
        view = wait_for(lambda: (now := acquirer.at_piggybank(payment_id))["voided"] and now,
                        what="the void of the timed-out payment")
        assert view["status"] == "cancelled"
    assert time.monotonic() - started >= STUCK_TIMEOUT_S
    assert acquirer.stats()["follow_ups"] - before["follow_ups"] == 2


def test_a_payment_at_3ds_whose_callback_is_lost_is_asked_about_and_recorded(acquirer):
    """The cardholder completes 3-D Secure, piggybank's callback never arrives: the status query finds the
    authorization before the deadline, and the payment succeeds rather than fail and leave a hold on the card."""
    payment_id = "pay_3ds_completed_lost"
    acquirer.start_payments({payment_id: THREE_D_SECURE_CARD}, STUCK_TIMEOUT_S, capture=True)
    view = wait_for(lambda: (now := acquirer.at_piggybank(payment_id))["status"] == "requires_action" and now,
                    what="the challenge")
    # The edge records the requires_action callback as it arrives...
    outcome, = acquirer.submit([RecordPspResult(
        merchant_id=ACQUIRER_MERCHANT, payment_id=payment_id, callback_id=f"cb_{payment_id}",
        result="requires_action", psp_reference=view["psp_reference"], action_url=view["action_url"])])
    assert outcome.record.status == "requires_action"
    # ...the cardholder completes the challenge; its callback goes nowhere.
    form = urllib.parse.urlencode({"outcome": "complete"}).encode()
    with urllib.request.urlopen(f"{acquirer.urls['piggybank']}/3ds/{view['psp_reference']}", form, timeout=5):
        pass
    paid = wait_for(lambda: (now := acquirer.payment(payment_id)).status != "requires_action" and now,
                    what="the status query")
    assert (paid.status, paid.amount_captured) == ("succeeded", 1000)
    assert paid.callback_ids == [f"cb_{payment_id}", f"status_{payment_id}_authorized"]
    time.sleep(STUCK_TIMEOUT_S / 4 + 0.5)  # past the deadline: nothing fails or voids a settled payment
    assert acquirer.payment(payment_id).status == "succeeded"
    assert acquirer.at_piggybank(payment_id)["voided"] is False


def test_captures_refunds_voids_and_payouts_reach_the_providers_once(acquirer):
    captured, voided = "pay_follow_captured", "pay_follow_voided"
    acquirer.authorize([captured, voided])
    before = acquirer.stats()
    first = CreateRefund(refund=Refund(id="re_follow_1", merchant_id=ACQUIRER_MERCHANT, payment_id=captured,
                                       amount=200), transfer_id=f"{ACQUIRER_MERCHANT}:re_follow_1")
    first_by_key = Idempotent(merchant_id=ACQUIRER_MERCHANT, key="refund-1", request_hash="h", command=first)
    outcomes = acquirer.submit([
        CapturePayment(merchant_id=ACQUIRER_MERCHANT, payment_id=captured, amount=600,
                       transfer_id=f"{ACQUIRER_MERCHANT}:{captured}.capture"),
        CancelPayment(merchant_id=ACQUIRER_MERCHANT, payment_id=voided, transfer_id=f"{ACQUIRER_MERCHANT}:{voided}.void"),
        first_by_key])
    assert [outcome.code for outcome in outcomes] == ["ok"] * 3
    assert acquirer.submit([first_by_key])[0].replayed is True  # answered again, not applied, not sent again
    payout = Payout(id="po_follow", merchant_id=ACQUIRER_MERCHANT, amount=100, currency="usd",
                    hold_id=f"{ACQUIRER_MERCHANT}:po_follow.hold")
    rest = CreateRefund(refund=Refund(id="re_follow_2", merchant_id=ACQUIRER_MERCHANT, payment_id=captured, amount=300),
                        transfer_id=f"{ACQUIRER_MERCHANT}:re_follow_2")
    assert [outcome.code for outcome in acquirer.submit([CreatePayout(payout=payout), rest])] == ["ok", "ok"]
    view = wait_for(lambda: (now := acquirer.at_piggybank(captured))["amount_refunded"] == 500 and now,
                    what="the refunds at piggybank")
    assert (view["amount_captured"], view["voided"]) == (600, False)
    assert wait_for(lambda: acquirer.at_piggybank(voided)["voided"], what="the void at piggybank")
    assert wait_for(lambda: acquirer.at_bank("po_follow"), what="the payout at the bank")["amount"] == 100
    time.sleep(0.3)  # anything sent twice would show by now
    after = acquirer.stats()
    # The capture, the void and two refunds; the payout went to the bank's connector.
    assert {key: after[key] - before[key] for key in ("follow_ups", "refused", "follow_ups_failed")} == {
        "follow_ups": 4, "refused": 0, "follow_ups_failed": 0}
    assert acquirer.at_piggybank(captured)["amount_refunded"] == 500


def test_a_released_authorization_is_voided_at_the_acquirer(acquirer):
    acquirer.authorize(["pay_follow_released"], hold_timeout_s=1)
    wait_for(lambda: acquirer.payment("pay_follow_released").status == "cancelled", what="the release")
    assert wait_for(lambda: acquirer.at_piggybank("pay_follow_released")["voided"], what="the void at piggybank")


def cancel(acquirer, payment_id: str) -> None:
    outcome, = acquirer.submit([CancelPayment(merchant_id=ACQUIRER_MERCHANT, payment_id=payment_id,
                                              transfer_id=f"{ACQUIRER_MERCHANT}:{payment_id}.void")])
    assert (outcome.code, outcome.record.status) == ("ok", "cancelled")


def test_a_payment_cancelled_before_the_acquirer_answered_holds_and_takes_nothing_there(acquirer):
    """Cancelled while its authorization is on its way: piggybank is told to drop it. Undecided there, it never
    calls back; authorized and captured with it (automatic capture), it is refunded whole."""
    undecided, captured = "pay_cancel_undecided", "pay_cancel_captured"
    acquirer.start_payments({undecided: SILENT_CARD}, LONG_TIMEOUT_S, capture=False)
    acquirer.start_payments({captured: GOOD_CARD}, LONG_TIMEOUT_S, capture=True)
    wait_for(lambda: acquirer.at_piggybank(undecided).get("status") == "pending", what="the undecided authorization")
    wait_for(lambda: acquirer.at_piggybank(captured).get("amount_captured") == 1000, what="the automatic capture")
    for payment_id in (undecided, captured):  # their callbacks go nowhere: still processing here
        cancel(acquirer, payment_id)
    view = wait_for(lambda: (now := acquirer.at_piggybank(undecided))["voided"] and now, what="the dropped one")
    assert view["status"] == "cancelled"
    view = wait_for(lambda: (now := acquirer.at_piggybank(captured))["amount_refunded"] and now, what="the refund")
    assert (view["amount_captured"], view["amount_refunded"]) == (1000, 1000)


def test_a_payment_cancelled_at_3ds_cannot_be_authorized_by_finishing_the_challenge(acquirer):
    payment_id = "pay_cancel_3ds"
    acquirer.start_payments({payment_id: THREE_D_SECURE_CARD}, LONG_TIMEOUT_S, capture=True)
    view = wait_for(lambda: (now := acquirer.at_piggybank(payment_id))["status"] == "requires_action" and now,
                    what="the challenge")
    acquirer.submit([RecordPspResult(merchant_id=ACQUIRER_MERCHANT, payment_id=payment_id, callback_id=f"cb_{payment_id}",
                                     result="requires_action", psp_reference=view["psp_reference"],
                                     action_url=view["action_url"])])
    cancel(acquirer, payment_id)
    assert wait_for(lambda: acquirer.at_piggybank(payment_id)["voided"], what="the void")
    form = urllib.parse.urlencode({"outcome": "complete"}).encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{acquirer.urls['piggybank']}/3ds/{view['psp_reference']}", form, timeout=5)
    assert refused.value.code == 409
    assert (acquirer.at_piggybank(payment_id)["status"], acquirer.at_piggybank(payment_id)["amount_captured"]) == (
        "cancelled", 0)


def test_an_authorization_that_comes_after_the_payment_failed_is_voided(acquirer):
    """The gateway failed the payment on one word of the acquirer's; a later authorization of it is given back."""
    payment_id = "pay_late_authorization"
    acquirer.start_payments({payment_id: GOOD_CARD}, LONG_TIMEOUT_S, capture=False)
    view = wait_for(lambda: (now := acquirer.at_piggybank(payment_id))["status"] == "authorized" and now,
                    what="the authorization")
    failed, late = acquirer.submit([
        RecordPspResult(merchant_id=ACQUIRER_MERCHANT, payment_id=payment_id, callback_id="cb_late_1",
                        result="declined", failure_code="card_declined"),
        RecordPspResult(merchant_id=ACQUIRER_MERCHANT, payment_id=payment_id, callback_id="cb_late_2",
                        result="authorized", psp_reference=view["psp_reference"],
                        transfer_id=f"{ACQUIRER_MERCHANT}:{payment_id}.authorization")])
    assert (failed.record.status, late.code) == ("failed", "payment_not_open")
    assert wait_for(lambda: acquirer.at_piggybank(payment_id)["voided"], what="the void of the late authorization")
    assert acquirer.payment(payment_id).status == "failed"


def test_a_refusal_is_logged_for_an_operator_and_not_retried(acquirer):
    before = acquirer.stats()
    unknown = "pay_follow_unknown"
    # Authorized by a result piggybank never gave: it knows nothing of the payment to capture.
    acquirer.submit([
        CreatePayment(payment=Payment(id=unknown, merchant_id=ACQUIRER_MERCHANT, amount=1000, currency="usd",
                                      capture_method="manual", card=CardDetails("visa", "4242", 12, 2030)),
                      processing_timeout_s=LONG_TIMEOUT_S),
        RecordPspResult(merchant_id=ACQUIRER_MERCHANT, payment_id=unknown, callback_id="cb_unknown",
                        result="authorized", transfer_id=f"{ACQUIRER_MERCHANT}:{unknown}.authorization"),
        CapturePayment(merchant_id=ACQUIRER_MERCHANT, payment_id=unknown,
                       transfer_id=f"{ACQUIRER_MERCHANT}:{unknown}.capture")])
    wait_for(lambda: acquirer.stats()["refused"] > before["refused"], what="the refusal")
    time.sleep(0.5)
    assert acquirer.stats()["refused"] == before["refused"] + 1  # once, never again
    # ...and what follows still goes through
    acquirer.authorize(["pay_follow_after_refusal"])
    acquirer.submit([CancelPayment(merchant_id=ACQUIRER_MERCHANT, payment_id="pay_follow_after_refusal",
                                   transfer_id=f"{ACQUIRER_MERCHANT}:pay_follow_after_refusal.void")])
    assert wait_for(lambda: acquirer.at_piggybank("pay_follow_after_refusal")["voided"], what="the next void")
    logs = b"".join(path.read_bytes() for path in runtime.logs_folder().rglob("*") if path.is_file())
    assert b"the provider refused the capture of pay_follow_unknown" in logs and b"unknown_payment" in logs
