"""A real `paygate serve` for benchmarks: a subprocess on free loopback ports, its admin token and demo key.

The same approach as tests/edge_harness.py (which benchmarks do not import):
start `python -m edge.cli serve` in its own process group, read its welcome
text for the admin token and the demo merchant's key, and stop the whole group
with SIGINT (SIGKILL if it does not leave in time). `request` speaks JSON over
HTTP with the standard library, for set-up calls, not for load.
"""

import contextlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import orjson

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# serve's --base-port block: the simulated providers and the connector (4 ports), then 4 per shard; kept free
PORT_BLOCK_BASE = 4
PORTS_PER_SHARD = 4
MAX_OUTPUT_LINES = 500


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def free_port_block(count: int) -> int:
    """A port such that it and the `count - 1` after it can be bound now."""
    for _ in range(100):
        base = free_port()
        if base + count >= 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    stack.enter_context(socket.socket()).bind((HOST, port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports on {HOST}")


class PaygateServer:
    """`paygate serve` in a subprocess (its own session, so one signal reaches every process it starts)."""

    def __init__(self, data: pathlib.Path, workers: int = 2, shards: int = 1, extra: tuple[str, ...] = (),
                 environment: dict[str, str] | None = None) -> None:
        self.data = data
        self.environment = environment or {}
        self.workers = workers
        self.shards = shards
        self.extra = extra
        self.port = free_port()
        self.base_port = free_port_block(PORT_BLOCK_BASE + PORTS_PER_SHARD * shards + 8)  # 8 to spare
        self.url = f"http://{HOST}:{self.port}"
        self.process: subprocess.Popen | None = None
        self.admin_token = ""
        self.demo_key = ""
        self.output: list[str] = []
        self._drain: threading.Thread | None = None

    def start(self, timeout_s: float = 90) -> "PaygateServer":
        command = [sys.executable, "-m", "edge.cli", "serve", "--host", HOST, "--data", str(self.data),
                   "--port", str(self.port), "--base-port", str(self.base_port), "--workers", str(self.workers),
                   "--shards", str(self.shards), *self.extra]
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
                # keep reading, or a full pipe would block the server's logging under load
                self._drain = threading.Thread(target=self._read_output, daemon=True)
                self._drain.start()
                return self
        raise TimeoutError("paygate serve did not become ready:\n" + "".join(self.output))

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGINT to the process group, then SIGKILL; the exit code (None if it never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._drain is not None:
            self._drain.join(5)
        elif self.process.stdout is not None:
            self.output.extend(self.process.stdout.readlines())
        return self.process.returncode

    def _read_output(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            del self.output[:-MAX_OUTPUT_LINES]

    def request(self, method: str, path: str, body=None, key: str | None = None) -> tuple[int, object]:
        """One JSON request; the status and the decoded body."""
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read() or b"null")

    def create_merchants(self, count: int, tier: str = "premium") -> list[str]:
        """`count` merchants of `tier` through the admin API (POST /v1/merchants); their API keys."""
        keys = []
        for number in range(count):
            status, body = self.request("POST", "/v1/merchants", {"name": f"Bench merchant {number}",
                                                                  "email": f"bench{number}@example.com",
                                                                  "tier": tier}, key=self.admin_token)
            if status != 200 or body.get("tier") != tier:
                raise RuntimeError(f"creating merchant {number}: HTTP {status} {body}")
            keys.append(body["api_key"])
        return keys
