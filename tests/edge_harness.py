"""A real `paygate serve` for black-box tests: shard processes, edge workers, HTTP on loopback."""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import urllib.error
import urllib.request

import orjson

from shard_harness import free_ports

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Response:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return orjson.loads(self.body)


class Server:
    """`paygate serve` in a subprocess; `request` speaks HTTP to it."""

    def __init__(self, data: pathlib.Path, workers: int = 1, extra: tuple[str, ...] = (),
                 environment: dict[str, str] | None = None, actors: bool = False) -> None:
        self.data = data
        self.workers = workers
        # Ray, the connector and the simulated providers take seconds and most of a GiB: only when a test pays.
        self.extra = extra if actors else (*extra, "--without-actors")
        self.environment = environment or {}
        self.port = free_ports(1)[0]
        self.base_port = _free_block()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.admin_token = ""
        self.demo_key = ""
        self.output: list[str] = []

    def start(self, timeout_s: float = 90) -> "Server":
        command = [sys.executable, "-m", "edge.cli", "serve", "--data", str(self.data), "--port", str(self.port),
                   "--base-port", str(self.base_port), "--workers", str(self.workers), *self.extra]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PAYGATE_LOG_LEVEL": "WARNING", **self.environment},
                                        text=True, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("paygate serve exited:\n" + "".join(self.output))
            self.output.append(line)
            if match := re.search(r"admin token: (adm_\S+)", line):
                self.admin_token = match.group(1)
            if match := re.search(r"API key: (sk_\S+)", line):
                self.demo_key = match.group(1)
            if line.startswith("try:"):
                return self
        raise TimeoutError("paygate serve did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def request(self, method: str, path: str, body=None, key: str | None = None, headers: dict | None = None,
                raw: bytes | None = None) -> Response:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            request.add_header(name, value)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Response(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, error.headers, error.read())


def _free_block(size: int = 16) -> int:
    """A base port with `size` free ports from it on (shards take four each)."""
    for _ in range(50):
        base = free_ports(1)[0]
        if base + size < 65535 and all(_port_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError("no free block of ports")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
