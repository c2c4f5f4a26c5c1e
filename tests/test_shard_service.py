"""The shard process as a service: reads by cursor, announcements, limits, routing, clean stops."""

import asyncio
import collections
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import pynng
import pytest

from engine import Account, Batch, CreateAccounts, CreateTransfers, Transfer, TransferFlag
from engine.records import CancelOrder, CreateMerchant, CreateOrder, Merchant, Order
from journal.auth import MessageKey
from journal.client import (ACCOUNTS_ON_DIFFERENT_SHARDS, Announcements, Cluster, EntriesPruned, ShardClient,
                            ShardMap, ShardUnavailable)
from journal.recovery import batch_decoder, batch_encoder
from journal.shard import Shard
from journal.wire import ANNOUNCEMENT, ReplyStatus, Submit, request_encoder
import engine_faults
from shard_harness import Load, key_of, primary_config, start


@pytest.fixture
def shard(tmp_path):
    config = primary_config(tmp_path / "shard", max_queue_items=200, max_batch_items=100)
    process = start(config)
    client = ShardClient([config.client_address], key_of(config), timeout_ms=5000, busy_retries=0)
    yield config, process, client
    client.close()
    process.kill()


def run(coroutine):
    return asyncio.run(coroutine)


def test_committed_batches_are_read_by_sequence_with_their_results(shard):
    config, _, client = shard

    async def scenario():
        await Load(client).create_accounts()
        await client.submit([CreateTransfers([Transfer("test:t1", "test:acct_1", "test:acct_2", 5, "usd"),
                                              Transfer("test:t2", "test:acct_1", "test:missing", 5, "usd")])])
        entries = await client.read_entries(1, limit=10)
        assert [entry.sequence for entry in entries] == [1, 2]
        assert entries[1].result.results == [[0, 33]]  # ok, credit_account_not_found
        assert await client.read_entries(3) == []
        results_only = await client.read_entries(1, limit=10, with_payloads=False)
        assert [(entry.sequence, entry.result) for entry in results_only] == [(e.sequence, e.result) for e in entries]
        assert all(entry.payload for entry in entries) and not any(entry.payload for entry in results_only)
        await client.submit([CreateTransfers([Transfer("test:t3", "test:acct_1", "test:acct_2", 1, "usd")]),
                             CreateMerchant(Merchant(id="m1", name="One", email="one@example.com"))])
        (whole,), (commerce,) = [await client.read_entries(3, with_ledger_items=flag) for flag in (True, False)]
        assert commerce.result == whole.result and len(commerce.payload) < len(whole.payload)
        batch, stripped = (batch_decoder.decode(entry.payload) for entry in (whole, commerce))
        assert stripped.commands == [CreateTransfers([]), batch.commands[1]]
        assert (stripped.sequence, stripped.timestamp, stripped.submits) == (batch.sequence, batch.timestamp,
                                                                            batch.submits)

    run(scenario())


def test_a_reader_behind_a_pruned_journal_is_told_not_skipped_ahead(tmp_path):
    config = primary_config(tmp_path / "shard", snapshot_every_batches=2, keep_snapshots=1, prune_journal=True)
    process = start(config)
    client = ShardClient([config.client_address], key_of(config), timeout_ms=5000, busy_retries=0)

    async def scenario():
        await Load(client).create_accounts()
        for n in range(8):
            await client.submit([CreateTransfers([Transfer(f"test:t{n}", "test:acct_1", "test:acct_2", 5, "usd")])])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # snapshots are forked and pruned behind the writer
            try:
                await client.read_entries(1)
            except EntriesPruned as error:
                return str(error)
            await asyncio.sleep(0.1)
        raise AssertionError("the journal was never pruned")

    try:
        assert "were pruned" in run(scenario())
    finally:
        client.close()
        process.kill()


def test_the_journal_keeps_the_commands_as_they_were_sent(shard):
    """The shard journals a Submit's own bytes, not a new encoding: they decode to what was sent and encode as the
    sequenced Batch would."""
    _, _, client = shard
    sent = [CreateAccounts([Account("test:a", "usd"), Account("test:b", "usd")]),
            CreateTransfers([Transfer("test:t1", "test:a", "test:b", 5, "usd")])]

    async def scenario():
        assert (await client.submit(sent)).status == ReplyStatus.OK
        (entry,) = await client.read_entries(1)
        batch = batch_decoder.decode(entry.payload)
        assert batch.commands == sent
        assert [span.command_count for span in batch.submits] == [2]
        assert entry.payload == batch_encoder.encode(Batch(batch.sequence, batch.timestamp, sent, batch.submits))

    run(scenario())


async def queue_a_delivery(client: ShardClient, number: int = 1) -> int:
    """A merchant's order cancelled: its event queues a webhook delivery. The batch's sequence."""
    merchant_id, order_id = f"m{number}", f"ord_{number}"
    reply = await client.submit([
        CreateMerchant(Merchant(id=merchant_id, name="Shop", email="m@example.com",
                                webhook_url="https://shop.example/hook")),
        CreateOrder(order=Order(id=order_id, merchant_id=merchant_id, name="Order", amount=1500, currency="usd",
                                payment_methods=["card"]), expires_in_s=3600),
        CancelOrder(merchant_id=merchant_id, order_id=order_id),
    ])
    assert [result.code for result in reply.results] == ["ok"] * 3, reply
    return reply.sequence


def test_commits_that_queue_deliveries_are_announced_and_only_those(shard):
    config, _, client = shard

    async def announced(subscriber) -> int:
        return ANNOUNCEMENT.unpack(key_of(config).open(await subscriber.arecv()))[0]

    async def scenario():
        with pynng.Sub0(dial=config.announce_address, recv_timeout=500, topics=b"") as subscriber:
            await asyncio.sleep(0.2)  # let the subscription reach the publisher
            load = Load(client)
            await load.create_accounts()  # nothing for the notifier: no wake-up
            with pytest.raises(pynng.Timeout):
                await subscriber.arecv()
            # Right behind other commits, while their entries or results are still being written: the write that
            # makes the delivery's batch durable announces it, however the writes fall.
            for number in range(1, 21):
                await load.create_accounts()
                sequence = await queue_a_delivery(client, number)
                while await announced(subscriber) < sequence:
                    pass

    run(scenario())


def test_a_reader_waiting_on_announcements_wakes_at_a_commit_not_at_its_timeout(shard):
    config, _, client = shard

    async def scenario():
        announcements = Announcements(config.announce_address, key_of(config))
        strangers = Announcements(config.announce_address, MessageKey(b"k" * 32))
        try:
            await asyncio.wait_for(announcements.wait(after=0, timeout_s=0.3), 1)  # nothing yet: its timeout
            await asyncio.sleep(0.2)  # let the subscriptions reach the publisher
            waiting = asyncio.create_task(announcements.wait(after=0, timeout_s=30))
            strangers_wait = asyncio.create_task(strangers.wait(after=0, timeout_s=1))
            began = time.monotonic()
            await queue_a_delivery(client)
            await asyncio.wait_for(waiting, 5)
            assert time.monotonic() - began < 5 and announcements.sequence >= 1
            await announcements.wait(after=0, timeout_s=30)  # announced already: at once
            await strangers_wait
            assert strangers.sequence == 0 and strangers.key.dropped >= 1  # without the key: dropped, counted
        finally:
            announcements.close()
            strangers.close()

    run(scenario())


def test_a_full_queue_answers_busy_and_changes_nothing(shard):
    config, _, client = shard

    async def scenario():
        await Load(client).create_accounts()
        before = (await client.status(with_state_hash=True)).state_hash
        transfers = [[Transfer(f"test:t{n}_{k}", "test:acct_1", "test:acct_2", 1, "usd") for k in range(90)] for n in range(40)]
        replies = await asyncio.gather(*(client.submit([CreateTransfers(batch)]) for batch in transfers))
        statuses = [reply.status for reply in replies]
        assert ReplyStatus.BUSY in statuses and ReplyStatus.OK in statuses
        accepted = sum(len(batch) for batch, reply in zip(transfers, replies) if reply.status == ReplyStatus.OK)
        account = (await client.lookup_accounts(["test:acct_1"]))[0]
        assert account.debits_posted == accepted  # busy submissions moved nothing
        assert before != (await client.status(with_state_hash=True)).state_hash

    run(scenario())


def test_requests_past_the_held_bound_are_answered_busy_at_once(tmp_path):
    config = primary_config(tmp_path / "shard", max_requests=2)
    process = start(config)
    # Ample time for the two held batches on a crowded machine; a request left unanswered fails the test.
    client = ShardClient([config.client_address], key_of(config), timeout_ms=20_000, busy_retries=0)

    async def scenario():
        # Sixteen full submits at once: the shard holds two, and answers the rest at once rather than queue them,
        # every "busy" sent even while many replies are still on their way.
        batches = [[Transfer(f"test:t{n}_{k}", "test:acct_1", "test:acct_2", 1, "usd") for k in range(8190)]
                   for n in range(16)]
        await Load(client).create_accounts()
        replies = await asyncio.gather(*(client.submit([CreateTransfers(batch)]) for batch in batches))
        statuses = [reply.status for reply in replies]
        assert ReplyStatus.BUSY in statuses and ReplyStatus.OK in statuses
        accepted = sum(len(batch) for batch, reply in zip(batches, replies) if reply.status == ReplyStatus.OK)
        assert (await client.lookup_accounts(["test:acct_1"]))[0].debits_posted == accepted

    try:
        run(scenario())
    finally:
        client.close()
        process.kill()


def test_a_submit_window_full_of_records_a_sender_may_resend_answers_busy_and_journals_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", engine_faults.faults_environment()["PYTHONPATH"])
    monkeypatch.setenv(engine_faults.MAX_SUBMITS_VARIABLE, "3")
    config = primary_config(tmp_path / "shard")
    process = start(config)
    client = ShardClient([config.client_address], key_of(config), timeout_ms=5000, busy_retries=0)

    async def scenario():
        await Load(client).create_accounts()  # one Submit
        transfers = [[Transfer(f"test:t{n}", "test:acct_1", "test:acct_2", 1, "usd")] for n in range(4)]
        statuses = [(await client.submit([CreateTransfers(batch)])).status for batch in transfers]
        assert statuses == [ReplyStatus.OK, ReplyStatus.OK, ReplyStatus.BUSY, ReplyStatus.BUSY]
        status = await client.status()
        assert (await client.lookup_accounts(["test:acct_1"]))[0].debits_posted == 2
        return status.sequence

    try:
        assert run(scenario()) == 3  # the busy Submits were never journaled
    finally:
        client.close()
        process.kill()


@pytest.mark.parametrize("message", [b"\x00garbage", request_encoder.encode(Submit([CreateAccounts(
    [Account(f"test:a{n}", "usd") for n in range(101)])]))], ids=["undecodable", "too many items"])
def test_a_bad_request_is_refused_and_changes_nothing(shard, message):
    config, _, client = shard

    async def scenario():
        reply = await client._send(0, client.key.seal(message), 5.0)
        assert reply.status == ReplyStatus.INVALID and reply.message
        assert (await client.status()).sequence == 0

    run(scenario())


def test_sigterm_stops_cleanly_and_a_restart_recovers_the_same_state(shard):
    config, process, client = shard

    async def state_hash():
        return (await client.status(with_state_hash=True)).state_hash

    async def load():
        await Load(client).create_accounts()
        return await state_hash()

    before = run(load())
    assert process.stop() == 0
    restarted = start(config)
    try:
        assert run(state_hash()) == before
    finally:
        restarted.kill()


def test_entries_read_from_memory_and_after_a_restart_from_the_disk_are_the_same(shard):
    """Readers near the head are served from memory; after a restart (nothing in memory) from the journal."""
    config, process, client = shard

    async def read_all():
        return [await client.read_entries(1, limit=10, with_payloads=flag, with_ledger_items=items)
                for flag, items in ((True, True), (True, False), (False, True))]

    async def load():
        await Load(client).create_accounts()
        await client.submit([CreateTransfers([Transfer("test:t1", "test:acct_1", "test:acct_2", 5, "usd")]),
                             CreateMerchant(Merchant(id="m1", name="One", email="one@example.com"))])
        return await read_all()

    from_memory = run(load())
    assert [len(entries) for entries in from_memory] == [2, 2, 2]
    assert process.stop() == 0
    restarted = start(config)
    restarted_client = ShardClient([config.client_address], key_of(config), timeout_ms=5000, busy_retries=0)
    try:
        client = restarted_client
        assert run(read_all()) == from_memory
    finally:
        restarted_client.close()
        restarted.kill()


def test_a_reader_behind_the_entries_in_memory_reads_the_disk_then_memory_without_a_gap(tmp_path):
    config = primary_config(tmp_path / "shard", max_unreleased_batches=1)  # two entries in memory
    process = start(config)
    client = ShardClient([config.client_address], key_of(config), timeout_ms=5000, busy_retries=0)

    async def load():
        await Load(client).create_accounts()
        for n in range(6):
            await client.submit([CreateTransfers([Transfer(f"test:t{n}", "test:acct_1", "test:acct_2", 5, "usd")])])
        return [await client.read_entries(start, limit=limit) for start, limit in ((1, 64), (2, 3), (5, 64))]

    try:
        whole, middle, tail = run(load())
        sequences = [entry.sequence for entry in whole]
        assert sequences == list(range(1, len(sequences) + 1)) and len(sequences) >= 7
        assert middle == whole[1:4] and tail == whole[4:]
    finally:
        client.close()
        process.kill()


def test_results_kept_in_memory_are_as_many_as_the_entries_beside_them():
    shard = types.SimpleNamespace(unwritten_results=[], recent_results={}, recent=collections.deque(maxlen=3),
                                  to_write=asyncio.Event())
    for sequence in range(1, 6):
        Shard.keep_result(shard, sequence, b"result %d" % sequence)
    assert list(shard.recent_results) == [3, 4, 5] and len(shard.unwritten_results) == 5 and shard.to_write.is_set()


def owners_on_two_shards(shard_map: ShardMap) -> tuple[str, str]:
    owners = {}
    for number in range(100):
        owners.setdefault(shard_map.shard_for(f"mer_{number}"), f"mer_{number}")
    return owners[0], owners[1]


def test_cluster_routes_by_owner_and_refuses_transfers_across_shards(tmp_path):
    configs = [primary_config(tmp_path / f"shard-{n}") for n in range(2)]
    processes = [start(config) for config in configs]
    cluster = Cluster([[config.client_address] for config in configs], key=key_of(configs[0]), timeout_ms=5000)
    first, second = owners_on_two_shards(cluster.map)

    async def scenario():
        for owner in (first, second):
            accounts = [Account(f"{owner}:a", "usd"), Account(f"{owner}:b", "usd")]
            assert (await cluster.shard(owner).submit([CreateAccounts(accounts)])).results == [[0, 0]]
        results = await cluster.create_transfers([
            Transfer(f"{first}:t1", f"{first}:a", f"{first}:b", 5, "usd"),
            Transfer(f"{second}:t1", f"{second}:a", f"{second}:b", 7, "usd"),
            Transfer(f"{first}:t2", f"{first}:a", f"{second}:b", 9, "usd"),
        ])
        assert results == [0, 0, ACCOUNTS_ON_DIFFERENT_SHARDS]
        assert (await cluster.shard(second).lookup_accounts([f"{second}:b"]))[0].credits_posted == 7

    try:
        run(scenario())
    finally:
        cluster.close()
        for process in processes:
            process.kill()


def test_expiries_happen_on_time_without_traffic(shard):
    """Time enters the engine only with batches; an idle shard sends itself one when a timeout falls due."""
    config, _, client = shard

    async def scenario():
        await Load(client).create_accounts()
        hold = Transfer("test:hold", "test:acct_1", "test:acct_2", 5, "usd", timeout_s=1, flags=TransferFlag.PENDING)
        assert (await client.submit([CreateTransfers([hold])])).results == [[0]]
        assert (await client.lookup_accounts(["test:acct_1"]))[0].debits_pending == 5
        await asyncio.sleep(1.6)
        assert (await client.lookup_accounts(["test:acct_1"]))[0].debits_pending == 0

    run(scenario())


def test_a_stalled_shard_costs_a_caller_one_timeout_not_one_per_retry(shard):
    """A shard that holds the connection but never answers (here: stopped by SIGSTOP) fails each request once its
    timeout is spent, however many retries and failover rounds it would have left; once it resumes, it answers."""
    config, process, _ = shard
    client = ShardClient([config.client_address], key_of(config), timeout_ms=1000, busy_retries=20, failover_rounds=10)

    async def scenario():
        await client.status()
        os.kill(process.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(ShardUnavailable):
                await client.status()
            assert time.monotonic() - started < 2.5
        finally:
            os.kill(process.process.pid, signal.SIGCONT)
        assert (await client.status()).role == "primary"

    try:
        run(scenario())
    finally:
        client.close()


def promote(folder: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "promote", "--data", folder], capture_output=True,
                          text=True, timeout=30, cwd=pathlib.Path(__file__).parent.parent)


def test_promote_of_a_primary_says_so_and_exits_1(shard):
    config, _, _ = shard
    promoted = promote(config.data)
    assert promoted.returncode == 1
    assert promoted.stderr == f"paygate promote: {config.data}: not promoted: this shard is already the primary, epoch 0\n"


def test_promote_without_a_running_shard_says_so_and_exits_1(shard, tmp_path):
    config, process, _ = shard
    process.kill()
    stopped = promote(config.data)
    (tmp_path / "never-ran" / "journal").mkdir(parents=True)
    never_ran = promote(str(tmp_path / "never-ran"))
    assert (stopped.returncode, never_ran.returncode) == (1, 1)
    assert stopped.stderr.startswith(f"paygate promote: {config.data}: no shard process answers")
    assert never_ran.stderr == (f"paygate promote: {tmp_path / 'never-ran'}: "
                                "no shard.json: no shard process has run on this folder\n")
