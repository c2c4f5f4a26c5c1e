"""Only paygate talks to its own parts: internal sockets are unix sockets in an owner-only folder, and a message
without the data folder's key is dropped before it is decoded: nothing applied, nothing read, no reply."""

import asyncio
import concurrent.futures
import hashlib
import hmac
import os
import pathlib
import stat
import subprocess
import sys
import time

import pynng
import pytest

from edge_harness import Server
from engine import Account, CreateAccounts
from journal.auth import (HEAD_SIZE, KEY_BYTES, RELOAD_S, SWITCH_S, TAG_BYTES, HmacSha256, KeyFileError, MessageKey,
                          ensure_key_file, load_key, read_key_file, rotate_key_file)
from journal.client import ShardClient
from journal.processes import (UNIX_PATH_MAX_BYTES, InternalAddresses, request_once, request_status, running_address,
                               running_key)
from journal.store import GENESIS_HASH, HASH_BYTES, Entry, entry_hash
from journal.wire import ReadEntries, ReplicateHead, Submit, replicate_head_encoder, request_encoder
from shard_harness import Load, key_of, primary_config, replica_pair, start

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
NO_REPLY_MS = 700
ROTATION_GRACE_S = 3
WRONG_KEY = MessageKey(b"\x01" * KEY_BYTES)


def test_a_message_opens_only_whole_and_under_its_key():
    key = MessageKey(os.urandom(KEY_BYTES))
    sealed = key.seal(b"body")
    assert key.open(sealed) == b"body"
    assert key.open(b"body") is None and key.open(b"") is None
    assert key.open(sealed[:-1] + b"x") is None
    assert WRONG_KEY.open(sealed) is None
    assert key.dropped == 3 and "secret" not in repr(key)


@pytest.mark.parametrize("size", [0, 1, 55, 63, 64, 65, 1000, 1 << 20])
def test_a_tag_is_hmac_sha256_of_the_body(size):
    """The tag, made from the key's pads hashed once, is exactly HMAC-SHA256 (so any implementation can check it)."""
    secret = os.urandom(KEY_BYTES)
    body = os.urandom(size)
    sealed = MessageKey(secret).seal(body)
    assert sealed == hmac.digest(secret, body, hashlib.sha256) + body
    assert MessageKey(secret).open(sealed) == body


@pytest.mark.parametrize("key_size", [0, 16, 32, 64, 65, 200])
def test_hmac_sha256_from_hashed_pads_is_the_standard_one(key_size):
    key = os.urandom(key_size)
    mac = HmacSha256(key)
    for message in (b"", b"x", os.urandom(100), memoryview(os.urandom(5000))[7:]):
        assert mac.digest(message) == hmac.digest(key, message, hashlib.sha256)
        assert mac.hexdigest(message) == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_the_key_file_is_owner_only_and_made_once(tmp_path):
    path = tmp_path / "keys" / "internal.key"
    ensure_key_file(path)
    first = path.read_bytes()
    ensure_key_file(path)
    assert path.read_bytes() == first and len(first) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).open(MessageKey(first).seal(b"x")) == b"x"
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_key(path)


def test_a_rotated_key_file_is_accepted_at_once_and_seals_only_after_the_switch(tmp_path):
    path = tmp_path / "internal.key"
    ensure_key_file(path)
    old_only = MessageKey(path.read_bytes())
    key = load_key(path)  # read before the rotation, as a running process has it
    switch_at, refused_at = rotate_key_file(path, grace_s=30)
    old, new = read_key_file(path)[0]
    assert (new.seal_from, old.accept_until) == (switch_at, refused_at) and stat.S_IMODE(path.stat().st_mode) == 0o600
    time.sleep(RELOAD_S)  # the running process looks again
    assert key.open(MessageKey(bytes.fromhex(new.secret)).seal(b"new")) == b"new"
    assert old_only.open(key.seal(b"still old")) == b"still old"  # nobody seals with the new key before the switch
    with pytest.raises(KeyFileError, match="under way"):
        rotate_key_file(path)
    path.write_bytes(b"{}")
    time.sleep(RELOAD_S)
    assert key.open(old_only.seal(b"kept")) == b"kept"  # a broken file leaves the keys in hand


def test_sockets_of_a_long_data_path_go_to_a_short_owner_only_folder(tmp_path):
    short = InternalAddresses.in_data_folder(tmp_path / "data")
    assert short.folder == (tmp_path / "data" / "sockets").resolve()
    long = InternalAddresses.in_data_folder(tmp_path / ("d" * UNIX_PATH_MAX_BYTES))
    try:
        assert not long.folder.is_relative_to(tmp_path) and stat.S_IMODE(long.folder.stat().st_mode) == 0o700
        address = long.address("shard-99999-replication", 0)
        assert address.startswith("ipc://") and len(address.removeprefix("ipc://")) <= UNIX_PATH_MAX_BYTES
    finally:
        long.close()
    assert not long.folder.exists()


def _no_reply(address: str, message: bytes) -> bool:
    """Sends `message` on a raw nng socket; True when nothing comes back in time."""
    with pynng.Req0(recv_timeout=NO_REPLY_MS, send_timeout=NO_REPLY_MS, resend_time=-1) as socket:
        socket.dial(address, block=True)
        socket.send(message)
        try:
            socket.recv()
        except pynng.Timeout:
            return True
    return False


def _forged_requests() -> list[bytes]:
    submit = request_encoder.encode(Submit([CreateAccounts([Account("test:forged", "usd")])], b"forged"))
    read = request_encoder.encode(ReadEntries(1, 64))
    return [submit, read, WRONG_KEY.seal(submit), WRONG_KEY.seal(read), b"\x00" * TAG_BYTES + submit]


def _record(payload: bytes) -> bytes:
    """A well-formed first journal record."""
    return Entry(1, entry_hash(GENESIS_HASH, 1, payload), GENESIS_HASH, payload).record()


async def _status(client: ShardClient):
    return await client.status(with_state_hash=True)


def test_a_shard_drops_what_lacks_the_key(tmp_path):
    config = primary_config(tmp_path / "shard")
    process = start(config)
    client = ShardClient([config.client_address], key_of(config), timeout_ms=5000)
    try:
        before = asyncio.run(_status(client))
        forged = _forged_requests()
        assert all(_no_reply(config.client_address, message) for message in forged)
        after = asyncio.run(_status(client))
        assert (after.sequence, after.state_hash) == (before.sequence, before.state_hash)
        assert after.unauthenticated_messages == before.unauthenticated_messages + len(forged)
        assert asyncio.run(client.lookup_accounts(["test:forged"])) == [None]
    finally:
        client.close()
        process.stop()


def test_a_replica_drops_replication_that_lacks_the_key(tmp_path):
    primary, replica = replica_pair(tmp_path)
    replica_process = start(replica)  # alone: nothing else talks to its replication socket
    client = ShardClient([replica.client_address], key_of(replica), timeout_ms=5000)
    try:
        before = asyncio.run(_status(client))
        record = _record(b"forged")
        head = replicate_head_encoder.encode(ReplicateHead(before.epoch + 1, 1, [len(record)], record[:HASH_BYTES]))
        forged = [HEAD_SIZE.pack(len(head)) + head + record, WRONG_KEY.seal_head(head, [record]),
                  # the key's tag on the head, but other records than the chain it names: no proof either
                  *(key_of(replica).seal_head(head, [_record(payload)]) for payload in (b"other", b"forgex"))]
        for message in forged:
            assert _no_reply(replica.replication_address, message)
        after = asyncio.run(_status(client))
        assert (after.epoch, after.sequence, after.state_hash) == (before.epoch, before.sequence, before.state_hash)
        assert after.unauthenticated_messages == before.unauthenticated_messages + len(forged)
    finally:
        client.close()
        replica_process.stop()


def test_the_internal_key_rotates_under_a_running_shard_and_its_replica(tmp_path):
    """`paygate rotate-internal-key`: load keeps flowing, primary to replica too, while the new key arrives, takes
    over sealing and the old one's grace runs out; a sender that knows only the old key is obeyed until then and
    refused after."""
    primary, replica = replica_pair(tmp_path)
    processes = [start(replica), start(primary)]
    key_file = pathlib.Path(primary.key_file)
    old_only = MessageKey(key_file.read_bytes())
    client = ShardClient([primary.client_address, replica.client_address], load_key(key_file), timeout_ms=5000)

    def old_key_creates(account: str) -> bool:
        submit = Submit([CreateAccounts([Account(account, "usd")])], account.encode())
        request_once(primary.client_address, old_only, submit, timeout_ms=NO_REPLY_MS)  # the reply is under the new key
        return asyncio.run(client.lookup_accounts([account])) != [None]

    def rotate(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge.cli", "rotate-internal-key", "--data", str(tmp_path),
                               "--grace-s", str(ROTATION_GRACE_S), *extra], capture_output=True, text=True, timeout=60)

    async def load_through(seconds: float) -> Load:  # on a loop and a client of its own, in a thread
        load = Load(ShardClient([primary.client_address, replica.client_address], load_key(key_file), timeout_ms=5000))
        try:
            await load.create_accounts()
            await load.run(seconds, concurrency=2, chains_per_submit=5)
        finally:
            load.client.close()
        return load

    try:
        assert old_key_creates("test:before")
        rotated = rotate()
        assert rotated.returncode == 0 and "seals from" in rotated.stdout, rotated.stderr
        old, new = read_key_file(key_file)[0]
        switch_at, refused_at = new.seal_from, old.accept_until
        assert refused_at == switch_at + ROTATION_GRACE_S and rotate().returncode == 1  # one rotation at a time
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            loading = pool.submit(asyncio.run, load_through(SWITCH_S + ROTATION_GRACE_S + 2))
            time.sleep(max(0.0, switch_at + 0.5 - time.time()))
            assert old_key_creates("test:in-grace")  # senders seal with the new key now; the old one is still obeyed
            time.sleep(max(0.0, refused_at + RELOAD_S - time.time()))
            assert not old_key_creates("test:after-grace")
            load = loading.result(timeout=60)
        assert load.acknowledged and not load.unacknowledged
        new_only = MessageKey(bytes.fromhex(new.secret))
        assert request_status(primary.client_address, new_only) is not None
        status = asyncio.run(client.status())
        assert status.replica_sequence == status.durable_sequence == status.sequence
        replica_client = ShardClient([replica.client_address], load_key(key_file), timeout_ms=5000)
        try:
            assert asyncio.run(replica_client.status()).sequence == status.sequence
        finally:
            replica_client.close()
    finally:
        client.close()
        for process in processes:
            process.kill()


def _session_pids(session: int) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session:  # the fields after the name: state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:  # a process that ended meanwhile
            continue
    return inodes


def _listening_tcp(inodes: set[str]) -> list[tuple[str, int]]:
    """(hex local address, port) of every TCP socket among `inodes` that listens, from the kernel's own table."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                host, port = fields[1].split(":")
                found.append((host, int(port, 16)))
    return found


def _unix_paths(inodes: set[str]) -> list[str]:
    paths = []
    for line in pathlib.Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes:
            paths.append(fields[7])
    return paths


# 127.0.0.1, ::1 and ::ffff:127.0.0.1 (IPv4 loopback on an IPv6 socket, as gRPC binds it), as /proc/net/tcp* print them.
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("open") / "data", extra=("--host", "0.0.0.0", "--replica")).start()
    yield server
    server.stop()


def test_only_the_http_port_listens_beyond_loopback(open_server):
    inodes = _socket_inodes(_session_pids(open_server.process.pid))
    listening = _listening_tcp(inodes)
    assert (("00000000", open_server.port) in listening or ("00000000000000000000000000000000", open_server.port)
            in listening), listening
    beyond_loopback = {port for host, port in listening if host not in LOOPBACK}
    assert beyond_loopback == {open_server.port}, listening
    sockets = open_server.data / "sockets"
    assert stat.S_IMODE(sockets.stat().st_mode) == 0o700
    unix = {path for path in _unix_paths(inodes) if path.startswith(str(sockets.resolve()))}
    assert {pathlib.Path(path).name for path in unix} >= {"shard-0.ipc", "shard-0-replica.ipc",
                                                          "shard-0-replication.ipc", "shard-0-announce.ipc"}, unix


def test_a_raw_socket_without_the_key_gets_nothing_from_a_served_shard(open_server):
    folder = open_server.data / "shard-0"
    address = running_address(folder)
    assert address.startswith("ipc://")
    client = ShardClient([address], running_key(folder), timeout_ms=5000)
    try:
        before = asyncio.run(_status(client))
        assert all(_no_reply(address, message) for message in _forged_requests())
        after = asyncio.run(_status(client))
        assert (after.sequence, after.state_hash) == (before.sequence, before.state_hash)
    finally:
        client.close()


def test_internal_host_puts_the_shards_on_tcp_there_and_keeps_the_key(tmp_path):
    server = Server(tmp_path / "data", extra=("--internal-host", "127.0.0.1")).start()
    try:
        folder = server.data / "shard-0"
        address = running_address(folder)
        assert address.startswith("tcp://127.0.0.1:")
        assert all(_no_reply(address, message) for message in _forged_requests())
        client = ShardClient([address], running_key(folder), timeout_ms=5000)
        try:
            assert asyncio.run(_status(client)).role == "primary"
        finally:
            client.close()
        listening = _listening_tcp(_socket_inodes(_session_pids(server.process.pid)))
        assert int(address.rsplit(":", 1)[1]) in {port for host, port in listening if host in LOOPBACK}
    finally:
        server.stop()
