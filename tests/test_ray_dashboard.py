"""The Ray dashboard of `paygate serve` and the shards' health in it: a real serve with two shards and their replicas,
its local Ray runtime, the dashboard with token authentication, and the shard-health actor.

One server for the module (Ray and its dashboard take a while to start). The last test stops it and looks for
anything it left running.
"""

import os
import pathlib
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import msgspec
import pytest

from actors import health, notifier
from actors.connectors import actor_name
from actors.runtime import (CLUSTER_VARIABLE, MODE_VARIABLE, NAMESPACE, TOKEN_FILE, RuntimeInfo,
                            token_authentication_on)
from edge_harness import Server
from journal.processes import request_status, running_address, running_key

SHARDS = 2
# Ray exports custom metrics every 10 s by default: every second here, so the metrics test waits less.
ENVIRONMENT = {"RAY_metrics_report_interval_ms": "1000"}

# Run in its own process: a driver that joins serve's Ray cluster with the token, as an operator's script would,
# and prints the shard-health actor's latest status once every shard reports what its primary says.
STATUS_SCRIPT = """
import sys, time
import msgspec, ray
from actors import health
expected = msgspec.json.decode(sys.argv[2], type=list[int])
ray.init(address=sys.argv[1], namespace=sys.argv[3], logging_level="WARNING", log_to_driver=False)
watch = ray.get_actor(health.ACTOR_NAME)
deadline = time.monotonic() + 10
while True:
    status = ray.get(watch.status.remote(), timeout=10)
    if [shard.committed_sequence for shard in status.shards] == expected or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(msgspec.json.encode(status).decode())
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("dashboard"), workers=1, actors=True, dashboard=True, shards=SHARDS,
                    extra=("--replica", "--dashboard-port", "0"), environment=ENVIRONMENT).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server) -> RuntimeInfo:
    return msgspec.json.decode((server.data / "ray.json").read_bytes(), type=RuntimeInfo)


@pytest.fixture(scope="module")
def welcome(server) -> dict:
    text = "".join(server.output)
    dashboard = re.search(r"Ray dashboard: (http://\S+) - log in with the token in (\S+) \(cat (\S+)\)", text)
    metrics = re.search(r"Ray metrics: (http://\S+)", text)
    assert dashboard and metrics, text
    return {"dashboard_url": dashboard.group(1), "token_file": pathlib.Path(dashboard.group(2)),
            "cat": dashboard.group(3), "metrics_url": metrics.group(1)}


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def primaries_committed(server) -> list[int]:
    """What each shard's primary says is durable, asked directly."""
    sequences = []
    for shard in range(SHARDS):
        reply = request_status(running_address(server.data / f"shard-{shard}"), running_key(server.data / f"shard-{shard}"),
                               timeout_ms=2000)
        assert reply is not None and reply.shard_status.role == "primary", reply
        sequences.append(reply.shard_status.durable_sequence)
    return sequences


def test_a_shard_is_up_with_a_primary_and_healthy_with_every_process():
    primary = health.ProcessHealth("tcp://primary", up=True, role="primary", epoch=2, sequence=40,
                                   durable_sequence=40, replica_sequence=37, queue_items=5)
    replica = health.ProcessHealth("tcp://replica", up=True, role="replica", epoch=2, durable_sequence=37)
    both = health.summarize(0, [primary, replica])
    assert (both.up, both.healthy, both.epoch, both.committed_sequence, both.replica_lag_batches,
            both.queue_items) == (True, True, 2, 40, 3, 5)
    without_replica = health.summarize(0, [primary, health.ProcessHealth("tcp://replica")])
    assert without_replica.up and not without_replica.healthy
    only_replica = health.summarize(1, [health.ProcessHealth("tcp://primary"), replica])
    assert (only_replica.up, only_replica.healthy, only_replica.committed_sequence,
            only_replica.replica_lag_batches) == (False, False, 37, 0)
    assert "DOWN" in health.describe(only_replica)
    nothing = health.summarize(2, [health.ProcessHealth("tcp://primary")])
    assert (nothing.up, nothing.committed_sequence) == (False, 0)


@pytest.mark.parametrize("mode, local, expected", [(None, True, True), (None, False, False), ("token", False, True),
                                                   ("disabled", True, False), ("TOKEN", True, True)])
def test_token_authentication_is_told_by_rays_documented_rules(monkeypatch, mode, local, expected):
    if mode is None:
        monkeypatch.delenv(MODE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(MODE_VARIABLE, mode)
    assert token_authentication_on(local) is expected


def test_welcome_names_the_dashboard_on_loopback_and_how_to_log_in(server, welcome, runtime):
    assert welcome["dashboard_url"].startswith("http://127.0.0.1:")
    assert welcome["dashboard_url"] == runtime.dashboard_url
    token_file = welcome["token_file"]
    assert token_file == (server.data / TOKEN_FILE).resolve() and str(token_file) == welcome["cat"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, "the token is for its owner only"
    assert re.fullmatch(r"[0-9a-f]{64}", token_file.read_text())
    assert runtime.token_authentication
    # Loopback only: the machine's other address refuses the dashboard's port.
    other_address = runtime.gcs_address.rpartition(":")[0]
    if other_address not in ("127.0.0.1", "localhost"):
        with pytest.raises(OSError), socket.create_connection((other_address, int(welcome["dashboard_url"]
                                                                                  .rpartition(":")[2])), 2):
            pass


def test_dashboard_answers_only_with_the_token(welcome, runtime):
    # What serve says of Ray's token authentication is what Ray's own dashboard says.
    status, body = get(welcome["dashboard_url"] + "/api/authentication_mode")
    assert (status, msgspec.json.decode(body)) == (200, {"authentication_mode": "token"})
    assert runtime.token_authentication
    actors_url = welcome["dashboard_url"] + "/api/v0/actors"
    assert get(actors_url)[0] == 401
    assert get(actors_url, token="0" * 64)[0] == 403
    status, body = get(actors_url, token=welcome["token_file"].read_text())
    assert status == 200, body[:300]


def test_dashboard_lists_the_named_actors_alive(welcome):
    status, body = get(welcome["dashboard_url"] + "/api/v0/actors?detail=true&limit=100",
                       token=welcome["token_file"].read_text())
    assert status == 200, body[:300]
    actors = [actor for actor in msgspec.json.decode(body)["data"]["result"]["result"]
              if actor["ray_namespace"] == NAMESPACE and actor["name"]]
    states = {actor["name"]: actor["state"] for actor in actors}
    assert {actor_name("piggybank"), health.ACTOR_NAME, notifier.ACTOR_NAME} <= set(states), states
    assert set(states.values()) == {"ALIVE"}, states
    watch = next(actor for actor in actors if actor["name"] == health.ACTOR_NAME)
    assert watch["repr_name"].startswith(f"ShardHealth({SHARDS} shard(s), {2 * SHARDS} process(es)"), watch
    sender = next(actor for actor in actors if actor["name"] == notifier.ACTOR_NAME)
    assert sender["repr_name"].startswith(f"Notifier({SHARDS} shard(s), retries after 2,10,60,300,1800,7200,21600,86400 s)"), sender


def test_shard_health_reports_every_shard_healthy_with_its_sequence(server, runtime, welcome):
    order = server.request("POST", "/v1/orders", {"name": "Coffee", "amount": 1999, "currency": "usd"},
                           key=server.demo_key)
    assert order.status < 300, order.body[:300]
    expected = primaries_committed(server)
    # As the welcome says: the token, and Ray's switch for a runtime on loopback (else Ray dials another address).
    assert f"another process joins it with {CLUSTER_VARIABLE}=0 set" in "".join(server.output)
    environment = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(welcome["token_file"]),
                   CLUSTER_VARIABLE: "0"}
    environment.pop("RAY_AUTH_TOKEN", None)
    finished = subprocess.run([sys.executable, "-c", STATUS_SCRIPT, runtime.gcs_address,
                               msgspec.json.encode(expected).decode(), NAMESPACE],
                              cwd=pathlib.Path(__file__).resolve().parent.parent, env=environment,
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr[-2000:]
    status = msgspec.json.decode(finished.stdout.strip().splitlines()[-1], type=health.ClusterHealth)
    assert [shard.shard for shard in status.shards] == list(range(SHARDS))
    assert [shard.committed_sequence for shard in status.shards] == expected
    assert max(expected) > 0
    for shard in status.shards:
        assert shard.up and shard.healthy, shard
        assert shard.replica_lag_batches == 0 and shard.queue_items == 0, shard
        assert sorted(process.role for process in shard.processes) == ["primary", "replica"], shard


def test_shard_health_metrics_reach_the_metrics_endpoint(server, welcome):
    expected = primaries_committed(server)
    wanted = {f'ray_paygate_shard_committed_sequence{{shard="{shard}"}} {float(sequence)}'
              for shard, sequence in enumerate(expected)}
    wanted |= {f'ray_paygate_shard_up{{shard="{shard}"}} 1.0' for shard in range(SHARDS)}
    found: set[str] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and found != wanted:
        status, body = get(welcome["metrics_url"])
        assert status == 200
        # Ray adds its own labels (node, session, worker): keep only the metric's name, our label and the value.
        samples = {re.sub(r"\{.*?(shard=\"\d+\").*\}", r"{\1}", line) for line in body.decode().splitlines()
                   if line.startswith("ray_paygate_shard_")}
        found = wanted & samples
        time.sleep(0.5)
    assert found == wanted, sorted(wanted - found)


def test_stopping_serve_leaves_no_process_behind(server, welcome):
    session = server.process.pid  # serve leads its own session: every process it starts is in it, Ray's included
    assert server.stop() == 0
    deadline = time.monotonic() + 10
    while (left := processes_in_session(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left
    assert not (server.data / "ray.json").exists()
    with pytest.raises(OSError):
        get(welcome["dashboard_url"])


def processes_in_session(session: int) -> list[str]:
    """The command lines of the live processes in `session` (zombies not counted: they hold nothing)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # after the command's name: state, parent, process group, session
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(command[:160])
    return found
