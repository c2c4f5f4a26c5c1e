"""The stack's ceiling on this machine: locust against a gateway that does nothing.

`python -m bench.ceiling [--duration S] [--workers N] [--locust-processes N]`
starts bench/ceiling_app.py as `--workers` (2) processes sharing one port, as
`paygate serve` runs its edge, plus one more as the acquirer, then runs locust
headless (FastHttpUser, `--locust-processes` (2) processes, the most the 2
cores can give it) with bench/locust_ceiling.py:

- single requests (POST /v1/orders, answered with a constant): offered 5,000
  per second, the edge target, then offered 15,000 to find the most;
- card payments (order, payment and capture; payment and capture each make one
  HTTP call to the acquirer): offered 1,000 per second, the payments target,
  then 3,000.

Whatever paygate does (auth, the shard, the ledger, risk, Ray, callbacks) comes
on top of these figures, so they bound what bench/http.py can ever show here.
Rates are locust's over the run after all users spawned; p99s are locust's;
`spare_cpu_us_per_unit` is the idle CPU per request (or payment): the most
that paygate's own work could take at that rate. Prints a row per run and
`RESULT ceiling ...`.
"""

import argparse
import csv
import os
import pathlib
import socket
import subprocess
import sys
import time

import msgspec

from bench.http import run_headless_locust
from bench.names import CAPTURE
from bench.report import OUT, Report
from bench.server import HOST, ROOT, free_port

LOCUSTFILE = pathlib.Path(__file__).resolve().parent / "locust_ceiling.py"
READY_TIMEOUT_S = 30
SPAWN_RATE = 100
CARD_PAY = "POST /v1/payments [card]"


class Scenario(msgspec.Struct, frozen=True):
    name: str
    user_class: str
    users: int
    rate_per_user: float


SCENARIOS = (
    Scenario("single_5000", "SingleRequestUser", 50, 100.0),
    Scenario("single_max", "SingleRequestUser", 150, 100.0),
    Scenario("card_1000", "CardPaymentUser", 100, 10.0),
    Scenario("card_max", "CardPaymentUser", 300, 10.0),
)


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {READY_TIMEOUT_S} s")


def start_apps(workers: int) -> tuple[int, list[subprocess.Popen]]:
    """The acquirer, then `workers` edge processes on one port; the edge's port."""
    acquirer_port, port = free_port(), free_port()
    command = [sys.executable, "-m", "bench.ceiling_app", "--port"]
    apps = [subprocess.Popen([*command, str(acquirer_port)], cwd=ROOT)]
    wait_listening(acquirer_port)
    acquirer = f"http://{HOST}:{acquirer_port}"
    apps += [subprocess.Popen([*command, str(port), "--acquirer", acquirer], cwd=ROOT) for _ in range(workers)]
    wait_listening(port)
    return port, apps


def run_locust(scenario: Scenario, port: int, apps: list[subprocess.Popen], args) -> dict[str, float]:
    """One headless locust run; the CPU each process role used after the ramp."""
    options = [scenario.user_class, "--processes", str(args.locust_processes), "-u", str(scenario.users),
               "-r", str(SPAWN_RATE), "--host", f"http://{HOST}:{port}"]
    _, cpu = run_headless_locust(LOCUSTFILE, f"ceiling_{scenario.name}", options,
                                 {"PAYGATE_CEILING_RATE": str(scenario.rate_per_user)}, [app.pid for app in apps],
                                 args.duration, scenario.users / SPAWN_RATE + 2)
    return cpu


def read_rows(scenario: Scenario) -> dict[str, dict[str, str]]:
    with open(OUT / f"ceiling_{scenario.name}_stats.csv", newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def successful_per_s(row: dict[str, str]) -> float:
    requests = int(row["Request Count"])
    return float(row["Requests/s"]) * (requests - int(row["Failure Count"])) / requests if requests else 0.0


def measure(scenario: Scenario, port: int, apps: list[subprocess.Popen], args, report: Report) -> tuple[float, int]:
    """The scenario's rate (requests or payments per second) and its p99 in ms (the whole request, or the payment)."""
    cpu = run_locust(scenario, port, apps, args)
    rows = read_rows(scenario)
    if scenario.user_class == "SingleRequestUser":
        row = rows["Aggregated"]
        rate, p99_ms = successful_per_s(row), int(row["99%"])
    else:
        rate, p99_ms = successful_per_s(rows[CAPTURE]), int(rows[CARD_PAY]["99%"])
    failures = sum(int(row["Failure Count"]) for name, row in rows.items() if name != "Aggregated")
    # The CPU left idle, per request (or payment): all that paygate's own work could use at this rate.
    spare_us = round(cpu.get("cpu_idle_pct", 0) * 10_000 / rate) if rate else 0
    report.row(run=scenario.name, users=scenario.users, offered_per_s=round(scenario.users * scenario.rate_per_user),
               achieved_per_s=round(rate), p50_ms=rows["Aggregated"]["50%"], p99_ms=p99_ms, failures=failures,
               spare_cpu_us_per_unit=spare_us, **cpu)
    return rate, p99_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds each locust run lasts, ramp included")
    parser.add_argument("--workers", type=int, default=2, help="edge processes sharing the port")
    parser.add_argument("--locust-processes", type=int, default=2)
    args = parser.parse_args()
    if args.duration < max(scenario.users for scenario in SCENARIOS) / SPAWN_RATE + 5:
        parser.error("--duration must leave at least 5 s after spawning")
    report = Report("ceiling")
    report.row(workers=args.workers, locust_processes=args.locust_processes, duration_s=args.duration,
               cores=os.cpu_count())
    OUT.mkdir(exist_ok=True)
    port, apps = start_apps(args.workers)
    try:
        figures = {scenario.name: measure(scenario, port, apps, args, report) for scenario in SCENARIOS}
    finally:
        for app in apps:
            app.terminate()
        for app in apps:
            app.wait(timeout=10)
    report.result(
        single_requests_per_s=round(figures["single_5000"][0]),
        single_p99_ms=figures["single_5000"][1],
        single_max_requests_per_s=round(figures["single_max"][0]),
        card_payments_per_s=round(figures["card_1000"][0]),
        card_pay_p99_ms=figures["card_1000"][1],
        card_max_payments_per_s=round(figures["card_max"][0]),
    )


if __name__ == "__main__":
    main()
