"""Messages between clients, shard primaries and replicas, over nng, as msgpack arrays.

One request message carries many commands; one reply carries one result each.
"""

import struct

import msgspec

from engine.batch import BatchResult, Command
from engine.queries import Answer, Query
from engine.records import Outcome, Reconcile
from engine.submits import SubmitSpan
from engine.types import CreateAccounts, CreateTransfers


# Items (transfers, accounts, other commands, queries) in one shard batch, at most: 8 full batch-transfer requests.
MAX_BATCH_ITEMS = 65_520
# What a shard publishes on its announce socket after a write that made a batch holding deliveries queued or moved
# durable (engine/notifications.py FOLLOWED_EVENTS): its durable sequence, sealed with the data folder's key. It only
# wakes readers of the journal (journal/client.py Announcements).
ANNOUNCEMENT = struct.Struct(">Q")
# A Submit's id: 8 random bytes naming the sending process and 8 counting its Submits (journal/client.py).
SUBMIT_ID_MAX_BYTES = 32


def command_items(command) -> int:
    """How many items a command counts for against a shard's batch and queue limits."""
    kind = type(command)
    if kind is CreateTransfers:
        return max(len(command.transfers), 1)
    if kind is CreateAccounts:
        return max(len(command.accounts), 1)
    if kind is Reconcile:  # one row weighs as a transfer: it may make a few
        return max(len(command.rows) + len(command.unknown), 1)
    return 1


class Submit(msgspec.Struct, tag="submit", array_like=True):
    """Commands to journal and apply, in order, in one batch.

    `submit_id` is the sender's, unique among its Submits and the same in a retry: the engine applies a Submit
    whose id it saw within its window (engine/submits.py) no second time, and answers its first results again.
    """

    commands: list[Command]
    submit_id: bytes = b""


class ReceivedSubmit(msgspec.Struct, tag="submit", array_like=True):
    """A Submit's commands as they arrived, undecoded: the shard journals these bytes rather than encode again.

    Its id is left out (decoding ignores trailing fields): the shard takes it from the decoded Submit."""

    commands: list[msgspec.Raw]


class JournaledBatch(msgspec.Struct, array_like=True):
    """An engine Batch with its commands as received: it encodes to the same bytes a Batch of them would."""

    sequence: int
    timestamp: int
    commands: list[msgspec.Raw]
    submits: list[SubmitSpan] = []


class Read(msgspec.Struct, tag="read", array_like=True):
    """Reads of engine state, one answer each, from memory, once every batch before them is durable."""

    queries: list[Query]


class ReadEntries(msgspec.Struct, tag="read_entries", array_like=True):
    """Committed batches from `start_sequence` on, for readers that keep their own cursor."""

    start_sequence: int
    limit: int = 64
    # False: each entry's payload left empty, for a reader that needs only the results (a batch's payload may hold
    # thousands of transfers).
    with_payloads: bool = True
    # False: ledger commands arrive emptied (engine/batch.py's without_ledger_items), for a reader of commerce commands.
    with_ledger_items: bool = True


class Status(msgspec.Struct, tag="status", array_like=True):
    with_state_hash: bool = False
    # Run the engine's full consistency check (double entry, limits, pending amounts).
    with_check: bool = False


class Promote(msgspec.Struct, tag="promote", array_like=True):
    """Make a replica the primary under a new epoch."""


class ReplicateHead(msgspec.Struct, array_like=True):
    """The head of a replication message (MessageKey.seal_head): journal records from the primary follow it exactly as
    stored, `record_sizes` bytes each (none: a heartbeat), and the chain of their hashes ends at `last_hash`, which
    the message's tag covers, so the replica's check of the chain proves the records too."""

    epoch: int
    first_sequence: int
    record_sizes: list[int]
    last_hash: bytes


Request = Submit | Read | ReadEntries | Status | Promote


class ReplyStatus:
    OK = 0
    # The shard's queue is full: retry later, nothing was done.
    BUSY = 1
    # This process is not the primary (a replica, or fenced by a higher epoch).
    NOT_PRIMARY = 2
    # The request could not be decoded or breaks a limit.
    INVALID = 3
    NAMES = ("ok", "busy", "not_primary", "invalid")


class CommittedEntry(msgspec.Struct, array_like=True):
    sequence: int
    payload: bytes  # an encoded engine Batch
    result: BatchResult


class StoredEntry(msgspec.Struct, array_like=True):
    """A CommittedEntry as the shard sends it: the result as stored, encoded the same, never decoded on the way."""

    sequence: int
    payload: bytes
    result: msgspec.Raw


class ShardStatus(msgspec.Struct, array_like=True):
    role: str  # "primary" | "replica" | "fenced"
    epoch: int
    sequence: int  # applied
    durable_sequence: int
    replica_sequence: int  # acknowledged by the replica (primary only)
    state_hash: str = ""
    queue_items: int = 0
    check: str = ""  # "ok", or what the full check found
    # Messages dropped on the client and replication sockets for lacking the data folder's key (journal/auth.py).
    unauthenticated_messages: int = 0


class Reply(msgspec.Struct, array_like=True):
    status: int
    epoch: int
    sequence: int = 0
    # Submit: one entry per command.
    results: list[list[int] | Outcome] | None = None
    # Read: one answer per query.
    answers: list[Answer] | None = None
    entries: list[CommittedEntry] | None = None
    shard_status: ShardStatus | None = None
    message: str = ""


request_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(Request)
replicate_head_encoder = msgspec.msgpack.Encoder()
replicate_head_decoder = msgspec.msgpack.Decoder(ReplicateHead)
received_submit_decoder = msgspec.msgpack.Decoder(ReceivedSubmit)
reply_encoder = msgspec.msgpack.Encoder()
reply_decoder = msgspec.msgpack.Decoder(Reply)
