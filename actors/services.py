"""The simulated outside world as processes beside `paygate serve` (the providers, the local mail sink): their
ports, secrets and lifetime."""

import os
import pathlib
import socket
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


class MailSink:
    """The local SMTP server that keeps each message as an .eml file in `folder` (actors/simulators/mailsink.py)."""

    def __init__(self, host: str, port: int, folder: pathlib.Path) -> None:
        self.host = host
        self.port = port
        self.folder = folder
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30) -> "MailSink":
        self.process = subprocess.Popen([sys.executable, "-m", "actors.simulators.mailsink", "--host", self.host,
                                         "--port", str(self.port), "--folder", str(self.folder),
                                         "--log-level", "WARNING"])
        deadline = time.monotonic() + timeout_s
        while not _listening(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the mail sink did not start on {self.url}")
            time.sleep(0.1)
        return self

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def stop(self, timeout_s: float = 10) -> None:
        if self.process is not None:
            stop_processes([self.process], timeout_s)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
