"""HTTP benchmark: requests per second and latency through `paygate serve`, with locust as the load.

`python -m bench.http [--users N] [--batch-users N] [--duration S] ...` starts
`paygate serve` (temporary data folder, free loopback ports, `--workers 2`,
`--order-ip-limit 100000000` so that the per-IP order limit does not throttle
the load; with its Ray runtime (no dashboard) and actors unless `--without-actors`, and
risk velocity limits no user reaches, since each pays again with one card),
creates one premium merchant per locust user through the admin API
(POST /v1/merchants), then runs locust headless in its own process on
bench/locustfile.py:

- order-and-wallet users (`--users`, default 80): each has its own customer
  with a funded wallet and checks out at `--checkouts-per-s` (5) per user,
  three requests each: POST /v1/orders, POST /v1/payments, GET /v1/orders/{id};
- batch-transfer users (`--batch-users`, default 2): each posts arrays of
  `--batch-size` (1000) transfers between two accounts to POST /v1/transfers,
  at most `--batches-per-s` (10) per user.

The batch endpoint's own figure comes from a batch-only run with enough users
to keep the shard busy while the edge parses the next batches:
`python -m bench.http --without-actors --users 0 --batch-users 8
--batch-size 8190 --batches-per-s 50`.

Why one merchant per user, paced: the per-merchant token bucket (premium:
1000/min, burst 2000) is the product's limit and stays on. One user at 15
requests/s stays under a premium merchant's 16.7/s, so a run of any length
measures the server, not the bucket; more load means more merchants.

Statistics are reset once all users are spawned (`--reset-stats`), so set-up
requests and the ramp are left out. Rows: each request name (from locust's
CSV), failures by error, the CPU each process used during the steady part of
the run (2 cores = 200%), the ledger's double-entry check after the run, and each
route's latency as the edge itself measured it (its Prometheus histogram, so
bucket bounds: "at most"; the scrape is kept in bench/out/http_metrics.txt). The
RESULT line: `requests_per_s` is successful single requests per second over
all single-request names; `p50_ms` / `p99_ms` are over their merged histogram
(locust's 1 ms buckets); `batch_transfers_per_s` is successful batch requests
per second times `--batch-size`. locust's own CSV and HTML report are in
bench/out/ (http_stats.csv, http.html), its log in bench/out/http_locust.log.
"""

import argparse
import csv
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.names import BATCH, CAPTURE, SETUP

from bench.report import OUT, Report
from bench.server import ROOT, PaygateServer

LOCUSTFILE = pathlib.Path(__file__).resolve().parent / "locustfile.py"
CPU_SAMPLE_S = 1.0


def role_of(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    for marker, role in (("locust", "locust"), ("edge.server", "edge"), ("journal.shard", "shard"),
                         ("edge.cli", "supervisor"), ("ray", "ray"), ("actors.simulators.", "providers"),
                         ("ceiling_app", "app")):
        if marker in command:
            return role
    return "other"


class CpuSampler:
    """CPU seconds used so far by each process of the run, sampled while locust runs."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = [psutil.Process(pid) for pid in roots]
        self.processes: dict[int, tuple[psutil.Process, str]] = {}
        self.samples: list[tuple[float, dict[str, float], float]] = []  # time, role -> cpu s, machine idle s

    def _discover(self) -> None:
        """Processes started since the last sample (locust forks its workers as it starts)."""
        for root in self.roots:
            try:
                found = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for process in found:
                if process.pid not in self.processes:
                    self.processes[process.pid] = (process, role_of(process))

    def sample(self) -> None:
        self._discover()
        used: dict[str, float] = {}
        for process, role in self.processes.values():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            used[role] = used.get(role, 0.0) + times.user + times.system
        self.samples.append((time.monotonic(), used, psutil.cpu_times().idle))

    def percent(self, start: float, end: float) -> dict[str, float]:
        """Each role's CPU between the first sample at or after `start` and the last at or before `end` (100 = a core)."""
        window = [sample for sample in self.samples if start <= sample[0] <= end]
        if len(window) < 2:
            window = self.samples[-2:] if len(self.samples) >= 2 else []
        if not window:
            return {}
        (began, first, idle_first), (ended, last, idle_last) = window[0], window[-1]
        elapsed = ended - began
        figures = {f"cpu_{role}_pct": round(100 * (last[role] - first.get(role, 0.0)) / elapsed)
                   for role in sorted(last)}
        idle = 100 * (idle_last - idle_first) / elapsed
        mine = sum(100 * (last[role] - first.get(role, 0.0)) / elapsed for role in last)
        figures["cpu_idle_pct"] = round(idle)
        # whatever else ran on the machine meanwhile (a benchmark wants this near 0)
        figures["cpu_others_pct"] = max(0, round(100 * (os.cpu_count() or 1) - idle - mine))
        figures["cpu_window_s"] = round(elapsed, 1)
        return figures


def run_headless_locust(locustfile: pathlib.Path, name: str, options: list[str], environment: dict[str, str],
                        watched_pids: list[int], duration_s: int, ramp_s: float) -> tuple[int, dict[str, float]]:
    """Run locust headless on `locustfile` for `duration_s` with `options` (users, host, ...), its CSVs and log
    under bench/out/ as `name`_*; its exit code, and the CPU of each process role (locust's and those of
    `watched_pids`) over the steady part, after `ramp_s`."""
    command = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-t", f"{duration_s}s",
               "--csv", str(OUT / name), "--reset-stats", "--only-summary", "--stop-timeout", "0", *options]
    log_path = OUT / f"{name}_locust.log"
    with open(log_path, "w") as log:
        locust = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **environment})
        started = time.monotonic()
        try:
            time.sleep(0.5)  # let locust start before listing processes
            sampler = CpuSampler([*watched_pids, locust.pid])
            deadline = started + duration_s + 120
            while locust.poll() is None:
                sampler.sample()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"locust ran past its {duration_s} s limit; see {log_path}")
                time.sleep(CPU_SAMPLE_S)
        finally:
            if locust.poll() is None:
                locust.kill()
                locust.wait()
    # locust exits 1 when any request failed; the failures are reported from its CSV, the figures stand
    if locust.returncode not in (0, 1) or not (OUT / f"{name}_stats.csv").exists():
        raise RuntimeError(f"locust exited with {locust.returncode}; see {log_path}:\n"
                           + "".join(log_path.read_text().splitlines(keepends=True)[-30:]))
    return locust.returncode, sampler.percent(started + ramp_s, started + duration_s - 1)


def run_locust(args, server: PaygateServer, keys_file: pathlib.Path, latency_file: pathlib.Path,
               report: Report) -> dict[str, float]:
    """Run locust headless to its time limit; the CPU figures of its steady part."""
    users = args.users + args.batch_users
    options = ["-u", str(users), "-r", str(args.spawn_rate), "--host", server.url, "--html", str(OUT / "http.html")]
    environment = {
        "PAYGATE_BENCH_MERCHANTS": str(keys_file),
        "PAYGATE_BENCH_LATENCY_FILE": str(latency_file),
        "PAYGATE_BENCH_CHECKOUTS_PER_S": str(args.checkouts_per_s),
        "PAYGATE_BENCH_BATCHES_PER_S": str(args.batches_per_s),
        "PAYGATE_BENCH_BATCH_SIZE": str(args.batch_size),
        "PAYGATE_BENCH_BATCH_USERS": str(args.batch_users),
        "PAYGATE_BENCH_SINGLE_USERS": "1" if args.users else "0",
        "PAYGATE_BENCH_CARD_USERS": "0" if args.without_actors else "1",
    }
    exit_code, cpu = run_headless_locust(LOCUSTFILE, "http", options, environment, [server.process.pid],
                                         args.duration, users / args.spawn_rate + 2)
    report.row(locust_exit_code=exit_code, locust_log=str((OUT / "http_locust.log").relative_to(ROOT)))
    return cpu


def percentile(histogram: list[tuple[int, int]], count: int, fraction: float) -> int:
    """Locust's percentile over a merged histogram of 1 ms buckets."""
    wanted = int(count * fraction)
    processed = 0
    for milliseconds, hits in sorted(histogram, reverse=True):
        processed += hits
        if count - processed <= wanted:
            return milliseconds
    return 0


def read_stats(report: Report) -> tuple[float, float, float]:
    """Per-name rows from locust's CSV; successful single requests/s, batches/s and card captures/s."""
    single_per_s = batches_per_s = captures_per_s = 0.0
    with open(OUT / "http_stats.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row["Name"] == "Aggregated":
                continue
            requests, failures = int(row["Request Count"]), int(row["Failure Count"])
            per_s = float(row["Requests/s"])
            successful_per_s = per_s * (requests - failures) / requests if requests else 0.0
            report.row(request=f"{row['Name']}", requests=requests, failures=failures,
                       requests_per_s=round(per_s, 1), p50_ms=row["50%"], p99_ms=row["99%"],
                       max_ms=round(float(row["Max Response Time"])),
                       average_ms=round(float(row["Average Response Time"]), 1))
            if row["Name"] == CAPTURE:
                captures_per_s += successful_per_s
            if row["Name"].endswith(BATCH):
                batches_per_s += successful_per_s
            elif not row["Name"].endswith(SETUP):
                single_per_s += successful_per_s
    failures_path = OUT / "http_failures.csv"
    if failures_path.exists():
        with open(failures_path, newline="") as file:
            for row in csv.DictReader(file):
                report.row(failed_request=row["Name"], occurrences=row["Occurrences"],
                           error=" ".join(row["Error"].split())[:240])
    return single_per_s, batches_per_s, captures_per_s


def report_server_latency(server: PaygateServer, report: Report) -> None:
    """Each route's latency as the edge measured it (handler start to response, from its Prometheus histogram):
    set beside locust's figures, it shows how much of a response time was spent waiting outside paygate."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    (OUT / "http_metrics.txt").write_text(text)
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "paygate_http_request_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.labels["route"], []).append((float(sample.labels["le"]), sample.value))
    for route, counts in sorted(buckets.items()):
        counts.sort()
        total = counts[-1][1]
        if total:
            report.row(server_route=route, requests=round(total), server_p50_ms_at_most=_bucket_ms(counts, 0.50 * total),
                       server_p99_ms_at_most=_bucket_ms(counts, 0.99 * total))


def _bucket_ms(counts: list[tuple[float, float]], wanted: float) -> float:
    """The upper bound (ms) of the first cumulative bucket holding `wanted` requests."""
    return next(bound for bound, count in counts if count >= wanted) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=80, help="order-and-wallet users (3 requests per checkout)")
    parser.add_argument("--batch-users", type=int, default=2, help="batch-transfer users")
    parser.add_argument("--duration", type=int, default=30, help="seconds locust runs, ramp included")
    parser.add_argument("--spawn-rate", type=float, default=100, help="users started per second")
    parser.add_argument("--checkouts-per-s", type=float, default=5.0, help="per order-and-wallet user")
    parser.add_argument("--batches-per-s", type=float, default=10.0, help="per batch-transfer user")
    parser.add_argument("--batch-size", type=int, default=1000, help="transfers per POST /v1/transfers (<= 8190)")
    parser.add_argument("--merchants", type=int, default=0, help="merchants to spread users over (0: one per user)")
    parser.add_argument("--workers", type=int, default=2, help="edge worker processes")
    parser.add_argument("--without-actors", action="store_true",
                        help="serve without Ray, the card connector and the simulated providers (not needed by "
                             "wallet and batch users; saves their start-up and background CPU)")
    args = parser.parse_args()
    if args.users < 0 or args.batch_users < 0 or args.users + args.batch_users < 1 or not 1 <= args.batch_size <= 8190:
        parser.error("need --users >= 0, --batch-users >= 0, at least one user, and 1 <= --batch-size <= 8190")
    users = args.users + args.batch_users
    merchant_count = args.merchants or users
    if args.duration < users / args.spawn_rate + 5:
        parser.error("--duration must leave at least 5 s after spawning (users / --spawn-rate)")
    if merchant_count < users:
        print(f"warning: {users} users share {merchant_count} merchants; their token buckets (premium: 1000/min, "
              "burst 2000) may answer 429", file=sys.stderr, flush=True)
    report = Report("http")
    report.row(users=args.users, batch_users=args.batch_users, merchants=merchant_count, duration_s=args.duration,
               checkouts_per_s_per_user=args.checkouts_per_s, batches_per_s_per_user=args.batches_per_s,
               batch_size=args.batch_size, workers=args.workers, actors=not args.without_actors,
               cores=os.cpu_count())
    OUT.mkdir(exist_ok=True)
    for stale in OUT.glob("http_*"):
        stale.unlink()
    latency_file = OUT / "http_single_latency.json"
    with tempfile.TemporaryDirectory(prefix="bench-http-") as temporary:
        folder = pathlib.Path(temporary)
        # The Ray dashboard's agents would take CPU from what is measured: the bench runs without it. Risk counts
        # every attempt as usual, under limits no bench user reaches (each pays again and again with one card).
        rules = folder / "risk_rules.json"
        rules.write_bytes(orjson.dumps({"velocity": {kind: {"attempts": 10**9, "window_s": 600}
                                                     for kind in ("card_fingerprint", "ip", "customer", "email")}}))
        with_actors = ("--no-dashboard", "--risk-rules", str(rules))
        extra = ("--order-ip-limit", "100000000", *(("--without-actors",) if args.without_actors else with_actors))
        server = PaygateServer(folder / "data", workers=args.workers, extra=extra)
        try:
            server.start()
            if not server.admin_token:
                raise RuntimeError("paygate serve printed no admin token (a data folder from an earlier run?)")
            keys = server.create_merchants(merchant_count, tier="premium")
            keys_file = folder / "merchants.json"  # the keys (and the admin token) die with the run's data folder
            keys_file.write_bytes(orjson.dumps({"keys": keys, "admin_token": server.admin_token}))
            cpu = run_locust(args, server, keys_file, latency_file, report)
            status, check = server.request("GET", "/v1/admin/ledger_check", key=server.admin_token)
            report.row(ledger_check="ok" if status == 200 and check.get("ok") else f"FAILED HTTP {status} {check}")
            report_server_latency(server, report)
        finally:
            exit_code = server.stop()
            if exit_code:
                print(f"warning: paygate serve exited with {exit_code}; its last output:\n"
                      + "".join(server.output[-20:]), file=sys.stderr, flush=True)
    single_per_s, batches_per_s, card_payments_per_s = read_stats(report)
    report.row(**cpu)
    # CPU per unit of work, by process role: meaningful when only one kind of user ran
    roles = [key for key in cpu if key.startswith("cpu_") and key not in ("cpu_idle_pct", "cpu_others_pct",
                                                                         "cpu_window_s")]
    if args.batch_users == 0 and single_per_s:
        report.row(**{key.replace("_pct", "_ms_per_request"): round(10 * cpu[key] / single_per_s, 3) for key in roles})
    if args.users == 0 and batches_per_s:
        report.row(**{key.replace("_pct", "_us_per_transfer"): round(10_000 * cpu[key] / (batches_per_s * args.batch_size), 2)
                      for key in roles})
    latencies = orjson.loads(latency_file.read_bytes())
    histogram = [tuple(pair) for pair in latencies["response_times_ms"]]
    count = sum(hits for _, hits in histogram)
    report.row(single_requests=latencies["requests"], single_failures=latencies["failures"])
    if latencies["failures"]:
        print(f"warning: {latencies['failures']} of {latencies['requests']} single requests failed (rows above)",
              file=sys.stderr, flush=True)
    report.result(
        requests_per_s=round(single_per_s),
        p50_ms=percentile(histogram, count, 0.50),
        p99_ms=percentile(histogram, count, 0.99),
        batch_transfers_per_s=round(batches_per_s * args.batch_size),
        card_payments_per_s=round(card_payments_per_s, 1),
    )


if __name__ == "__main__":
    main()
