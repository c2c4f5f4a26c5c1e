"""The PSP connector actor on a real Ray runtime, a real shard process and a fake provider.

Ray starts once for the module (it takes seconds); the provider is a small aiohttp server on a thread of this
process that answers by card number and records what it was sent.
"""

import asyncio
import pathlib
import pickle
import threading
import time

import pytest

ray = pytest.importorskip("ray")
import pynng  # noqa: E402
from aiohttp import web  # noqa: E402

from actors import runtime  # noqa: E402
from actors.connector_wire import (  # noqa: E402
    Authorization,
    AuthorizationBatch,
    CardData,
    ConnectorClient,
    batch_decoder,
    batch_encoder,
)
from actors.connectors import spawn  # noqa: E402
from engine.queries import GetPaymentRecord  # noqa: E402
from engine.records import CardDetails, CreateMerchant, CreatePayment, Merchant, Payment, RecordPspResult  # noqa: E402
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
RETRIES = 2
WAIT_S = 15


class FakeProvider:
    """POST /v1/authorizations on a loopback port, answering by card number; keeps every request it got."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-provider", daemon=True)

    def start(self) -> "FakeProvider":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/authorizations", self._authorize)
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

    def count(self, payment_id: str) -> int:
        return sum(1 for body in list(self.requests) if body["payment_id"] == payment_id)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def run(coroutine):
    return asyncio.run(coroutine)


async def with_shard(shard_address: str, work):
    client = ShardClient([shard_address], timeout_ms=5000)
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
    handle = spawn("testbank", provider.url, listen_address, [[shard.client_address]], retries=RETRIES,
                   backoff_s=0.05)
    client = ConnectorClient(listen_address)
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
    with ConnectorClient(address(free_ports(1)[0])) as client:
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
                     "submitted": 2, "submit_failed": 0, "invalid_messages": 0, "batches_in_flight": 0}


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
    secrets = [number.encode() for number in CARDS] + [CVC.encode()]
    logs = runtime.logs_folder()
    assert logs is not None and logs.is_dir()
    log_text = b"".join(path.read_bytes() for path in logs.rglob("*") if path.is_file())
    # What is there: the connector's own log lines, naming the failed payment but not its card.
    assert b"connector testbank listening" in log_text and ids[FAILING_CARD].encode() in log_text
    for secret in secrets:
        assert secret not in log_text
    shard_folder = pathlib.Path(shard.data)
    files = [*shard_folder.rglob("*"), pathlib.Path(shard.data).with_suffix(".log")]
    journal_bytes = b"".join(path.read_bytes() for path in files if path.is_file())
    assert ids[BAD_CARD].encode() in journal_bytes  # the journal holds the payments and their results
    assert b"incorrect_number" in journal_bytes
    for secret in secrets:
        assert secret not in journal_bytes


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


def test_spawn_again_finds_the_running_connector(connector, shard, provider):
    handle, _, listen_address = connector
    again = spawn("testbank", provider.url, listen_address, [[shard.client_address]])
    assert again._actor_id == handle._actor_id
    assert ray.get(again.ping.remote()) == f"connector-testbank listening on {listen_address}"


@pytest.fixture(scope="module")
def unreachable_connector(ray_runtime, shard):
    """A connector whose provider is not there: every attempt is a connection error."""
    listen_address = address(free_ports(1)[0])
    provider_url = f"http://127.0.0.1:{free_ports(1)[0]}"
    handle = spawn("unreachable", provider_url, listen_address, [[shard.client_address]], retries=RETRIES,
                   backoff_s=0.05)
    client = ConnectorClient(listen_address)
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
