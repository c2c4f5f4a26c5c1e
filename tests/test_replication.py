"""Replication with real processes: a sync replica mirrors the primary; promotion fences the old primary.

Proof of "no second writer": after a promotion, the old primary, once back,
meets the higher epoch through its replica link and refuses every write.
"""

import asyncio
import subprocess
import sys

import pytest

from journal.client import ShardClient, ShardUnavailable
from shard_harness import Load, key_of, replica_pair, start


def _client(*configs, **options) -> ShardClient:
    return ShardClient([config.client_address for config in configs], key_of(configs[0]), **{"timeout_ms": 2000, **options})


async def _state_hashes(*configs) -> list[str]:
    hashes = []
    for config in configs:
        client = _client(config)
        try:
            hashes.append((await client.status(with_state_hash=True)).state_hash)
        finally:
            client.close()
    return hashes


async def _wait_caught_up(primary_config, replica_config, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        primary_hash, replica_hash = await _state_hashes(primary_config, replica_config)
        if primary_hash == replica_hash:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("replica did not catch up")


async def _assert_present(client: ShardClient, load: Load) -> None:
    ids = [transfer_id for pair in load.acknowledged for transfer_id in pair]
    found = await client.lookup_transfers(ids)
    assert all(transfer is not None for transfer in found), "an acknowledged transfer is missing"


@pytest.fixture
def pair(tmp_path):
    primary, replica = replica_pair(tmp_path)
    processes = {"replica": start(replica), "primary": start(primary)}
    yield primary, replica, processes
    for process in processes.values():
        process.kill()


def test_sync_replica_has_the_primary_state(pair):
    primary, replica, _ = pair

    async def scenario() -> None:
        client = _client(primary)
        load = Load(client)
        await load.create_accounts()
        await load.run(duration_s=1.5)
        client.close()
        # Sync mode: every acknowledged batch was durable on the replica; it applies them right after.
        await _wait_caught_up(primary, replica, timeout_s=5)

    asyncio.run(scenario())


def test_promote_keeps_every_acknowledged_transfer_and_fences_the_old_primary(pair):
    primary, replica, processes = pair

    async def scenario() -> None:
        client = _client(primary, replica)
        load = Load(client)
        await load.create_accounts()
        await load.run(duration_s=1.0)
        processes["primary"].kill()
        promoted = subprocess.run([sys.executable, "-m", "edge.cli", "promote", "--data", replica.data],
                                  capture_output=True, text=True, timeout=30)
        assert promoted.returncode == 0, promoted.stderr
        assert "epoch=1" in promoted.stdout
        # The client follows the new primary and keeps writing.
        await load.run(duration_s=1.0)
        await _assert_present(client, load)
        client.close()

        processes["primary"] = start(primary)
        old_primary = _client(primary, failover_rounds=1, busy_retries=0)
        try:
            for _ in range(50):
                status = await old_primary.status()
                if status.role == "fenced":
                    break
                await asyncio.sleep(0.1)
            assert status.role == "fenced" and status.epoch == 1
            with pytest.raises(ShardUnavailable):
                await old_primary.submit([])
        finally:
            old_primary.close()

    asyncio.run(scenario())


def test_a_replica_that_was_down_catches_up(tmp_path):
    primary, replica = replica_pair(tmp_path, sync=False)
    primary_process = start(primary)
    replica_process = None

    async def scenario() -> None:
        nonlocal replica_process
        client = _client(primary)
        load = Load(client)
        await load.create_accounts()
        await load.run(duration_s=1.0)  # async mode: the primary goes on without its replica
        replica_process = start(replica)
        await _wait_caught_up(primary, replica)
        await load.run(duration_s=0.5)  # and streaming resumes
        await _wait_caught_up(primary, replica)
        client.close()

    try:
        asyncio.run(scenario())
    finally:
        primary_process.kill()
        if replica_process is not None:
            replica_process.kill()


def test_replica_promotes_itself_when_the_primary_goes_silent(tmp_path):
    primary, replica = replica_pair(tmp_path, auto_promote_ms=600)
    processes = [start(replica), start(primary)]

    async def scenario() -> None:
        client = _client(primary, replica)
        load = Load(client)
        await load.create_accounts()
        await load.run(duration_s=0.5)
        processes[1].kill()
        await asyncio.sleep(1.5)
        status = (await _client(replica).status())
        assert status.role == "primary" and status.epoch == 1
        await load.run(duration_s=0.5)
        await _assert_present(client, load)
        client.close()

    try:
        asyncio.run(scenario())
    finally:
        for process in processes:
            process.kill()
