"""Prometheus metrics: requests by route and status, latency, shard batch sizes and queue depth, and the notifier's
deliveries by channel and outcome and its backlog (from the stats file it writes).

With several worker processes, PROMETHEUS_MULTIPROC_DIR (set by `paygate serve`)
makes each scrape sum what every worker counted.
"""

import os
import pathlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from actors.notifier_stats import read_stats

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MAX_LABEL_SETS = 4096


class NotifierCollector:
    """The notifier's latest stats as metrics, read at each scrape (none before it has written any)."""

    def __init__(self, data: pathlib.Path) -> None:
        self.data = data

    def collect(self):
        stats = read_stats(self.data)
        if stats is None:
            return
        deliveries = CounterMetricFamily("paygate_notifier_deliveries", "delivery attempts recorded since the "
                                         "notifier started, by channel and outcome", labels=["channel", "outcome"])
        for key, count in sorted(stats.outcomes.items()):
            deliveries.add_metric(key.split(".", 1), count)
        yield deliveries
        yield GaugeMetricFamily("paygate_notifier_backlog", "pending deliveries the notifier holds",
                                value=stats.backlog)
        yield GaugeMetricFamily("paygate_notifier_unrecorded", "attempt outcomes not yet recorded in the engine",
                                value=stats.unrecorded)
        latency = GaugeMetricFamily("paygate_notifier_delivery_latency_ms", "commit of an event to its delivery, "
                                    "over the latest deliveries", labels=["quantile"])
        latency.add_metric(["0.5"], stats.latency_p50_ms)
        latency.add_metric(["0.99"], stats.latency_p99_ms)
        yield latency


class Metrics:
    def __init__(self, data: pathlib.Path) -> None:
        # An own registry per app: tests run several apps in one process.
        self.registry = CollectorRegistry()
        self.requests = Counter("paygate_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("paygate_http_request_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.batch_commands = Histogram("paygate_shard_batch_commands", "commands per batch sent to a shard",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("paygate_shard_queue_items", "items waiting in a shard's queue", ["shard"],
                                 registry=self.registry, multiprocess_mode="mostrecent")
        self.notifier = CollectorRegistry()
        self.notifier.register(NotifierCollector(data))
        # Labelled children by (method, route, status): looked up once each, not at every request.
        self.children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self.children.get(key)
        if children is None:
            if len(self.children) >= MAX_LABEL_SETS:  # odd methods could otherwise grow it without end
                self.children.clear()
            children = self.children[key] = (self.requests.labels(method, route, str(status)),
                                             self.latency.labels(route))
        count, latency = children
        count.inc()
        latency.observe(seconds)

    async def response(self, gateway) -> web.Response:
        for index, status in enumerate(await gateway.statuses()):
            if not isinstance(status, BaseException):
                self.queue_depth.labels(str(index)).set(status.queue_items)
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry) + generate_latest(self.notifier)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
