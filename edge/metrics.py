"""Prometheus metrics: requests by route and status, latency, shard batch sizes and queue depth.

With several worker processes, PROMETHEUS_MULTIPROC_DIR (set by `paygate serve`)
makes each scrape sum what every worker counted.
"""

import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MAX_LABEL_SETS = 4096


class Metrics:
    def __init__(self) -> None:
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
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
