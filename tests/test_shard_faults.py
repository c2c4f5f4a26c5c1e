"""No command's content stops a shard: one that raises half-way is undone, answered internal_error, logged once;
a read that raises is refused and logged.

The shard processes here, the replica and the `paygate replay` / `verify` commands all run with tests/engine_faults
installed (through PYTHONPATH: fault_site/sitecustomize.py), as a bug in the engine would be everywhere: each must
reach the same answers and the same state hash.
"""

import asyncio
import json
import pathlib
import subprocess
import sys
import time

import pynng
import pytest

import engine_faults
from engine import Account, CreateAccounts, CreateTransfers, Transfer, TransferCode
from engine.queries import FindOrder
from edge.errors import ApiError
from edge.http import ledger_codes, raise_for
from engine.records import CreateMerchant, CreateOrder, Merchant, Order, Outcome
from journal.client import ShardClient, ShardUnavailable
from journal.wire import ReplyStatus, Status, reply_decoder, request_encoder
from shard_harness import key_of, primary_config, replica_pair, start

INTERNAL_ERROR = TransferCode.internal_error


@pytest.fixture
def faulty_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", engine_faults.faults_environment()["PYTHONPATH"])
    primary, replica = replica_pair(tmp_path)
    processes = {"replica": start(replica), "primary": start(primary)}
    yield primary, replica, processes
    for process in processes.values():
        process.kill()


def order(order_id: str, metadata: dict | None = None) -> CreateOrder:
    return CreateOrder(order=Order(id=order_id, merchant_id="m1", name=order_id, amount=500, currency="USD",
                                   payment_methods=["card"], metadata=metadata or {}))


def transfer(transfer_id: str, amount: int = 5, code: int = 0) -> Transfer:
    return Transfer(f"test:{transfer_id}", "test:a", "test:b", amount, "usd", code=code)


async def _state_hash(config) -> str:
    client = ShardClient([config.client_address], key_of(config), timeout_ms=5000)
    try:
        return (await client.status(with_state_hash=True)).state_hash
    finally:
        client.close()


async def _faulty_batch_then_more(primary) -> str:
    """Submit commands that raise half-way beside good ones; the good ones apply, the shard goes on. Its state hash."""
    client = ShardClient([primary.client_address], key_of(primary), timeout_ms=5000)
    try:
        reply = await client.submit([CreateAccounts([Account("test:a", "usd"), Account("test:b", "usd")]),
                                     CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com"))])
        assert reply.results[0] == [0, 0] and reply.results[1].code == "ok"
        faulty = [transfer("t1"), transfer("t2"), transfer("t3", code=engine_faults.RAISE_AT_CODE)]
        reply = await client.submit([CreateTransfers(faulty), order("o1", engine_faults.RAISE_HALF_WAY),
                                     CreateTransfers([transfer("t4")])])
        assert reply.results[0] == [INTERNAL_ERROR] * 3
        assert reply.results[1].code == "internal_error" and reply.results[1].record is None
        assert reply.results[2] == [0]
        assert await client.lookup_transfers(["test:t1", "test:t2", "test:t3"]) == [None, None, None]
        assert (await client.read(FindOrder("o1"))).record is None
        with pytest.raises(ShardUnavailable, match="invalid: the read failed"):
            await client.lookup_accounts(["test:a", engine_faults.RAISE_ON_READ])
        # The shard serves on.
        reply = await client.submit([order("o2"), CreateTransfers([transfer("t5")])])
        assert reply.results[0].code == "ok" and reply.results[1] == [0]
        status = await client.status(with_state_hash=True, with_check=True)
        assert status.check == "ok"
        return status.state_hash
    finally:
        client.close()


async def _wait_for_hash(config, expected: str, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while await _state_hash(config) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{config.data} never reached {expected}"
        await asyncio.sleep(0.2)


def _critical_lines(config) -> list[dict]:
    text = pathlib.Path(config.data).with_suffix(".log").read_text()
    assert "Traceback" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "CRITICAL"]


def _cli(command: str, folder: str) -> str:
    finished = subprocess.run([sys.executable, "-m", "edge.cli", command, "--data", folder], capture_output=True,
                              text=True, timeout=120, env=engine_faults.faults_environment())
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout


def test_a_command_that_raises_is_undone_and_the_shard_replica_and_replay_agree(faulty_pair):
    primary, replica, processes = faulty_pair
    state_hash = asyncio.run(_faulty_batch_then_more(primary))
    asyncio.run(_wait_for_hash(replica, state_hash))
    assert all(process.alive() for process in processes.values())
    for config, reads in ((primary, ["a read (1 queries) raised HalfWay('a read raised'): refused; serving on"]),
                          (replica, [])):
        failures = [line["message"] for line in _critical_lines(config)]
        assert len(failures) == 2 + len(reads), failures
        assert failures[0].startswith("batch 2, command 0 (CreateTransfers) raised HalfWay(")
        assert failures[1].startswith("batch 2, command 1 (CreateOrder) raised HalfWay(")
        assert failures[2:] == reads
        assert all("exception" not in line for line in _critical_lines(config))
    for process in processes.values():
        assert process.stop() == 0
    for config in (primary, replica):
        assert f"state_hash={state_hash}" in _cli("replay", config.data)
        assert f"ok batches=3 state_hash={state_hash}" in _cli("verify", config.data)
    # Recovery replays the same journal to the same state, and the shard starts and serves.
    processes["primary"] = start(primary)
    assert asyncio.run(_state_hash(primary)) == state_hash


def test_a_command_its_shard_undid_answers_500_api_error_over_http():
    with pytest.raises(ApiError) as raised:
        raise_for(Outcome("internal_error"))
    assert (raised.value.status, raised.value.error_type, raised.value.code) == (500, "api_error", "internal_error")
    # A signed ledger command undone has no code per item: its answer is that error too, not a failure to read codes.
    with pytest.raises(ApiError) as raised:
        ledger_codes(Outcome("internal_error"))
    assert (raised.value.status, raised.value.code) == (500, "internal_error")
    assert ledger_codes(Outcome("ok", codes=[0, 33])) == ledger_codes([0, 33]) == [0, 33]


def test_a_replica_refuses_anything_but_replication_on_its_replication_socket_and_replicates_on(tmp_path):
    primary, replica = replica_pair(tmp_path)
    processes = [start(replica), start(primary)]
    try:
        with pynng.Req0(recv_timeout=5000, send_timeout=5000, resend_time=-1) as socket:
            socket.dial(replica.replication_address, block=True)
            key = key_of(replica)
            for head in (b"not msgpack at all", request_encoder.encode(Status())):
                socket.send(key.seal_head(head, []))
                assert reply_decoder.decode(key.open(socket.recv())).status == ReplyStatus.INVALID

        async def submit() -> list:
            client = ShardClient([primary.client_address], key_of(primary), timeout_ms=5000)
            try:
                return (await client.submit([CreateAccounts([Account("test:a", "usd")])])).results
            finally:
                client.close()

        assert asyncio.run(submit()) == [[0]]  # acknowledged: in sync mode, the replica has it durable
        assert all(process.alive() for process in processes)
    finally:
        for process in processes:
            process.kill()


def test_an_advance_of_time_that_raises_is_retried_by_each_batch_of_commands_and_said_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", engine_faults.faults_environment()["PYTHONPATH"])
    config = primary_config(tmp_path / "shard")
    process = start(config)

    async def scenario() -> None:
        client = ShardClient([config.client_address], key_of(config), timeout_ms=5000)
        try:
            late = order("late", engine_faults.RAISE_AT_EXPIRY)
            late.order.expires_at = time.time_ns() + 300_000_000
            reply = await client.submit([CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")), late])
            assert [outcome.code for outcome in reply.results] == ["ok", "ok"]
            await asyncio.sleep(1.5)  # the order is due: one empty batch meets the fault, and no more follow
            assert (await client.status()).sequence == 2
            reply = await client.submit([order("o2")])  # a batch of commands tries again, and its commands apply
            assert reply.results[0].code == "ok"
            assert (await client.read(FindOrder("late"))).record.status == "pending"
            assert (await client.status(with_check=True)).check == "ok"
        finally:
            client.close()

    try:
        asyncio.run(scenario())
        assert process.alive()
        [line] = _critical_lines(config)
        assert line["message"].startswith("batch 2: advancing time raised HalfWay(")
    finally:
        process.kill()
