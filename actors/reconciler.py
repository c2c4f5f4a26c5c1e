"""The reconciler: a Ray actor that reconciles each day's settlement file of a provider on its own.

A provider's file for a UTC day is complete some time after the day ends: its cut-off (`cutoff_s` after midnight,
two hours by default, as the seeds' schedule has it). Once past, the actor fetches the file, reconciles it on every
shard (actors/settlements.py) under the id `rec_<provider>_<YYYYMMDD>`, and only then notes the day as done, in a
small file written atomically: after a crash it runs the day again, and the shards answer the parts they made
already. A day whose file cannot be had or reconciled is tried again at the next poll; days missed while the actor
was away are caught up, at most `max_catch_up_days` of them, oldest first.
"""

import asyncio
import datetime
import logging
import os
import pathlib

import aiohttp
import msgspec
import ray

from actors import settlements
from actors.runtime import NAMESPACE, die_with_parent
from journal.auth import load_key
from journal.client import ShardClient
from journal.store import write_atomically
from journal.wire import ReplyStatus

log = logging.getLogger("paygate.actors.reconciler")
SHARD_TIMEOUT_MS = 30_000  # a part may carry tens of thousands of rows
DAY = datetime.timedelta(days=1)


class _Stats(msgspec.Struct):
    days_reconciled: int = 0
    attempts_failed: int = 0
    last_day: str = ""
    last_problem: str = ""


class ReconcilerActor:
    def __init__(self, shard_addresses: list[list[str]], key_file: str, state_folder: str, provider: str,
                 settlement_url: str, cutoff_s: float = 7200.0, poll_s: float = 60.0,
                 max_catch_up_days: int = 7) -> None:
        logging.basicConfig(level=os.environ.get("PAYGATE_LOG_LEVEL", "INFO"))
        self.provider = provider
        self.settlement_url = settlement_url
        self.cutoff = datetime.timedelta(seconds=cutoff_s)
        self.poll_s = poll_s
        self.max_catch_up_days = max_catch_up_days
        key = load_key(key_file, "reconciler")
        self.shards = [ShardClient(addresses, key, timeout_ms=SHARD_TIMEOUT_MS) for addresses in shard_addresses]
        folder = pathlib.Path(state_folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.state_file = folder / f"reconciled-{provider}.date"
        self.stats_ = _Stats()
        self.task: asyncio.Task | None = None

    async def start(self) -> str:
        """Poll from now on, in the actor's process (the class also runs in-process, for a test to drive)."""
        die_with_parent()
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        return f"reconciler of {self.provider}, done up to {self._done_through() or 'nothing yet'}"

    def pid(self) -> int:
        return os.getpid()

    def stats(self) -> dict:
        return msgspec.structs.asdict(self.stats_)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.catch_up(session, datetime.datetime.now(datetime.timezone.utc))
                except Exception:  # a bug: logged, and the next poll tries again
                    log.exception("reconciling %s failed", self.provider)
                await asyncio.sleep(self.poll_s)

    async def catch_up(self, session: aiohttp.ClientSession, now: datetime.datetime) -> None:
        """Reconcile every day whose cut-off has passed by `now` and that is not done yet, oldest first."""
        for day in self.due_days(now):
            try:
                await self.reconcile_day(session, day)
            except (ValueError, RuntimeError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as problem:
                self.stats_.attempts_failed += 1
                self.stats_.last_problem = f"{day}: {type(problem).__name__}: {problem}"
                log.warning("reconciling %s's file of %s failed, tried again later: %s", self.provider, day, problem)
                return
            self._note_done(day)

    def due_days(self, now: datetime.datetime) -> list[datetime.date]:
        latest = (now - self.cutoff).date() - DAY  # the last day whose file is complete
        done = self._done_through()
        first = latest - datetime.timedelta(days=self.max_catch_up_days - 1)
        if done is not None:
            first = max(first, done + DAY)
        return [first + datetime.timedelta(days=offset) for offset in range((latest - first).days + 1)]

    async def reconcile_day(self, session: aiohttp.ClientSession, day: datetime.date) -> list:
        date = day.isoformat()
        rows = settlements.parse(await settlements.fetch(session, self.settlement_url, self.provider, date))
        outcomes = await settlements.reconcile(self._read, self._submit, len(self.shards),
                                               f"rec_{self.provider}_{day.strftime('%Y%m%d')}", self.provider, date,
                                               rows)
        log.info("reconciled %s's file of %s: %d rows", self.provider, date, len(rows))
        return outcomes

    async def _read(self, shard: int, queries: list) -> list:
        return await self.shards[shard].read_many(queries)

    async def _submit(self, shard: int, command):
        reply = await self.shards[shard].submit([command])
        if reply.status != ReplyStatus.OK:
            raise RuntimeError(f"shard {shard}: {ReplyStatus.NAMES[reply.status]}")
        return reply.results[0]

    def _done_through(self) -> datetime.date | None:
        try:
            return datetime.date.fromisoformat(self.state_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _note_done(self, day: datetime.date) -> None:
        write_atomically(self.state_file, day.isoformat().encode())
        self.stats_.days_reconciled += 1
        self.stats_.last_day = day.isoformat()


# An async actor: its loop polls; calls (stats) are few. It needs no CPU slot.
Reconciler = ray.remote(num_cpus=0, max_concurrency=4)(ReconcilerActor)


def spawn(shard_addresses: list[list[str]], key_file: str, state_folder: pathlib.Path, provider: str,
          settlement_url: str, start_timeout_s: float = 60, **options) -> "ray.actor.ActorHandle":
    """The reconciler of `provider` (made now, or the one already running), started.

    Options: cutoff_s, poll_s, max_catch_up_days.
    """
    handle = Reconciler.options(name=f"reconciler-{provider}", namespace=NAMESPACE, get_if_exists=True).remote(
        shard_addresses, key_file, str(state_folder), provider, settlement_url, **options)
    ray.get(handle.start.remote(), timeout=start_timeout_s)
    return handle

