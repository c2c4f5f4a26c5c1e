"""The simulated providers as processes beside `paygate serve`: their ports, secrets and lifetime."""

import os
import pathlib
import subprocess
import sys
import time
import urllib.request

import msgspec

from journal.processes import stop_processes

PROVIDERS = ("piggybank", "bank")
# What each provider's signed callbacks may say: one provider's secret never speaks for another's business.
CALLBACK_KINDS = {"piggybank": ("authorization",), "bank": ("transfer_received", "payout")}


class ProviderService(msgspec.Struct):
    name: str
    host: str
    port: int
    callback_url: str
    secret_file: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def write_secret(path: pathlib.Path, secret: str) -> None:
    """The provider signs its callbacks with this; only the gateway and the provider can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret)


class ProviderProcesses:
    def __init__(self, services: list[ProviderService]) -> None:
        self.services = services
        self.processes: list[subprocess.Popen] = []

    def start(self) -> "ProviderProcesses":
        for service in self.services:
            self.processes.append(subprocess.Popen([
                sys.executable, "-m", f"actors.simulators.{service.name}", "--host", service.host, "--port", str(service.port),
                "--callback-url", service.callback_url, "--secret-file", service.secret_file,
                "--log-level", "WARNING"]))
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        for service, process in zip(self.services, self.processes):
            while not _healthy(service.url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the simulated {service.name} did not start")
                time.sleep(0.1)

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes)

    def stop(self, timeout_s: float = 10) -> None:
        stop_processes(self.processes, timeout_s)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
