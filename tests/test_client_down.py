"""The shard client and a shard process that goes away: it learns so from its connections, fails a request within
`down_wait_ms` (not after its timeout) while the process is down, and reaches it again once it is back.

Real shard processes (tests/shard_harness.py), killed with SIGKILL.
"""

import asyncio
import time

import pytest

from engine import Account, CreateAccounts
from journal.client import ShardClient, ShardUnavailable
from journal.wire import ReplyStatus
from shard_harness import key_of, primary_config, replica_pair, start

DOWN_WAIT_MS = 200
FAST_S = 1.0  # well under the 10 s timeout the client is given
# nng tells the client a connection closed from its own thread: on a loaded machine that takes a moment after the kill
SEEN_DOWN_S = 0.5


def _account(number: int) -> CreateAccounts:
    return CreateAccounts([Account(f"test:acct_{number}", "usd")])


async def _timed(client: ShardClient, command) -> tuple[float, object]:
    started = time.monotonic()
    try:
        reply = await client.submit([command])
    except ShardUnavailable as error:
        return time.monotonic() - started, error
    return time.monotonic() - started, reply


def test_a_request_for_a_dead_process_fails_fast_and_succeeds_once_it_is_back(tmp_path):
    config = primary_config(tmp_path / "shard")
    process = start(config)

    async def scenario() -> None:
        client = ShardClient([config.client_address], key_of(config), timeout_ms=10_000, down_wait_ms=DOWN_WAIT_MS)
        try:
            assert (await client.submit([_account(1)])).status == ReplyStatus.OK
            process.kill()
            await asyncio.sleep(SEEN_DOWN_S)
            took_s, outcome = await _timed(client, _account(2))
            assert isinstance(outcome, ShardUnavailable) and took_s < FAST_S, (took_s, outcome)
            restarted = start(config)
            try:
                took_s, outcome = await _timed(client, _account(3))
                assert not isinstance(outcome, ShardUnavailable) and outcome.status == ReplyStatus.OK, outcome
            finally:
                restarted.kill()
        finally:
            client.close()

    asyncio.run(scenario())


def test_without_a_down_wait_a_request_rides_out_a_restart(tmp_path):
    config = primary_config(tmp_path / "shard")
    process = start(config)

    async def scenario() -> None:
        client = ShardClient([config.client_address], key_of(config), timeout_ms=20_000)
        try:
            assert (await client.submit([_account(1)])).status == ReplyStatus.OK
            process.kill()
            waiting = asyncio.ensure_future(client.submit([_account(2)]))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            restarted = await asyncio.get_running_loop().run_in_executor(None, start, config)
            try:
                assert (await waiting).status == ReplyStatus.OK
            finally:
                restarted.kill()
        finally:
            client.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("dead", ["primary", "both"])
def test_a_shard_with_no_primary_up_fails_fast(tmp_path, dead):
    """Only a replica up (which answers that it is not the primary), or nothing: the same fast refusal."""
    primary_config_, replica_config = replica_pair(tmp_path)
    replica = start(replica_config)
    primary = start(primary_config_)

    async def scenario() -> None:
        client = ShardClient([primary_config_.client_address, replica_config.client_address], key_of(replica_config),
                             timeout_ms=10_000,
                             down_wait_ms=DOWN_WAIT_MS)
        try:
            assert (await client.submit([_account(1)])).status == ReplyStatus.OK
            primary.kill()
            if dead == "both":
                replica.kill()
            await asyncio.sleep(SEEN_DOWN_S)
            took_s, outcome = await _timed(client, _account(2))
            assert isinstance(outcome, ShardUnavailable) and took_s < FAST_S, (took_s, outcome)
        finally:
            client.close()

    try:
        asyncio.run(scenario())
    finally:
        replica.kill()
        primary.kill()
