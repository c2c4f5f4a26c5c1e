"""Edge worker processes: several aiohttp servers sharing one port (SO_REUSEPORT), one per core."""

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import time
import urllib.request

import msgspec
import uvloop
from aiohttp import web, web_protocol, web_server

from edge.app import Settings, create_app
from actors.merchant_secrets import Secrets
from edge.auth import hash_secret
from edge.errors import ApiError
from edge.folders import restrict_new_files
from edge.http import SERVER_NAME, log, request_id_of
from journal import logs
from journal.processes import stop_processes
from journal.auth import key_path, load_key
from journal.client import ShardClient
from engine.queries import GetMerchant
from engine.records import CreateMerchant, Merchant

DEMO_MERCHANT_ID = "mer_demo"
# The worker's settings travel in its environment (owner-only in /proc), never in argv, which every user can read.
SETTINGS_VARIABLE = "PAYGATE_EDGE_SETTINGS"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"Run one edge worker process (Settings as JSON in ${SETTINGS_VARIABLE}).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if SETTINGS_VARIABLE not in os.environ:
        parser.error(f"${SETTINGS_VARIABLE} is not set: edge workers are started by `paygate serve`")
    restrict_new_files()
    logs.configure(os.environ.get("PAYGATE_LOG_LEVEL", "INFO"))
    settings = msgspec.json.decode(os.environ.pop(SETTINGS_VARIABLE), type=Settings)
    # aiohttp makes one handler per connection from this name; ours answers what the app never sees.
    web_server.RequestHandler = EdgeRequestHandler
    web.run_app(create_app(settings), host=args.host, port=args.port, reuse_port=True, access_log=None,
                print=None, loop=uvloop.new_event_loop(), handle_signals=True)


class EdgeRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, but a request it cannot parse is answered in the API's error shape, with a
    Request-Id, and logged in one line rather than with a traceback."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # a response had begun: only closing the connection is left
            raise ConnectionError("a response was already under way")
        request_id = request_id_of(request)
        if status >= 500:
            log.error("error handling a request", exc_info=exc, extra={"request_id": request_id})
            error = ApiError(status, "internal_error", "an internal error occurred; it has been logged")
        else:
            # aiohttp's reason, without the bytes it quotes after the colon: they may hold a client's secrets.
            said = (message or str(exc or "") or "unreadable").split(":", 1)[0].splitlines()[0][:200]
            log.info("malformed request from %s: %s", request.remote, said, extra={"request_id": request_id})
            error = ApiError(status, "malformed_request", f"the request is not valid HTTP: {said}")
        response = error.response()
        response.headers["Request-Id"] = request_id
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class EdgeWorkers:
    """The worker processes of one `paygate serve`."""

    def __init__(self, settings: Settings, host: str, port: int, count: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def start(self) -> "EdgeWorkers":
        metrics_folder = pathlib.Path(self.settings.data) / "metrics"
        metrics_folder.mkdir(parents=True, exist_ok=True)
        for stale in metrics_folder.glob("*.db"):
            stale.unlink()
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_folder),
                       SETTINGS_VARIABLE: msgspec.json.encode(self.settings).decode()}
        command = [sys.executable, "-m", "edge.server", "--host", self.host, "--port", str(self.port)]
        self.processes = [subprocess.Popen(command, env=environment) for _ in range(self.count)]
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.host}:{self.port}/healthz"
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                raise RuntimeError("an edge worker exited during start-up")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"edge not answering at {url}")

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes)

    def stop(self, timeout_s: float = 10) -> None:
        stop_processes(self.processes, timeout_s)


def ensure_demo_merchant(settings: Settings, shard_addresses: list[str]) -> str:
    """Create the demo merchant once; its key is derived, so it can be shown on every start."""
    secrets = Secrets.of_data_folder(pathlib.Path(settings.data))
    api_key = secrets.api_key(DEMO_MERCHANT_ID)

    async def create() -> None:
        client = ShardClient(shard_addresses, load_key(key_path(pathlib.Path(settings.data)), "serve"))
        try:
            if (await client.read(GetMerchant(merchant_id=DEMO_MERCHANT_ID))).record is None:
                merchant = Merchant(
                    id=DEMO_MERCHANT_ID, name="Demo merchant", email="demo@example.com", tier="premium",
                    api_key_hash=hash_secret(api_key), client_id=secrets.client_id(DEMO_MERCHANT_ID),
                    client_secret_hash=hash_secret(secrets.client_secret(DEMO_MERCHANT_ID)),
                )
                await client.submit([CreateMerchant(merchant)])
        finally:
            client.close()

    asyncio.run(create())
    return api_key


if __name__ == "__main__":
    main()
