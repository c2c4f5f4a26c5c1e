"""The shards' health as the shard-health actor (actors/health.py) gathers it and publishes it for the edge's admin
page: one file replaced atomically, read by the edge without Ray.

Light on purpose (msgspec only): the edge imports it without Ray.
"""

import msgspec

HEALTH_FOLDER = "health"  # in the data folder
REPORT_FILE = "shards.msgpack"


class ProcessHealth(msgspec.Struct):
    """One shard process as it answered the last status request (only `address` and `up` when it did not)."""

    address: str
    up: bool = False
    role: str = ""  # "primary" | "replica" | "fenced"
    epoch: int = 0
    sequence: int = 0  # applied
    durable_sequence: int = 0
    replica_sequence: int = 0  # acknowledged by its replica (a primary's view)
    queue_items: int = 0


class ShardHealth(msgspec.Struct):
    shard: int
    up: bool  # a process answers as primary
    healthy: bool  # up, and every process of the shard answers
    epoch: int
    committed_sequence: int  # durable on the primary (else the furthest process that answered)
    replica_lag_batches: int  # committed on the primary, not yet acknowledged by its replica
    queue_items: int  # waiting in the primary's queue
    processes: list[ProcessHealth]


class ClusterHealth(msgspec.Struct):
    checked_at_ms: int = 0  # wall clock of the last round; 0 before the first
    rounds: int = 0
    shards: list[ShardHealth] = []


def summarize(shard: int, processes: list[ProcessHealth]) -> ShardHealth:
    """One shard's health from what each of its processes answered."""
    answered = [process for process in processes if process.up]
    primaries = [process for process in answered if process.role == "primary"]
    primary = max(primaries, key=lambda process: process.epoch, default=None)
    furthest = primary or max(answered, key=lambda process: process.durable_sequence, default=None)
    has_replica = len(processes) > 1 and primary is not None
    return ShardHealth(
        shard=shard,
        up=primary is not None,
        healthy=primary is not None and len(answered) == len(processes),
        epoch=furthest.epoch if furthest else 0,
        committed_sequence=furthest.durable_sequence if furthest else 0,
        replica_lag_batches=max(0, primary.durable_sequence - primary.replica_sequence) if has_replica else 0,
        queue_items=primary.queue_items if primary else 0,
        processes=processes,
    )


def describe(health: ShardHealth) -> str:
    if not health.up:
        return f"shard {health.shard}: DOWN (no primary answers), committed {health.committed_sequence}"
    state = "healthy" if health.healthy else "degraded (a process does not answer)"
    return (f"shard {health.shard}: {state}, epoch {health.epoch}, committed {health.committed_sequence}, "
            f"replica lag {health.replica_lag_batches}, queue {health.queue_items}")


report_encoder = msgspec.msgpack.Encoder()
report_decoder = msgspec.msgpack.Decoder(ClusterHealth)
