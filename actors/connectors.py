"""PSP connectors as Ray actors: one per provider, each running that provider's module of the connector interface
(actors/psp.py), so nothing here knows a provider's HTTP.

    edge ──nng push (one msgpack AuthorizationBatch per batch)──▶ PaymentConnector (Ray actor, nng pull)
                                                                     │ the provider's Connector, bounded concurrency
                                                                     ▼
                                                  provider: accepted → it calls the gateway back, signed
                                                            declined → RecordPspResult(declined) to the shard
                                                            failed (after the retries) → RecordPspResult(error)

    provider follower (actors/followers.py) ──one Ray call per batch──▶ follow_up: captures, voids, refunds, payouts
                                            ──one Ray call per batch──▶ settle_stuck: card payments near their
                                                                        processing deadline, asked about and settled

The card number and CVC exist here only in memory, between the nng message and the provider's request: they are
never logged, never journaled (only the RecordPspResult outcome is), and `CardData` refuses to be pickled, so it
cannot travel through Ray's object store or its spill files either. Nothing on the edge's hot path waits on Ray:
`ConnectorClient.send` is one non-blocking nng send that fails at once when no connector is connected.

A batch lost with a dying connector is not retried from here (the card number is nowhere durable to retry it
from): its payments are settled by the status query before their deadline, or fail by the engine's own timeout.

May import engine types, the journal client and ray; never the edge.
"""

import asyncio
import logging
import os

import msgspec
import pynng
import ray

from actors import psp
from actors.connector_wire import Authorization, AuthorizationBatch, batch_decoder
from actors.psp import Accepted, Declined, Failed, FollowUp, PaymentStatusQuery, PayoutRequest, StatusAnswer
from actors.runtime import die_with_parent
from engine.records import Outcome, RecordPspResult, authorization_transfer_id, payout_result
from journal.auth import load_key
from journal.client import Cluster
from journal.logs import JsonFormatter

NAMESPACE = "paygate"
REQUEST_TIMEOUT_S = 10.0
RECV_TIMEOUT_MS = 250  # how often the receive loop looks up to see whether it should stop
MAX_BATCHES_IN_FLIGHT = 16  # then the pull socket's buffer fills and the edge's sends fail (its 503)
RECV_BUFFER_MESSAGES = 64
AUTHORIZATION_HOLD_S = 7 * 86400
ERROR = "error"
# What a status query may settle a stuck payment as, as the engine names results.
SETTLING_STATUSES = (psp.AUTHORIZED, psp.DECLINED, psp.REQUIRES_ACTION)

log = logging.getLogger("paygate.actors.connectors")


# The actor


class _Stats(msgspec.Struct):
    batches: int = 0
    sent: int = 0  # authorizations sent to the provider (once each, whatever the retries)
    accepted: int = 0  # the provider will call back
    declined: int = 0
    failed: int = 0  # no usable answer after the retries
    submitted: int = 0  # RecordPspResult commands acknowledged by a shard
    submit_failed: int = 0  # RecordPspResult commands no shard took (the payment times out instead)
    invalid_messages: int = 0
    follow_ups: int = 0  # captures, voids, refunds and payouts sent
    refused: int = 0  # ...that the provider declined: logged for an operator, never retried
    follow_ups_failed: int = 0  # ...with no usable answer after the retries: logged for an operator
    status_queries: int = 0  # stuck payments asked about
    stuck_settled: int = 0  # stuck payments whose result a status query found and the engine took


class PaymentConnectorActor:
    """One provider's connector: authorizations from an nng pull socket (when it listens), follow-ups and status
    queries from the provider follower.

    Used as the Ray actor `PaymentConnector`. The class is importable under its own name, undecorated, so Ray
    pickles it (and its methods) by reference rather than by value.
    """

    def __init__(self, provider: str, provider_url: str, listen_address: str | None,
                 shard_addresses: list[list[str]], key_file: str, name: str = "", authorization_hold_s: int = AUTHORIZATION_HOLD_S,
                 max_in_flight: int = 64, retries: int = 3, backoff_s: float = 0.2) -> None:
        die_with_parent()
        configure_logging()
        self.name = name or provider
        self.provider_url = provider_url
        self.listen_address = listen_address
        self.shard_addresses = shard_addresses
        self.key = load_key(key_file, f"connector {self.name}")
        self.authorization_hold_s = authorization_hold_s
        self.connector = psp.make(provider, psp.ConnectorSettings(
            url=provider_url, request_timeout_s=REQUEST_TIMEOUT_S, retries=retries, backoff_s=backoff_s,
            max_in_flight=max_in_flight))
        self.stats_ = _Stats()
        self._socket: pynng.Pull0 | None = None
        self._cluster: Cluster | None = None
        self._receiver: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()
        self._stopping = False

    async def start(self) -> str:
        """Connect to the shards and the provider, and listen if it has an address; again is harmless."""
        if self._cluster is not None:
            return self.ping()
        if self.listen_address:
            socket = pynng.Pull0(recv_timeout=RECV_TIMEOUT_MS, recv_buffer_size=RECV_BUFFER_MESSAGES)
            try:
                socket.listen(self.listen_address)
            except pynng.NNGException:
                socket.close()
                raise
            self._socket = socket
        self._stopping = False
        self._batch_slots = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self._cluster = Cluster(self.shard_addresses, key=self.key)
        await self.connector.start()
        if self._socket is not None:
            self._receiver = asyncio.create_task(self._receive())
        log.info("connector %s %s for %s", self.name,
                 f"listening on {self.listen_address}" if self.listen_address else "ready", self.provider_url)
        return self.ping()

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> str:
        if self._receiver is not None and not self._receiver.done():
            state = f"listening on {self.listen_address}"
        else:
            state = "ready" if self._cluster is not None and not self._stopping else "stopped"
        return f"connector-{self.name} {state}"

    def stats(self) -> dict:
        """The counts below, `retried` (extra attempts, for every kind of request) and `batches_in_flight`."""
        return {**msgspec.structs.asdict(self.stats_), "retried": self.connector.retried,
                "batches_in_flight": len(self._batches)}

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
        await self.connector.close()
        return self.stats()

    # Follow-ups and stuck payments (called by the provider follower, one call per batch)

    async def follow_up(self, requests: list[FollowUp]) -> list[psp.Verdict]:
        """Send each request to the provider: in order for one payment (or payout), side by side for different ones.

        A refusal or a failure after the retries is logged for an operator and answered; it is never retried here. A
        payout (or withdrawal) refused is recorded failed; one with no usable answer stays pending for the operator.
        """
        verdicts: list = [None] * len(requests)
        lanes: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            lanes.setdefault(psp.subject(request), []).append(index)

        async def run_lane(indexes: list[int]) -> None:
            for index in indexes:
                verdicts[index] = await self._follow_up(requests[index])

        await asyncio.gather(*(run_lane(indexes) for indexes in lanes.values()))
        # A payout the provider refused outright was never sent: it fails, and its hold goes back where it was.
        await self._record([payout_result(request.merchant_id, request.payout_id,
                                          f"cn_{request.payout_id}_{psp.DECLINED}", False, verdict.code)
                            for request, verdict in zip(requests, verdicts)
                            if type(request) is PayoutRequest and type(verdict) is Declined])
        return verdicts

    async def _follow_up(self, request: FollowUp) -> psp.Verdict:
        self.stats_.follow_ups += 1
        verdict = await _safely(self.connector.follow_up(request))
        operation = request.__struct_config__.tag
        if type(verdict) is Declined:
            self.stats_.refused += 1
            log.error("connector %s: the provider refused the %s of %s (merchant %s): %s %s", self.name, operation,
                      psp.subject(request), request.merchant_id, verdict.code, verdict.message)
        elif type(verdict) is Failed:
            self.stats_.follow_ups_failed += 1
            log.error("connector %s: the %s of %s (merchant %s) did not reach the provider: %s", self.name,
                      operation, psp.subject(request), request.merchant_id, verdict.reason)
        return verdict

    async def settle_stuck(self, queries: list[PaymentStatusQuery]) -> None:
        """Card payments still open near their deadline: a decisive answer of the acquirer (authorized, declined,
        requires_action) becomes the payment's result, so a lost callback costs nothing. An undecided, unknown or
        missing answer changes nothing: the engine fails the payment at its deadline, and the provider follower
        then has it voided. Each result has one callback id, so settling twice changes nothing."""
        answers = await asyncio.gather(*(_safely(self.connector.status(query)) for query in queries))
        self.stats_.status_queries += len(queries)
        commands = [_settlement(query, answer, self.authorization_hold_s) for query, answer in zip(queries, answers)
                    if type(answer) is StatusAnswer and answer.status in SETTLING_STATUSES]
        outcomes = await self._record(commands)
        self.stats_.stuck_settled += sum(outcome is not None and outcome.code == "ok" for outcome in outcomes)

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
                log.warning("connector %s: receive failed: %s", self.name, type(error).__name__)
                await asyncio.sleep(0.1)
                continue
            opened = self.key.open(message)
            if opened is None:  # not from the edge: nothing decoded (the key logs it)
                self.stats_.invalid_messages += 1
                self._batch_slots.release()
                continue
            message = opened
            try:
                batch = batch_decoder.decode(message)
            except (msgspec.DecodeError, msgspec.ValidationError):
                # Never log the message itself: it may hold card numbers.
                self.stats_.invalid_messages += 1
                self._batch_slots.release()
                log.warning("connector %s: dropped an undecodable message of %d bytes", self.name, len(message))
                continue
            del message
            task = asyncio.create_task(self._process(batch))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._batches.discard(task)
        self._batch_slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("connector %s: a batch failed: %s", self.name, type(task.exception()).__name__)

    async def _process(self, batch: AuthorizationBatch) -> None:
        self.stats_.batches += 1
        results = await asyncio.gather(*(self._authorize(item) for item in batch.items))
        del batch  # the cards are no longer needed
        await self._record([command for command in results if command is not None])

    async def _authorize(self, item: Authorization) -> RecordPspResult | None:
        """Send one authorization; the command to record, or None when the provider will call back."""
        self.stats_.sent += 1
        verdict = await _safely(self.connector.authorize(item))
        if type(verdict) is Accepted:
            self.stats_.accepted += 1
            return None
        if type(verdict) is Declined:
            self.stats_.declined += 1
            return RecordPspResult(
                merchant_id=item.merchant_id, payment_id=item.payment_id,
                callback_id=f"cn_{item.payment_id}_{psp.DECLINED}", result=psp.DECLINED,
                failure_code=verdict.code or "card_declined", failure_message=verdict.message)
        self.stats_.failed += 1
        log.warning("connector %s: payment %s failed at the provider: %s", self.name, item.payment_id, verdict.reason)
        return RecordPspResult(
            merchant_id=item.merchant_id, payment_id=item.payment_id, callback_id=f"cn_{item.payment_id}_{ERROR}",
            result=ERROR, failure_code="processing_error", failure_message="the acquirer failed")

    async def _record(self, commands: list) -> list[Outcome | None]:
        """Submit the results (a payment's, a payout's), one batch per shard; each one's outcome, or None where no
        shard took it (a payment then fails by the engine's own timeout)."""
        outcomes: list[Outcome | None] = [None] * len(commands)
        by_shard: dict[int, list[int]] = {}
        for index, command in enumerate(commands):
            by_shard.setdefault(self._cluster.map.shard_for(command.merchant_id), []).append(index)

        async def submit(shard: int, indexes: list[int]) -> None:
            try:
                reply = await self._cluster.shards[shard].submit([commands[index] for index in indexes])
            except Exception as error:  # ShardUnavailable, nng errors
                reply, problem = None, type(error).__name__
            else:
                problem = f"status {reply.status}"
            if reply is None or reply.status != 0:
                self.stats_.submit_failed += len(indexes)
                log.warning("connector %s: %d results not recorded on shard %d: %s", self.name, len(indexes), shard,
                            problem)
                return
            self.stats_.submitted += len(indexes)
            for index, outcome in zip(indexes, reply.results):
                outcomes[index] = outcome

        await asyncio.gather(*(submit(shard, indexes) for shard, indexes in by_shard.items()))
        return outcomes


def _settlement(query: PaymentStatusQuery, answer: StatusAnswer, authorization_hold_s: int) -> RecordPspResult:
    return RecordPspResult(
        merchant_id=query.merchant_id, payment_id=query.payment_id,
        callback_id=f"status_{query.payment_id}_{answer.status}", result=answer.status,
        psp_reference=answer.psp_reference, action_url=answer.action_url, failure_code=answer.failure_code,
        failure_message=answer.failure_message, transfer_id=authorization_transfer_id(query.merchant_id, query.payment_id),
        hold_timeout_s=authorization_hold_s)


async def _safely(call):
    """The call's answer; Failed if it raised (a bug or a closed session)."""
    try:
        return await call
    except asyncio.CancelledError:
        raise
    except Exception as error:
        return Failed(type(error).__name__)


# An async actor: its loop runs the receive task; calls (follow-ups, status queries, ping, stats, stop) are few,
# one per batch. It needs no CPU slot.
PaymentConnector = ray.remote(num_cpus=0, max_concurrency=8)(PaymentConnectorActor)


def actor_name(name: str) -> str:
    return f"connector-{name}"


def spawn(provider: str, provider_url: str, listen_address: str | None, shard_addresses: list[list[str]],
          key_file: str, start_timeout_s: float = 60, **options) -> "ray.actor.ActorHandle":
    """The connector for `provider` (a name in actors.psp.CONNECTORS), made now or the one already running under its
    name, started.

    `listen_address` None: no authorizations (a provider for payouts). The actor is tied to the driver that made it
    (not detached): it stops with `paygate serve`. Blocks until it is ready: call it at start-up, not from a
    request. Options: name (the actor's, default the provider's), authorization_hold_s, max_in_flight, retries,
    backoff_s.
    """
    name = options.get("name") or provider
    handle = PaymentConnector.options(name=actor_name(name), namespace=NAMESPACE, get_if_exists=True).remote(
        provider, provider_url, listen_address, shard_addresses, key_file, **options)
    ray.get(handle.start.remote(), timeout=start_timeout_s)
    return handle


def configure_logging() -> None:
    """JSON lines on stderr (the worker's .err file in the Ray session's logs) for the paygate loggers."""
    paygate = logging.getLogger("paygate")
    if not paygate.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        paygate.addHandler(handler)
        paygate.setLevel(logging.INFO)
        paygate.propagate = False
