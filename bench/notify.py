"""Notification benchmark: webhooks delivered while the payment mix runs, to a receiver that fails a share of them.

`python -m bench.notify [--users N] [--duration S] [--fail-share F] [--retry-schedule S,...]` starts a loopback
webhook receiver (aiohttp, in this process: it answers 503 to `--fail-share` of the requests at random, 2xx to the
rest, and notes when each event id first got a 2xx) and `paygate serve` with its actors (temporary data folder,
free loopback ports, no dashboard, `--webhook-retry-schedule` short enough that a failed delivery is retried within
the run), creates one premium merchant per locust user whose `webhook_url` is the receiver, and runs
bench/locustfile.py's payment mix (order-and-wallet and card users, no batch users) for `--duration` seconds. Every
second it notes the notifier's backlog (its stats file). Then it waits (at most `--drain-s`) for the notifier to
hold nothing, and lists every merchant's events through GET /v1/events.

The RESULT line: `deliveries_per_s` is the receiver's first 2xx answers per second over the load;
`delivery_p50_ms` / `delivery_p99_ms` are from an event's commit (its `created`, to the millisecond) to the first
2xx the receiver gave for it; `backlog_end` is the notifier's backlog when the load stopped; `lost` is the events of
GET /v1/events the receiver never answered 2xx to once the run drained. Rows: the backlog over time, the receiver's
answers, locust's request counts.
"""

import argparse
import asyncio
import datetime
import pathlib
import random
import sys
import tempfile
import threading
import time

import orjson
from aiohttp import web

from actors.notifier_stats import read_stats
from bench.http import LOCUSTFILE, run_headless_locust
from bench.report import OUT, Report
from bench.server import HOST, PaygateServer, free_port

SAMPLE_S = 1.0


class Receiver:
    """The merchants' endpoint, on its own thread and event loop."""

    def __init__(self, fail_share: float, seed: int) -> None:
        self.fail_share = fail_share
        self.rng = random.Random(seed)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/hook"
        self.first_ok: dict[str, float] = {}  # event id -> unix time of its first 2xx
        self.created: dict[str, float] = {}  # event id -> its `created`, unix time
        self.answered = {"ok": 0, "failed": 0, "repeated": 0}
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.rng.random() < self.fail_share:
            self.answered["failed"] += 1
            return web.Response(status=503)
        event = orjson.loads(body)
        if event["id"] in self.first_ok:
            self.answered["repeated"] += 1
        else:
            self.first_ok[event["id"]] = time.time()
            created = datetime.datetime.fromisoformat(event["created"].replace("Z", "+00:00"))
            self.created[event["id"]] = created.timestamp()
        self.answered["ok"] += 1
        return web.Response(text="ok")

    def start(self) -> "Receiver":
        threading.Thread(target=self._serve, daemon=True).start()
        if not self.ready.wait(10):
            raise RuntimeError("the webhook receiver did not start")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, HOST, self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def latencies_ms(self) -> list[float]:
        return sorted(1000 * (self.first_ok[event_id] - self.created[event_id]) for event_id in self.first_ok)


def create_merchants(server: PaygateServer, count: int, webhook_url: str) -> list[str]:
    keys = []
    for number in range(count):
        status, body = server.request("POST", "/v1/merchants", {
            "name": f"Notify bench merchant {number}", "email": f"notify{number}@example.com", "tier": "premium",
            "webhook_url": webhook_url}, key=server.admin_token)
        if status != 200:
            raise RuntimeError(f"creating merchant {number}: HTTP {status} {body}")
        keys.append(body["api_key"])
    return keys


def event_ids(server: PaygateServer, keys: list[str]) -> set[str]:
    """Every event of every merchant, through GET /v1/events (newest first, 100 a page)."""
    found = set()
    for key in keys:
        after = ""
        while True:
            status, page = server.request("GET", f"/v1/events?limit=100{after}", key=key)
            if status != 200:
                raise RuntimeError(f"listing events: HTTP {status} {page}")
            found.update(event["id"] for event in page["data"])
            if not page["has_more"] or not page["data"]:
                break
            after = f"&starting_after={page['data'][-1]['id']}"
    return found


def run_load(args, server: PaygateServer, folder: pathlib.Path, keys: list[str], report: Report) -> int:
    """The payment mix, with the notifier's backlog noted every second; the backlog when the load stopped."""
    keys_file = folder / "merchants.json"
    keys_file.write_bytes(orjson.dumps({"keys": keys, "admin_token": server.admin_token}))
    environment = {"PAYGATE_BENCH_MERCHANTS": str(keys_file), "PAYGATE_BENCH_BATCH_USERS": "0",
                   "PAYGATE_BENCH_CHECKOUTS_PER_S": str(args.checkouts_per_s),
                   "PAYGATE_BENCH_LATENCY_FILE": str(folder / "latency.json")}
    options = ["-u", str(args.users), "-r", str(args.users), "--host", server.url]
    stop = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not stop.wait(SAMPLE_S):
            stats = read_stats(server.data)
            if stats is not None:
                report.row(at_s=round(time.monotonic() - started), backlog=stats.backlog,
                           delivered_total=stats.delivered_total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        exit_code, _ = run_headless_locust(LOCUSTFILE, "notify", options, environment, [server.process.pid],
                                           args.duration, 3)
    finally:
        stop.set()
        sampler.join()
    report.row(locust_exit_code=exit_code)
    stats = read_stats(server.data)
    return stats.backlog if stats is not None else -1


def drain(server: PaygateServer, timeout_s: float) -> None:
    """Until the notifier holds nothing and has recorded everything (two readings a second apart), or timeout."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        stats = read_stats(server.data)
        quiet = quiet + 1 if stats is not None and stats.backlog == 0 and stats.unrecorded == 0 else 0
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20, help="payment-mix users, one merchant each")
    parser.add_argument("--checkouts-per-s", type=float, default=2.0, help="per user")
    parser.add_argument("--duration", type=int, default=30, help="seconds locust runs")
    parser.add_argument("--fail-share", type=float, default=0.05, help="share of requests the receiver fails")
    parser.add_argument("--retry-schedule", default="0.25,0.5,1,2,4,8", help="serve's --webhook-retry-schedule")
    parser.add_argument("--drain-s", type=float, default=60, help="longest wait for the backlog to empty")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.users < 1 or not 0 <= args.fail_share < 1 or args.duration < 10:
        parser.error("need --users >= 1, 0 <= --fail-share < 1 and --duration >= 10")
    report = Report("notify")
    report.row(users=args.users, checkouts_per_s_per_user=args.checkouts_per_s, duration_s=args.duration,
               fail_share=args.fail_share, retry_schedule=args.retry_schedule)
    OUT.mkdir(exist_ok=True)
    receiver = Receiver(args.fail_share, args.seed).start()
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as temporary:
        folder = pathlib.Path(temporary)
        rules = folder / "risk_rules.json"  # limits no bench user reaches (each pays again and again with one card)
        rules.write_bytes(orjson.dumps({"velocity": {kind: {"attempts": 10**9, "window_s": 600}
                                                     for kind in ("card_fingerprint", "ip", "customer", "email")}}))
        server = PaygateServer(folder / "data", workers=2, extra=(
            "--order-ip-limit", "100000000", "--no-dashboard", "--risk-rules", str(rules),
            "--webhook-retry-schedule", args.retry_schedule))
        try:
            server.start()
            keys = create_merchants(server, args.users, receiver.url)
            delivered_before = receiver.answered["ok"]
            load_started = time.monotonic()
            backlog_end = run_load(args, server, folder, keys, report)
            load_s = time.monotonic() - load_started
            delivered_during = receiver.answered["ok"] - delivered_before
            drain(server, args.drain_s)
            events = event_ids(server, keys)
        finally:
            exit_code = server.stop()
            if exit_code:
                print(f"warning: paygate serve exited with {exit_code}; its last output:\n"
                      + "".join(server.output[-20:]), file=sys.stderr, flush=True)
    latencies = receiver.latencies_ms()
    report.row(events=len(events), received=len(receiver.first_ok), **receiver.answered)
    report.result(
        deliveries_per_s=round(delivered_during / load_s, 1),
        delivery_p50_ms=round(latencies[len(latencies) // 2]) if latencies else 0,
        delivery_p99_ms=round(latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]) if latencies else 0,
        backlog_end=backlog_end,
        lost=len(events - receiver.first_ok.keys()),
    )


if __name__ == "__main__":
    main()
