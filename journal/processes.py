"""Starting and stopping shard processes on one machine: their folders, ports and readiness."""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import msgspec
import pynng

from journal.auth import MessageKey, load_key
from journal.shard import ShardConfig
from journal.store import CorruptionError, Journal, read_in_child, signal_name
from journal.wire import Reply, ReplyStatus, Status, reply_decoder, request_encoder

log = logging.getLogger("paygate.serve")
LAYOUT_FILE = "shards.json"
PORTS_PER_SHARD = 4
SHARD_PORT_OFFSET = 4  # on TCP, the first ports of the block are the simulated providers'
HEAD_READ_TIMEOUT_S = 60.0  # reading a journal's head takes a few page reads: a reader still at it is stuck


class Layout(msgspec.Struct):
    """What a data folder holds: fixed when it is first created, since the shard map depends on it."""

    shard_count: int
    replica: bool


def shard_folder(data: pathlib.Path, shard: int, replica: bool = False) -> pathlib.Path:
    return data / (f"shard-{shard}-replica" if replica else f"shard-{shard}")


def load_or_create_layout(data: pathlib.Path, shard_count: int, replica: bool) -> Layout:
    data.mkdir(parents=True, exist_ok=True)
    path = data / LAYOUT_FILE
    if path.exists():
        layout = msgspec.json.decode(path.read_bytes(), type=Layout)
        if layout.shard_count != shard_count:
            raise SystemExit(f"{data} holds {layout.shard_count} shards; it cannot be served with {shard_count}")
        return Layout(layout.shard_count, replica)
    layout = Layout(shard_count, replica)
    path.write_bytes(msgspec.json.encode(layout))
    return layout


class JournalHead(msgspec.Struct, frozen=True):
    """Where a shard folder's journal stands: what decides which folder of a pair leads."""

    folder: pathlib.Path
    epoch: int
    sequence: int
    hash: bytes = b""


def read_head(folder: pathlib.Path, readonly: bool = False) -> JournalHead:
    """`readonly` for a folder a running shard process may be writing."""
    if not (folder / "journal").exists():
        return JournalHead(folder, 0, 0)
    return _read_journal(folder, readonly, lambda journal: JournalHead(folder, journal.epoch, journal.head_sequence,
                                                                       journal.head_hash))


def _read_journal(folder: pathlib.Path, readonly: bool, read, *args):
    """`read(journal, *args)` in a child process, so a damaged LMDB page kills the child, not serve; damage names
    the folder, since serve reads every shard's."""
    try:
        return read_in_child(folder, HEAD_READ_TIMEOUT_S, read, *args, readonly=readonly)
    except CorruptionError as error:
        raise CorruptionError(f"{folder}: {error}", error.sequence, error.damaged_record) from None


class DivergedFollower(SystemExit):
    """A shard's other folder holds entries its leader lacks: it cannot follow; the message says what to do."""


def shard_roles(data: pathlib.Path, shard: int, replica: bool) -> tuple[pathlib.Path, pathlib.Path | None]:
    """The folder that starts as the shard's primary, and the one that follows it (with a replica).

    The higher epoch leads (a promotion happened there), then the longer journal, then the usual primary folder:
    roles follow the data, not the folder names. A follower whose journal is not a prefix of the leader's refuses.
    """
    heads = [read_head(shard_folder(data, shard)), read_head(shard_folder(data, shard, replica=True))]
    # A stable sort: on a full tie the usual primary folder stays first.
    leader, follower = sorted(heads, key=lambda head: (head.epoch, head.sequence), reverse=True)
    if not replica:
        return leader.folder, None
    refuse_diverged(leader, follower)
    return leader.folder, follower.folder


def refuse_diverged(leader: JournalHead, follower: JournalHead, readonly: bool = False) -> None:
    """DivergedFollower, saying what to do, when `follower` holds entries `leader` lacks."""
    if _diverged(leader, follower, readonly):
        raise DivergedFollower(
            f"{follower.folder} (epoch {follower.epoch}, {follower.sequence} entries) holds entries that "
            f"{leader.folder} (epoch {leader.epoch}, {leader.sequence} entries) does not: it went on writing after "
            f"the other took over, so it cannot follow it. Move it aside (mv {follower.folder} "
            f"{follower.folder}.diverged, kept to inspect those entries) and serve again: the replica is then "
            f"copied afresh from {leader.folder}.")


def _diverged(leader: JournalHead, follower: JournalHead, readonly: bool) -> bool:
    """The follower has an entry the leader lacks: its head is past the leader's or differs from the leader's entry
    at that sequence (the hash chain makes equal heads mean equal histories)."""
    if follower.sequence == 0:
        return False
    if follower.sequence > leader.sequence:
        return True
    expected = _read_journal(leader.folder, readonly, Journal.entry_hash_at, follower.sequence)
    # None: pruned at the leader, nothing left to compare with.
    return expected is not None and expected != follower.hash


class ShardStartFailed(RuntimeError):
    """A shard process ended before it served: its recovery refused the data, or it could not listen."""


# A unix socket's path has room for 107 bytes (sun_path); the longest name below must fit after the folder.
UNIX_PATH_MAX_BYTES = 107
LONGEST_SOCKET_NAME = "shard-99999-replication.ipc"
SOCKETS_FOLDER = "sockets"


class InternalAddresses:
    """Where paygate's own sockets listen: `ipc://` paths in an owner-only folder (only this user can connect), or,
    when an internal host is configured (a replica on another machine), TCP on that host from `base_port`."""

    def __init__(self, folder: pathlib.Path | None = None, host: str = "", base_port: int = 0,
                 temporary: bool = False) -> None:
        if (folder is None) == (not host):
            raise ValueError("internal addresses take a socket folder or a host and port, not both")
        self.folder = folder
        self.host = host
        self.base_port = base_port
        self.temporary = temporary  # a folder made for this run alone, removed by `close`

    @classmethod
    def in_data_folder(cls, data: pathlib.Path) -> "InternalAddresses":
        """The sockets folder under `data`, or, when its path is too long for a unix socket, a short owner-only
        folder under the runtime folder or /tmp (logged)."""
        folder = data.resolve() / SOCKETS_FOLDER
        if len(os.fsencode(folder / LONGEST_SOCKET_NAME)) > UNIX_PATH_MAX_BYTES:
            runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
            folder = pathlib.Path(tempfile.mkdtemp(prefix="paygate-", dir=runtime))
            log.warning("the data folder's path is too long for unix sockets: they are in %s", folder)
            return cls(folder=folder, temporary=True)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # also one an older run left, or another umask made
        return cls(folder=folder)

    def close(self) -> None:
        """Removes a temporary socket folder once nothing listens in it any more."""
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def address(self, name: str, port_offset: int) -> str:
        if self.folder is not None:
            return f"ipc://{self.folder / name}.ipc"
        return f"tcp://{self.host}:{self.base_port + port_offset}"


class ShardPlan:
    """How a data folder's shards are started: the same at serve's start and whenever a shard is started again."""

    def __init__(self, data: pathlib.Path, addresses: InternalAddresses, sync: bool, key_file: pathlib.Path,
                 **options) -> None:
        self.data = data
        self.addresses = addresses
        self.sync = sync
        self.key_file = str(key_file)
        self.options = options

    def configs(self, shard: int, replica: bool) -> tuple[ShardConfig, ShardConfig | None]:
        """The shard's primary and (`replica`) replica configuration; roles by shard_roles, and the leader always on
        the shard's first address, whichever folder leads, so clients' addresses hold."""
        port = SHARD_PORT_OFFSET + PORTS_PER_SHARD * shard
        address = self.addresses.address
        replication_address = address(f"shard-{shard}-replication", port + 3) if replica else ""
        leader, follower = shard_roles(self.data, shard, replica)
        primary = ShardConfig(data=str(leader), client_address=address(f"shard-{shard}", port),
                              announce_address=address(f"shard-{shard}-announce", port + 1),
                              replica_address=replication_address, sync_replication=self.sync,
                              key_file=self.key_file, **self.options)
        if follower is None:
            return primary, None
        return primary, ShardConfig(data=str(follower), client_address=address(f"shard-{shard}-replica", port + 2),
                                    replication_address=replication_address, role="replica",
                                    key_file=self.key_file, **self.options)


def shard_configs(data: pathlib.Path, layout: Layout, addresses: InternalAddresses, sync: bool, key_file: pathlib.Path,
                  **options) -> list[tuple[ShardConfig, ShardConfig | None]]:
    """Primary and replica configurations of every shard; roles by shard_roles."""
    plan = ShardPlan(data, addresses, sync, key_file, **options)
    return [plan.configs(shard, layout.replica) for shard in range(layout.shard_count)]


class ShardProcess:
    """One shard process, started from its configuration."""

    def __init__(self, config: ShardConfig, log_path: pathlib.Path | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.key = load_key(config.key_file, f"serve's status requests to {config.data}")

    def start(self) -> "ShardProcess":
        pathlib.Path(self.config.data).mkdir(parents=True, exist_ok=True)
        output = open(self.log_path, "ab") if self.log_path else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "journal.shard", msgspec.json.encode(self.config).decode()],
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
        if output:
            output.close()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until the process answers a status request (it has recovered and listens)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ShardStartFailed(self.start_failure())
            if self.ready(timeout_ms=500):
                return
            time.sleep(0.05)
        raise TimeoutError(f"shard at {self.config.data} not ready after {timeout_s} s")

    def ready(self, timeout_ms: int) -> bool:
        """Whether it answers a status request (it has recovered and listens)."""
        reply = request_status(self.config.client_address, self.key, timeout_ms=timeout_ms)
        return reply is not None and reply.status == ReplyStatus.OK

    def start_failure(self) -> str:
        code = self.process.returncode
        if code < 0:  # a signal leaves no log line; LMDB's C code reading a damaged page dies of SIGSEGV or SIGBUS
            return (f"the shard at {self.config.data} died of {signal_name(-code)} while starting: its journal may "
                    f"be damaged; `paygate verify --data {self.config.data}` names the damage")
        return f"the shard at {self.config.data} stopped while starting (exit code {code}); its log says why"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def how_it_ended(self) -> str:
        code = self.process.returncode if self.process is not None else None
        if code is None:
            return "still running"
        return f"killed by {signal_name(-code)}" if code < 0 else f"exit code {code}"

    def role(self) -> str:
        return running_role(pathlib.Path(self.config.data))

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM, then SIGKILL if it does not leave in time; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL at once: the crash tests' power cut."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def stop_processes(processes: list[subprocess.Popen], timeout_s: float = 10) -> None:
    """SIGTERM to all, then wait; any still there after `timeout_s` gets SIGKILL."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request_status(address: str, key: MessageKey, timeout_ms: int = 2000) -> Reply | None:
    """One synchronous status request; None when nothing answers in time (or without the key's proof)."""
    reply = request_once(address, key, Status(), timeout_ms)
    return None if reply is None else reply_decoder.decode(reply)


def request_once(address: str, key: MessageKey, request, timeout_ms: int) -> memoryview | None:
    """One synchronous request, sealed under `key`; the reply's bytes, or None when none with the key's proof came
    in time."""
    with pynng.Req0(recv_timeout=timeout_ms, send_timeout=timeout_ms, resend_time=-1) as socket:
        try:
            socket.dial(address, block=True)
            socket.send(key.seal(request_encoder.encode(request)))
            return key.open(socket.recv())
        except pynng.NNGException:
            return None


def running_address(folder: pathlib.Path) -> str:
    """The client address a running shard process wrote into its folder."""
    status = json.loads((folder / "shard.json").read_text())
    return status["client_address"]


def running_key(folder: pathlib.Path) -> MessageKey:
    """The message key of the shard process that last ran on `folder`, from the key file its shard.json names."""
    status = json.loads((folder / "shard.json").read_text())
    return load_key(status["key_file"], f"requests to {folder}")


def running_role(folder: pathlib.Path) -> str:
    """The role a shard process last wrote into its folder ("" before any did)."""
    try:
        return json.loads((folder / "shard.json").read_text())["role"]
    except FileNotFoundError:
        return ""
