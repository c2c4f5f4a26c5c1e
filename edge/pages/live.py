"""Live status for open pages, as server-sent events.

Each worker reads the orders its open pages watch (and each order's latest payment) from their shards every
POLL_INTERVAL_S, all of them in one coalesced read per shard, and tells each page's stream when its order changed.
Reading the shards, rather than hearing of a callback where it lands, lets a page on any worker see a change that
another worker took in. Everything is bounded: streams per worker, their lifetime, one pending state per stream.
"""

import asyncio
import contextlib
import logging

import msgspec
from aiohttp import web

from edge.errors import ApiError
from edge.gateway import ShardBusy
from edge.limits import client_ip
from edge.pages.common import secure
from engine.queries import GetOrder, GetPaymentRecord
from engine.records import Order, Payment

log = logging.getLogger("paygate.edge")
POLL_INTERVAL_S = 0.5
MAX_STREAMS = 1000  # per worker
MAX_STREAMS_PER_CLIENT = 32  # per client address and worker: one address cannot take every stream of a worker
STREAM_LIFETIME_S = 600  # then the browser's EventSource connects again (it says since when with Last-Event-ID)
HEARTBEAT_S = 15
RETRY_MS = 2000  # how soon a browser reconnects a stream that ended


class OrderState(msgspec.Struct, frozen=True):
    """An order as a page shows it: the order and its latest payment attempt."""

    order: Order
    payment: Payment | None

    @property
    def version(self) -> str:
        """Changes whenever anything a page shows of the order or its payment does."""
        order, payment = self.order, self.payment
        return (f"{order.status}.{order.updated_at}.{order.amount_refunded}" +
                (f".{payment.id}.{payment.status}.{payment.updated_at}" if payment else ""))


async def read_state(gateway, order: Order) -> OrderState:
    """The order with its latest payment."""
    payment = None
    if order.payment_id:
        payment = (await gateway.read(order.merchant_id, GetPaymentRecord(order.merchant_id, "payment",
                                                                          order.payment_id))).record
    return OrderState(order, payment)


class _Watch:
    def __init__(self) -> None:
        self.state: OrderState | None = None
        self.listeners: set[asyncio.Queue] = set()
        # Joined since the last read: they get the next state read, changed or not (a state read before they joined
        # may be older than what their page shows).
        self.joined: set[asyncio.Queue] = set()


class LiveStatus:
    """This worker's watched orders, (merchant id, order id) -> the listeners' queues (each holds the latest state)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.watches: dict[tuple[str, str], _Watch] = {}
        self.streams = 0
        self.streams_by_client: dict[str, int] = {}  # only clients with a stream open: at most MAX_STREAMS keys
        self.wanted = asyncio.Event()  # set while something is watched: an idle worker reads nothing
        self.closing = False

    @contextlib.contextmanager
    def listening(self, merchant_id: str, order_id: str, client: str):
        """A queue that receives the order's state when it changes (and the first state read after it joined)."""
        if self.closing or self.streams >= MAX_STREAMS:
            raise ApiError(503, "too_many_streams", "too many live pages are open; retry shortly",
                           headers={"Retry-After": "5"})
        if self.streams_by_client.get(client, 0) >= MAX_STREAMS_PER_CLIENT:
            raise ApiError(429, "rate_limited", "too many live pages are open from this address",
                           headers={"Retry-After": "5"})
        key = (merchant_id, order_id)
        watch = self.watches.setdefault(key, _Watch())
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        watch.listeners.add(queue)
        watch.joined.add(queue)
        self.streams += 1
        self.streams_by_client[client] = self.streams_by_client.get(client, 0) + 1
        self.wanted.set()
        try:
            yield queue
        finally:
            self.streams -= 1
            if (left := self.streams_by_client.pop(client) - 1) > 0:
                self.streams_by_client[client] = left
            watch.listeners.discard(queue)
            watch.joined.discard(queue)
            if not watch.listeners:
                self.watches.pop(key, None)
            if not self.watches:
                self.wanted.clear()

    async def poll_forever(self) -> None:
        while not self.closing:
            await self.wanted.wait()
            try:
                await self.poll()
            except ShardBusy as error:  # a shard away for a moment: its pages wait for the next round
                log.info("live status: %s", error)
            except Exception:  # a bug in one round must not end live status for the worker
                log.exception("live status: a round failed")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def poll(self) -> None:
        gateway = self.app["gateway"]
        keys = list(self.watches)
        # Only pages that were listening before these reads began are sure to get a state no older than they show;
        # those that joined later get the next round's.
        listening = {key: (set(watch.listeners), set(watch.joined)) for key, watch in self.watches.items()}
        # Read side by side: the gateway sends reads made together to a shard as one request.
        orders = await asyncio.gather(*(gateway.read(merchant_id, GetOrder(merchant_id, order_id))
                                        for merchant_id, order_id in keys))
        found = [answer.record for answer in orders if answer.record is not None]
        states = await asyncio.gather(*(read_state(gateway, order) for order in found))
        for state in states:
            key = (state.order.merchant_id, state.order.id)
            watch = self.watches.get(key)
            if watch is None:
                continue
            present, joined = listening.get(key, (set(), set()))
            changed = watch.state is None or watch.state.version != state.version
            watch.state = state
            for queue in (present if changed else joined) & watch.listeners:
                _replace(queue, state)
            watch.joined -= joined

    def close(self) -> None:
        """Every stream ends (the worker is stopping)."""
        self.closing = True
        self.wanted.set()
        for watch in self.watches.values():
            for queue in watch.listeners:
                _replace(queue, None)


def _replace(queue: asyncio.Queue, item) -> None:
    """The queue holds the latest item only: a slow page skips states it never showed."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


async def run_live_status(app: web.Application):
    """aiohttp cleanup context: the polling task, while the worker runs."""
    live = app["live_status"] = LiveStatus(app)
    task = asyncio.get_running_loop().create_task(live.poll_forever())
    yield
    live.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def close_streams(app: web.Application) -> None:
    """on_shutdown: open streams end now, so stopping the worker does not wait for them."""
    app["live_status"].close()


def event(name: str, data: str, event_id: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {name}\nid: {event_id}\n{lines}\n".encode()


async def stream(request: web.Request, merchant_id: str, order_id: str, since: str, fragment) -> web.StreamResponse:
    """Server-sent events: `status` with `await fragment(state)` (HTML) each time the order's state differs from the
    one the page shows (`since`, or the browser's Last-Event-ID after a reconnect)."""
    since = request.headers.get("Last-Event-ID", since)[:200]
    response = secure(web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}))
    loop = asyncio.get_running_loop()
    client = client_ip(request.remote, request.headers.get("X-Forwarded-For"), request.app["settings"].trusted_proxies)
    with request.app["live_status"].listening(merchant_id, order_id, client) as updates:
        await response.prepare(request)
        ends_at = loop.time() + STREAM_LIFETIME_S
        try:
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            while (remaining := ends_at - loop.time()) > 0:
                try:
                    state = await asyncio.wait_for(updates.get(), min(HEARTBEAT_S, remaining))
                except TimeoutError:
                    await response.write(b": still here\n\n")
                    continue
                if state is None:
                    break
                if state.version != since:
                    since = state.version
                    await response.write(event("status", await fragment(state), since))
        except ConnectionResetError:  # the page was closed
            pass
        except (ApiError, ShardBusy) as error:  # the stream ends; the browser connects again in RETRY_MS
            log.info("live status of %s ended: %s", order_id, error)
    return response
