"""Exactly-once Submits through real shard processes: the same Submit twice is applied once and answered alike,
whether the copies follow one another, arrive together, straddle a restart, or come from the client's own retry
after a reply timeout."""

import asyncio
import os
import pathlib
import signal
import time

import pynng
import pytest

from engine import CreateTransfers, Transfer
from journal.client import ShardClient, submit_ids
from journal.processes import request_status
from journal.recovery import batch_decoder
from journal.shard import ShardConfig
from journal.store import Snapshots
from journal.wire import SUBMIT_ID_MAX_BYTES, Promote, ReplyStatus, Submit, reply_decoder, request_encoder
from shard_harness import CURRENCY, Load, account_id, address, free_ports, key_of, primary_config, replica_pair, start

AMOUNT = 7
SUBMIT_ID = b"\x01" * 8 + (1).to_bytes(8, "big")


def submit_bytes(transfer_id: str = "test:once") -> bytes:
    """One Submit, encoded once: every copy sent is these bytes, as a retry's would be."""
    transfer = Transfer(transfer_id, account_id(1), account_id(2), AMOUNT, CURRENCY)
    return request_encoder.encode(Submit([CreateTransfers([transfer])], SUBMIT_ID))


def send_all(config: ShardConfig, messages: list[bytes]) -> list:
    """Each message on its own connection, all sent before any reply is read: they reach the shard together."""
    key = key_of(config)
    sockets = [pynng.Req0(recv_timeout=10_000, send_timeout=10_000, resend_time=-1) for _ in messages]
    try:
        for socket in sockets:
            socket.dial(config.client_address, block=True)
        for socket, message in zip(sockets, messages):
            socket.send(key.seal(message))
        return [reply_decoder.decode(key.open(socket.recv())) for socket in sockets]
    finally:
        for socket in sockets:
            socket.close()


async def credits_of_second_account(client: ShardClient) -> int:
    (account,) = await client.lookup_accounts([account_id(2)])
    return account.credits_posted


async def copies_in_journal(client: ShardClient) -> tuple[int, int]:
    """How many copies of the Submit the journal holds, and how many of them the engine answered as duplicates."""
    copies = duplicates = 0
    for entry in await client.read_entries(1, limit=1000):
        spans = batch_decoder.decode(entry.payload).submits
        copies += sum(1 for span in spans if span.submit_id == SUBMIT_ID)
        duplicates += len(entry.result.duplicates)
    return copies, duplicates


@pytest.fixture
def shard(tmp_path, request):
    """A primary with accounts; `snapshot_every_batches` from the test's parameter, if any."""
    options = getattr(request, "param", {})
    config = primary_config(tmp_path / "shard", **options)
    process = start(config)
    client = ShardClient([config.client_address], key_of(config), timeout_ms=5000)
    asyncio.run(Load(client).create_accounts())
    yield config, process, client
    client.close()
    process.kill()


def assert_applied_once(client: ShardClient, replies: list, copies: int) -> None:
    assert [reply.status for reply in replies] == [ReplyStatus.OK] * len(replies)
    assert [reply.results for reply in replies] == [[[0]]] * len(replies)  # `ok` each time, never `exists`

    async def check() -> None:
        assert await credits_of_second_account(client) == AMOUNT
        assert await copies_in_journal(client) == (copies, copies - 1)

    asyncio.run(check())


def test_the_same_submit_twice_is_applied_once_and_answered_alike(shard):
    config, _, client = shard
    replies = send_all(config, [submit_bytes()])
    replies += send_all(config, [submit_bytes()])
    assert_applied_once(client, replies, copies=2)


def test_copies_that_arrive_together_are_applied_once_and_answered_alike(shard):
    config, _, client = shard
    replies = send_all(config, [submit_bytes()] * 4)
    assert_applied_once(client, replies, copies=4)


def test_a_submit_id_past_its_limit_is_refused(shard):
    config, _, _ = shard
    transfer = Transfer("test:long", account_id(1), account_id(2), AMOUNT, CURRENCY)
    message = request_encoder.encode(Submit([CreateTransfers([transfer])], b"x" * (SUBMIT_ID_MAX_BYTES + 1)))
    (reply,) = send_all(config, [message])
    assert reply.status == ReplyStatus.INVALID and "submit id" in reply.message


def test_each_process_draws_its_own_submit_ids():
    """Edge workers and actors are forked or started apart: none may take another's ids for its own."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, submit_ids.next())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.close(write_end)
    mine = submit_ids.next()
    assert len(child) == len(mine) == 16
    assert child[:8] != mine[:8]
    assert int.from_bytes(submit_ids.next()[8:], "big") == int.from_bytes(mine[8:], "big") + 1


@pytest.mark.parametrize("shard", [{}, {"snapshot_every_batches": 1}], indirect=True, ids=["journal", "snapshot"])
def test_a_copy_after_a_restart_is_still_applied_once(shard):
    """Killed, the shard restarts from its journal; stopped after a snapshot of each batch, from the snapshot."""
    config, process, client = shard
    replies = send_all(config, [submit_bytes()])
    if config.snapshot_every_batches > 1:
        process.kill()
    else:
        process.stop()
        snapshots = Snapshots(pathlib.Path(config.data))
        # A shard forks one snapshot at a time: if the previous batch's was still being written, this batch's copy is
        # replayed from the journal on top of that one.
        assert snapshots.load(snapshots.paths()[0])[0].sequence in (replies[0].sequence - 1, replies[0].sequence)
    restarted = start(config)
    try:
        replies += send_all(config, [submit_bytes()])
        assert_applied_once(client, replies, copies=2)
    finally:
        restarted.kill()


def test_a_copy_sent_to_the_promoted_replica_is_applied_once(tmp_path):
    """The replica applied the first copy from the primary's journal: once promoted, it answers the copy alike."""
    primary_config_, replica_config = replica_pair(tmp_path)
    replica = start(replica_config)
    primary = start(primary_config_)
    client = ShardClient([primary_config_.client_address, replica_config.client_address], key_of(replica_config), timeout_ms=5000)
    try:
        asyncio.run(Load(client).create_accounts())
        replies = send_all(primary_config_, [submit_bytes()])
        primary.kill()
        (promoted,) = send_all(replica_config, [request_encoder.encode(Promote())])
        assert promoted.status == ReplyStatus.OK
        replies += send_all(replica_config, [submit_bytes()])
        assert_applied_once(client, replies, copies=2)
    finally:
        client.close()
        primary.kill()
        replica.kill()


def test_a_retry_after_a_reply_timeout_is_applied_once(tmp_path):
    """The primary holds the first copy's reply (its sync replica is stopped) past the client's timeout; the client
    tries the other process it knows, is told it is not the primary, and sends the same Submit again."""
    primary_config_, replica_config = replica_pair(tmp_path)
    client_port, replication_port = free_ports(2)
    bystander_config = ShardConfig(data=str(tmp_path / "bystander"), client_address=address(client_port),
                                   replication_address=address(replication_port), role="replica",
                                   key_file=primary_config_.key_file)
    processes = [start(config) for config in (replica_config, primary_config_, bystander_config)]
    replica = processes[0]
    client = ShardClient([primary_config_.client_address, bystander_config.client_address], key_of(bystander_config),
                         timeout_ms=8000)

    async def scenario() -> list:
        await Load(client).create_accounts()
        sequence = request_status(primary_config_.client_address, key_of(primary_config_)).sequence
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            submitted = asyncio.create_task(client.submit([CreateTransfers([
                Transfer("test:once", account_id(1), account_id(2), AMOUNT, CURRENCY)])]))
            await wait_for_sequence(primary_config_, sequence + 2)
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        return [await submitted]

    try:
        replies = asyncio.run(scenario())
        assert [reply.results for reply in replies] == [[[0]]]

        async def check() -> tuple[int, list[list[int]]]:
            entries = (await client.read_entries(1, limit=1000))[1:]
            return await credits_of_second_account(client), [entry.result.duplicates for entry in entries]

        assert asyncio.run(check()) == (AMOUNT, [[], [0]])
    finally:
        client.close()
        for process in processes:
            process.kill()


async def wait_for_sequence(config: ShardConfig, sequence: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(request_status, config.client_address, key_of(config))
        if status is not None and status.sequence >= sequence:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the primary never reached batch {sequence}: the client did not send its retry")
