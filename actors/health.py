"""The shards' health, polled every second by a Ray actor and shown where the Ray dashboard shows things.

    ShardHealthActor ──nng Status to every process of every shard (bounded timeout)──▶ primaries and replicas
        ├─▶ Ray metrics, labelled by shard: ray_paygate_shard_up, _epoch, _committed_sequence, _replica_lag_batches,
        │   _queue_items (the node's metrics endpoint; the dashboard's Metrics view when Prometheus scrapes it)
        ├─▶ its log, under the actor in the dashboard's Actors view: a line when a shard's state changes, and a
        │   summary every minute
        ├─▶ status(): the latest ClusterHealth
        └─▶ the same, replaced atomically each round in <report folder>/shards.msgpack (actors/health_report.py),
            which the edge's admin page reads without Ray

It only reads status and changes nothing. May import the journal client and ray; never the edge.
"""

import asyncio
import logging
import os
import pathlib
import time

import ray
from ray.util.metrics import Gauge

from actors.connectors import NAMESPACE, configure_logging
from actors.health_report import REPORT_FILE, ClusterHealth, ProcessHealth, ShardHealth, describe, report_encoder, \
    summarize
from actors.runtime import die_with_parent
from journal.auth import load_key
from journal.client import ShardClient, ShardUnavailable

ACTOR_NAME = "shard-health"
POLL_INTERVAL_S = 1.0
STATUS_TIMEOUT_MS = 500  # a process that takes longer counts as down for this round
SUMMARY_EVERY_S = 60.0
WHERE = (f"the {ACTOR_NAME} actor in the Ray dashboard (its log), metrics ray_paygate_shard_* "
         "(up, epoch, committed_sequence, replica_lag_batches, queue_items)")

log = logging.getLogger("paygate.actors.health")


class ShardHealthActor:
    """Asks every process of every shard for its status each second; keeps, logs and exports the answers.

    Used as the Ray actor `ShardHealthWatch`; importable undecorated, so Ray pickles it by reference.
    """

    def __init__(self, shard_addresses: list[list[str]], key_file: str, report_folder: str = "") -> None:
        die_with_parent()
        self.report_path = pathlib.Path(report_folder) / REPORT_FILE if report_folder else None
        configure_logging()
        self.shard_addresses = shard_addresses
        self.key = load_key(key_file, "shard health")
        self.health = ClusterHealth()
        self._clients: list[list[ShardClient]] = []
        self._watcher: asyncio.Task | None = None  # held: the event loop keeps only a weak reference to a task
        self._states: list[tuple | None] = [None] * len(shard_addresses)  # what the log last said, per shard
        self._summarized_at = 0.0
        tags = ("shard",)
        self._gauges = {
            "up": Gauge("paygate_shard_up", "1 while a process of the shard answers as primary", tags),
            "epoch": Gauge("paygate_shard_epoch", "the primary's epoch", tags),
            "committed_sequence": Gauge("paygate_shard_committed_sequence", "the last batch durable on the primary",
                                        tags),
            "replica_lag_batches": Gauge("paygate_shard_replica_lag_batches",
                                         "batches committed on the primary and not yet on its replica", tags),
            "queue_items": Gauge("paygate_shard_queue_items", "items waiting in the primary's queue", tags),
        }

    def __repr__(self) -> str:
        # Shown in the dashboard's actor list (Ray reads it once, after __init__).
        processes = sum(len(addresses) for addresses in self.shard_addresses)
        return f"ShardHealth({len(self.shard_addresses)} shard(s), {processes} process(es), every {POLL_INTERVAL_S} s)"

    async def start(self) -> ClusterHealth:
        """Poll once, then every POLL_INTERVAL_S in the background; again is harmless."""
        if not self._clients:
            # One client per process, not per shard: a replica's health counts too, not only the primary's.
            self._clients = [[ShardClient([address], self.key, timeout_ms=STATUS_TIMEOUT_MS, max_in_flight=1, busy_retries=0,
                                          failover_rounds=1) for address in addresses]
                             for addresses in self.shard_addresses]
            await self._poll()
            self._watcher = asyncio.create_task(self._watch())
        return self.health

    def status(self) -> ClusterHealth:
        return self.health

    def pid(self) -> int:
        return os.getpid()

    async def _watch(self) -> None:
        began = time.monotonic()  # of the round start() made
        while True:
            await asyncio.sleep(max(0.0, began + POLL_INTERVAL_S - time.monotonic()))
            began = time.monotonic()
            try:
                await self._poll()
            except Exception:  # a bug in one round must not end the watch
                log.exception("shard health: a round failed")

    async def _poll(self) -> None:
        shards = await asyncio.gather(*(self._poll_shard(shard, clients) for shard, clients in enumerate(self._clients)))
        self.health = ClusterHealth(checked_at_ms=time.time_ns() // 1_000_000, rounds=self.health.rounds + 1,
                                    shards=list(shards))
        if self.report_path is not None:
            self._publish(self.report_path)

    def _publish(self, path: pathlib.Path) -> None:
        """Replaced whole (rename), never fsynced: a report a crash loses is written again within a second."""
        path.parent.mkdir(mode=0o700, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(report_encoder.encode(self.health))
        os.replace(temporary, path)
        self._export(self.health.shards)

    async def _poll_shard(self, shard: int, clients: list[ShardClient]) -> ShardHealth:
        return summarize(shard, list(await asyncio.gather(*(self._ask(client) for client in clients))))

    @staticmethod
    async def _ask(client: ShardClient) -> ProcessHealth:
        address = client.addresses[0]
        try:
            status = await client.status()
        except ShardUnavailable:
            return ProcessHealth(address)
        return ProcessHealth(address, up=True, role=status.role, epoch=status.epoch, sequence=status.sequence,
                             durable_sequence=status.durable_sequence, replica_sequence=status.replica_sequence,
                             queue_items=status.queue_items)

    def _export(self, shards: list[ShardHealth]) -> None:
        for health in shards:
            tags = {"shard": str(health.shard)}
            for name, gauge in self._gauges.items():
                gauge.set(int(getattr(health, name)), tags=tags)
        states = [(health.up, health.healthy, [(process.up, process.role, process.epoch)
                                                for process in health.processes]) for health in shards]
        now = time.monotonic()
        summary_due = now - self._summarized_at >= SUMMARY_EVERY_S
        for health, state, previous in zip(shards, states, self._states):
            if state != previous:
                log.log(logging.INFO if health.healthy else logging.WARNING, "changed: %s", describe(health))
            elif summary_due:
                log.info("%s", describe(health))
        if summary_due:
            self._summarized_at = now
        self._states = states


ShardHealthWatch = ray.remote(num_cpus=0, max_concurrency=4)(ShardHealthActor)


def spawn(shard_addresses: list[list[str]], key_file: str, report_folder: str = "",
          start_timeout_s: float = 30) -> "ray.actor.ActorHandle":
    """The shard-health actor (made now, or the one already running), polling, and publishing its report in
    `report_folder` when given. Tied to the driver that made it."""
    handle = ShardHealthWatch.options(name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True).remote(
        shard_addresses, key_file, report_folder)
    ray.get(handle.start.remote(), timeout=start_timeout_s)
    return handle
