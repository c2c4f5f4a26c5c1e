"""Crash tests with real shard processes: kill -9 at random instants under load.

Proof of "a crash at any instant loses no acknowledged transfer": the load
records every transfer whose reply arrived; after the restart each one is
present. Each submission is a linked chain of two transfers, so a batch
applied in part would show as one half of a chain. The restarted state must
equal a replay of the journal from scratch and pass the full ledger check.
"""

import asyncio
import pathlib
import random

import pytest

from journal.client import ShardClient
from journal.recovery import replay_from_scratch
from journal.store import Journal
from shard_harness import Load, key_of, primary_config, start


async def _run_until_killed(config, load: Load, process, kill_after_s: float) -> None:
    """Load the shard and kill it -9 mid-flight, while submissions are outstanding."""
    load_task = asyncio.create_task(load.run(duration_s=kill_after_s + 10))
    await asyncio.sleep(kill_after_s)
    process.kill()
    load.stop()
    await load_task


async def _check_after_restart(client: ShardClient, load: Load) -> str:
    acknowledged = [transfer_id for pair in load.acknowledged for transfer_id in pair]
    found = []
    for start_index in range(0, len(acknowledged), 4096):
        found += await client.lookup_transfers(acknowledged[start_index : start_index + 4096])
    missing = [transfer_id for transfer_id, transfer in zip(acknowledged, found) if transfer is None]
    assert not missing, f"{len(missing)} acknowledged transfers lost, e.g. {missing[:3]}"
    for first, second in load.unacknowledged:
        halves = await client.lookup_transfers([first, second])
        assert (halves[0] is None) == (halves[1] is None), f"chain {first} applied in part"
    status = await client.status(with_state_hash=True)
    return status.state_hash


def _replayed_state_hash(folder) -> str:
    journal = Journal(pathlib.Path(folder))
    try:
        engine, _ = replay_from_scratch(journal)
    finally:
        journal.close()
    engine.verify()
    return engine.state_hash()


def _crash_rounds(tmp_path, rounds: int, seed: int) -> None:
    chooser = random.Random(seed)
    # Frequent snapshots, so some kills land while a snapshot child is writing.
    config = primary_config(tmp_path / "shard", snapshot_every_batches=15, keep_snapshots=2, prune_journal=False)
    process = start(config)

    async def scenario() -> None:
        nonlocal process
        client = ShardClient([config.client_address], key_of(config), timeout_ms=1500, failover_rounds=1, busy_retries=5)
        try:
            load = Load(client, seed=seed)
            await load.create_accounts()
            for _ in range(rounds):
                await _run_until_killed(config, load, process, chooser.uniform(0.2, 1.2))
                process = start(config)
                await _check_after_restart(client, load)
                load.unacknowledged.clear()
            state_hash = (await client.status(with_state_hash=True)).state_hash
        finally:
            client.close()
        process.stop()
        assert _replayed_state_hash(config.data) == state_hash

    try:
        asyncio.run(scenario())
    finally:
        process.kill()


def test_kill_nine_under_load_loses_no_acknowledged_transfer(tmp_path):
    _crash_rounds(tmp_path, rounds=3, seed=3)


@pytest.mark.slow
def test_fifty_crash_rounds(tmp_path):
    _crash_rounds(tmp_path, rounds=50, seed=50)
