"""PSP connectors: the edge pushes card authorizations over nng to a Ray actor that sends them to the provider.

    edge ──nng push (one msgpack AuthorizationBatch per batch)──▶ PaymentConnector (Ray actor, nng pull)
                                                                     │ aiohttp, bounded concurrency
                                                                     ▼
                                                  provider: 202 → it calls the gateway back, signed
                                                            402 → RecordPspResult(declined) to the shard
                                                            5xx / no answer → retried, then RecordPspResult(error)

The card number and CVC exist here only in memory, between the nng message and the provider's request: they are
never logged, never journaled (only the RecordPspResult outcome is), and `CardData` refuses to be pickled, so it
cannot travel through Ray's object store or its spill files either. Nothing on the edge's hot path waits on Ray:
`ConnectorClient.send` is one non-blocking nng send that fails at once when no connector is connected.

A batch lost with a dying connector is not retried from here (the card number is nowhere durable to retry it
from): its payments fail by the engine's own processing timeout.

May import engine types, the journal client and ray; never the edge.
"""

import asyncio
import logging
import os
import random

import aiohttp
import msgspec
import pynng
import ray

from engine.records import RecordPspResult
from journal.client import Cluster
from actors.runtime import die_with_parent
from actors.connector_wire import Authorization, AuthorizationBatch, batch_decoder
from journal.logs import JsonFormatter

NAMESPACE = "paygate"
REQUEST_TIMEOUT_S = 10.0
RECV_TIMEOUT_MS = 250  # how often the receive loop looks up to see whether it should stop
MAX_BATCHES_IN_FLIGHT = 16  # then the pull socket's buffer fills and the edge's sends fail (its 503)
RECV_BUFFER_MESSAGES = 64
MAX_BACKOFF_S = 5.0
MAX_ERROR_BODY_BYTES = 4096
DECLINED = "declined"
ERROR = "error"

log = logging.getLogger("paygate.actors.connectors")
_json_encoder = msgspec.json.Encoder()


# The actor


class _Stats(msgspec.Struct):
    batches: int = 0
    sent: int = 0  # authorizations sent to the provider (once each, whatever the retries)
    accepted: int = 0  # 202: the provider will call back
    declined: int = 0  # 402
    failed: int = 0  # no usable answer after the retries
    retried: int = 0  # extra attempts
    submitted: int = 0  # RecordPspResult commands acknowledged by a shard
    submit_failed: int = 0  # RecordPspResult commands no shard took (the payment times out instead)
    invalid_messages: int = 0


class PaymentConnectorActor:
    """Receives AuthorizationBatch messages on an nng pull socket and sends each authorization to one provider.

    Used as the Ray actor `PaymentConnector`. The class is importable under its own name, undecorated, so Ray
    pickles it (and its methods) by reference rather than by value.
    """

    def __init__(self, provider: str, provider_url: str, listen_address: str, shard_addresses: list[list[str]],
                 max_in_flight: int = 64, retries: int = 3, backoff_s: float = 0.2) -> None:
        die_with_parent()
        _configure_logging()
        self.provider = provider
        self.provider_url = provider_url.rstrip("/")
        self.listen_address = listen_address
        self.shard_addresses = shard_addresses
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.backoff_s = backoff_s
        self.stats_ = _Stats()
        self._socket: pynng.Pull0 | None = None
        self._session: aiohttp.ClientSession | None = None
        self._cluster: Cluster | None = None
        self._receiver: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()
        self._stopping = False

    async def start(self) -> str:
        """Listen and start the receive loop; again is harmless."""
        if self._receiver is not None and not self._receiver.done():
            return self.ping()
        socket = pynng.Pull0(recv_timeout=RECV_TIMEOUT_MS, recv_buffer_size=RECV_BUFFER_MESSAGES)
        try:
            socket.listen(self.listen_address)
        except pynng.NNGException:
            socket.close()
            raise
        self._socket = socket
        self._stopping = False
        self._items = asyncio.Semaphore(self.max_in_flight)
        self._batch_slots = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self._cluster = Cluster(self.shard_addresses)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )
        self._receiver = asyncio.create_task(self._receive())
        log.info("connector %s listening on %s for %s", self.provider, self.listen_address, self.provider_url)
        return self.ping()

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> str:
        listening = self._receiver is not None and not self._receiver.done()
        state = f"listening on {self.listen_address}" if listening else "stopped"
        return f"connector-{self.provider} {state}"

    def stats(self) -> dict:
        return {**msgspec.structs.asdict(self.stats_), "batches_in_flight": len(self._batches)}

    async def stop(self, drain_s: float = REQUEST_TIMEOUT_S) -> dict:
        """Stop receiving, let the batches in hand finish (for at most `drain_s`), then close everything."""
        self._stopping = True
        if self._receiver is not None:
            # It looks at _stopping at least every RECV_TIMEOUT_MS, unless it waits for a free batch slot.
            _, pending = await asyncio.wait([self._receiver], timeout=2 * RECV_TIMEOUT_MS / 1000)
            for task in pending:
                task.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
            self._receiver = None
        if self._batches:
            _, pending = await asyncio.wait(list(self._batches), timeout=drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Close in a known order, with nothing in flight: nng sockets, then HTTP.
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        return self.stats()

    # The receive loop

    async def _receive(self) -> None:
        while not self._stopping:
            await self._batch_slots.acquire()
            try:
                message = await self._socket.arecv()
            except pynng.Timeout:
                self._batch_slots.release()
                continue
            except pynng.Closed:
                self._batch_slots.release()
                return
            except pynng.NNGException as error:
                self._batch_slots.release()
                log.warning("connector %s: receive failed: %s", self.provider, type(error).__name__)
                await asyncio.sleep(0.1)
                continue
            try:
                batch = batch_decoder.decode(message)
            except (msgspec.DecodeError, msgspec.ValidationError):
                # Never log the message itself: it may hold card numbers.
                self.stats_.invalid_messages += 1
                self._batch_slots.release()
                log.warning("connector %s: dropped an undecodable message of %d bytes", self.provider, len(message))
                continue
            del message
            task = asyncio.create_task(self._process(batch))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._batches.discard(task)
        self._batch_slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("connector %s: a batch failed: %s", self.provider, type(task.exception()).__name__)

    async def _process(self, batch: AuthorizationBatch) -> None:
        self.stats_.batches += 1
        results = await asyncio.gather(*(self._authorize(item) for item in batch.items))
        del batch  # the cards are no longer needed
        by_shard: dict[int, list[RecordPspResult]] = {}
        for command in results:
            if command is not None:
                by_shard.setdefault(self._cluster.map.shard_for(command.merchant_id), []).append(command)
        await asyncio.gather(*(self._submit(shard, commands) for shard, commands in by_shard.items()))

    async def _submit(self, shard: int, commands: list[RecordPspResult]) -> None:
        try:
            reply = await self._cluster.shards[shard].submit(commands)
        except Exception as error:  # ShardUnavailable, nng errors: the payments fail by timeout in the engine
            self.stats_.submit_failed += len(commands)
            log.warning("connector %s: %d results not recorded on shard %d: %s", self.provider, len(commands),
                        shard, type(error).__name__)
            return
        if reply.status != 0:
            self.stats_.submit_failed += len(commands)
            log.warning("connector %s: shard %d refused %d results (status %d)", self.provider, shard,
                        len(commands), reply.status)
            return
        self.stats_.submitted += len(commands)

    # One authorization

    async def _authorize(self, item: Authorization) -> RecordPspResult | None:
        """Send one authorization, retrying what may be transient; the command to record, or None (202)."""
        self.stats_.sent += 1
        try:
            return await self._attempts(item)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug or a closed session: the payment fails rather than hangs
            failure = type(error).__name__
        self.stats_.failed += 1
        log.warning("connector %s: payment %s failed: %s", self.provider, item.payment_id, failure)
        return _error(item)

    async def _attempts(self, item: Authorization) -> RecordPspResult | None:
        body = _json_encoder.encode({
            "payment_id": item.payment_id,
            "merchant_id": item.merchant_id,
            "amount": item.amount,
            "currency": item.currency,
            "card": {"number": item.card.number, "exp_month": item.card.exp_month,
                     "exp_year": item.card.exp_year, "cvc": item.card.cvc},
            "capture": item.capture,
        })
        headers = {"Content-Type": "application/json", "Idempotency-Key": item.payment_id}
        url = f"{self.provider_url}/v1/authorizations"
        failure = "no answer"
        async with self._items:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats_.retried += 1
                    delay = min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                    await asyncio.sleep(delay * random.uniform(0.75, 1.25))
                try:
                    async with self._session.post(url, data=body, headers=headers) as response:
                        status = response.status
                        answer = await response.content.read(MAX_ERROR_BODY_BYTES) if status >= 400 else b""
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    failure = type(error).__name__
                    continue
                if status == 202:
                    # A retry of a request whose answer was lost is a 202 again, under the same reference
                    # (the provider keys authorizations by payment id), and no second callback follows.
                    self.stats_.accepted += 1
                    return None
                if status == 402:
                    self.stats_.declined += 1
                    return RecordPspResult(
                        merchant_id=item.merchant_id, payment_id=item.payment_id,
                        callback_id=f"cn_{item.payment_id}_{DECLINED}", result=DECLINED,
                        failure_code=_error_code(answer) or "card_declined")
                if status >= 500 or status == 429:
                    failure = f"HTTP {status}"
                    continue
                failure = f"HTTP {status}"  # another 4xx (409 payment_id_reused, 400): asking again will not help
                break
        self.stats_.failed += 1
        log.warning("connector %s: payment %s failed at the provider: %s", self.provider, item.payment_id, failure)
        return _error(item)


# An async actor: its loop runs the receive task; calls (ping, stats, stop) are few. It needs no CPU slot.
PaymentConnector = ray.remote(num_cpus=0, max_concurrency=8)(PaymentConnectorActor)


def spawn(provider: str, provider_url: str, listen_address: str, shard_addresses: list[list[str]],
          start_timeout_s: float = 60, **options) -> "ray.actor.ActorHandle":
    """The connector for `provider` (made now, or the one already running under its name), started.

    The actor is tied to the driver that made it (not detached): it stops with `paygate serve`. Blocks until it
    listens: call it at start-up, not from a request. Options: max_in_flight, retries, backoff_s.
    """
    handle = PaymentConnector.options(name=f"connector-{provider}", namespace=NAMESPACE,
                                      get_if_exists=True).remote(provider, provider_url, listen_address,
                                                                 shard_addresses, **options)
    ray.get(handle.start.remote(), timeout=start_timeout_s)
    return handle


def _error(item: Authorization) -> RecordPspResult:
    return RecordPspResult(
        merchant_id=item.merchant_id, payment_id=item.payment_id, callback_id=f"cn_{item.payment_id}_{ERROR}",
        result=ERROR, failure_code="processing_error", failure_message="the acquirer failed")


def _error_code(answer: bytes) -> str:
    try:
        error = msgspec.json.decode(answer).get("error")
    except (msgspec.DecodeError, AttributeError):
        return ""
    return error if isinstance(error, str) and error.isidentifier() and len(error) <= 64 else ""


def _configure_logging() -> None:
    """JSON lines on stderr (the worker's .err file in the Ray session's logs) for the paygate loggers."""
    paygate = logging.getLogger("paygate")
    if not paygate.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        paygate.addHandler(handler)
        paygate.setLevel(logging.INFO)
        paygate.propagate = False
