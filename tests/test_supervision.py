"""serve supervises its shard processes: one that dies is started again while the other shards serve on; requests
for a shard that is down are answered 503 `shard_unavailable` at once. (SIGTERM stopping serve, Ray and all, as Ctrl-C
does: tests/test_risk_e2e.py, whose server has Ray already.)

Everything here is real: `paygate serve` in a subprocess, its shard processes killed with SIGKILL, HTTP over
loopback.
"""

import json
import os
import pathlib
import signal
import threading
import time

import pytest

from edge_harness import Server
from shard_harness import state_hashes
from journal.client import ShardMap
from journal.processes import running_role, shard_folder
from journal.supervision import FIRST_PAUSE_S, MAX_PAUSE_S, MAX_RESTARTS, RESTART_WINDOW_S, RestartBudget

ORDER = {"name": "Coffee", "amount": 1999, "currency": "usd"}
BACK_WITHIN_S = 15  # a killed shard answers again within this (a start pause and a recovery, on a busy machine)
FAST_S = 1.0  # an answer for a shard that is down comes well before the edge's 10 s reply timeout
LOAD_S = 3.0  # load after the dead shard is back


def test_the_restart_budget_doubles_its_pause_and_runs_out_within_its_window():
    budget = RestartBudget()
    pauses = [budget.pause_s(100.0) for _ in range(MAX_RESTARTS)]
    assert pauses == [min(FIRST_PAUSE_S * 2 ** number, MAX_PAUSE_S) for number in range(MAX_RESTARTS)]
    assert budget.pause_s(100.0) is None
    assert budget.pause_s(100.0 + MAX_PAUSE_S + RESTART_WINDOW_S) == FIRST_PAUSE_S


def _serve(data: pathlib.Path, *options: str, shards: int = 2) -> Server:
    return Server(data, shards=shards, extra=("--order-ip-limit", "0", *options)).start()


def _merchant_per_shard(server: Server, shards: int) -> dict[int, str]:
    """An API key of a premium merchant on each shard (its rate limit leaves room for the load)."""
    keys: dict[int, str] = {}
    shard_map = ShardMap(shards)
    for number in range(64):
        response = server.request("POST", "/v1/merchants", {"name": f"Shop {number}", "email": f"s{number}@x.io",
                                                            "tier": "premium"}, key=server.admin_token)
        assert response.status == 200, response.body[:300]
        keys.setdefault(shard_map.shard_for(response.json()["id"]), response.json()["api_key"])
        if len(keys) == shards:
            return keys
    raise AssertionError("no merchant landed on every shard")


class Outcome:
    def __init__(self, at: float, status: int, took_s: float, code: str | None, retry_after: str | None,
                 order_id: str | None) -> None:
        self.at, self.status, self.took_s, self.code = at, status, took_s, code
        self.retry_after, self.order_id = retry_after, order_id


class Load:
    """One thread per merchant creating orders, `pause_s` apart; every answer is kept."""

    def __init__(self, server: Server, keys: dict[int, str], pause_s: float = 0.0) -> None:
        self.server = server
        self.keys = keys
        self.pause_s = pause_s
        self.outcomes: dict[int, list[Outcome]] = {shard: [] for shard in keys}
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(shard,), daemon=True) for shard in keys]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self, shard: int) -> None:
        while not self.stopping.wait(self.pause_s):
            started = time.monotonic()
            response = self.server.request("POST", "/v1/orders", ORDER, key=self.keys[shard])
            body = response.json() if response.body else {}
            self.outcomes[shard].append(Outcome(
                started, response.status, time.monotonic() - started, body.get("error", {}).get("code"),
                response.headers.get("Retry-After"), body.get("id") if response.status == 200 else None))

    def acknowledged(self, shard: int) -> list[str]:
        return [outcome.order_id for outcome in self.outcomes[shard] if outcome.status == 200]

    def first_success_after(self, shard: int, moment: float) -> float | None:
        return next((outcome.at for outcome in self.outcomes[shard] if outcome.at > moment and outcome.status == 200),
                    None)


def _kill(folder: pathlib.Path) -> None:
    os.kill(json.loads((folder / "shard.json").read_text())["pid"], signal.SIGKILL)


def _wait_for(condition, what: str, server: Server, timeout_s: float = BACK_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{''.join(server.output)}"
        time.sleep(0.1)


def _try_order(server: Server, ids: list[str]) -> bool:
    """One order create; its id joins `ids` if it was acknowledged."""
    response = server.request("POST", "/v1/orders", ORDER, key=server.demo_key)
    if response.status == 200:
        ids.append(response.json()["id"])
    return response.status == 200


def _assert_readable(server: Server, key: str, order_ids: list[str]) -> None:
    for order_id in order_ids:
        response = server.request("GET", f"/v1/orders/{order_id}", key=key)
        assert response.status == 200, (order_id, response.body[:300])


def _assert_unavailable_answers(outcomes: list[Outcome]) -> None:
    """Every failure of a shard that is down is a fast 503 shard_unavailable with Retry-After, nothing else."""
    failures = [outcome for outcome in outcomes if outcome.status != 200]
    for outcome in failures:
        assert (outcome.status, outcome.code) == (503, "shard_unavailable"), vars(outcome)
        assert outcome.retry_after == "1", vars(outcome)
        assert outcome.took_s < FAST_S, vars(outcome)


def _load_through_a_kill(server: Server, data: pathlib.Path, keys: dict[int, str], load_s: float,
                         pause_s: float = 0.0) -> None:
    """Kill shard 0's process under load on both shards: shard 1 never notices, shard 0 answers fast 503s until it
    is back, and everything acknowledged is there afterwards."""
    with Load(server, keys, pause_s) as load:
        time.sleep(0.5)
        killed_at = time.monotonic()
        _kill(shard_folder(data, 0))
        _wait_for(lambda: load.first_success_after(0, killed_at + 0.2) is not None,
                  "the killed shard did not answer again", server)
        back_at = load.first_success_after(0, killed_at + 0.2)
        time.sleep(load_s)
    assert back_at - killed_at < BACK_WITHIN_S
    assert load.outcomes[1] and all(outcome.status == 200 for outcome in load.outcomes[1]), \
        [vars(outcome) for outcome in load.outcomes[1] if outcome.status != 200][:5]
    _assert_unavailable_answers(load.outcomes[0])
    # A restart quicker than the load's next request leaves no 503 to see; serve's own line says it saw the death.
    assert any(outcome.status == 503 for outcome in load.outcomes[0]) or any(
        "shard 0: the process on" in line and "stopped" in line for line in server.output), "the kill went unnoticed"
    assert server.process.poll() is None, "".join(server.output)
    for shard, key in keys.items():
        _assert_readable(server, key, load.acknowledged(shard))


def test_a_killed_shard_comes_back_while_the_other_serves_on(tmp_path):
    data = tmp_path / "data"
    server = _serve(data)
    try:
        # Paced: unpaced on an idle machine the load alone empties a premium merchant's burst (2,000) in seconds.
        _load_through_a_kill(server, data, _merchant_per_shard(server, 2), LOAD_S, pause_s=0.01)
        assert any("shard 0: serving again" in line for line in server.output), "".join(server.output)
    finally:
        server.stop()


@pytest.mark.slow
def test_a_shard_killed_again_and_again_under_long_load_loses_nothing(tmp_path):
    data = tmp_path / "data"
    server = _serve(data)
    try:
        keys = _merchant_per_shard(server, 2)
        for _ in range(3):  # within the restart budget
            # Paced to stay under a premium merchant's rate limit (1,000 a minute past its burst).
            _load_through_a_kill(server, data, keys, 20.0, pause_s=0.05)
    finally:
        server.stop()


def test_a_shard_that_keeps_dying_is_given_up_alone(tmp_path):
    data = tmp_path / "data"
    server = _serve(data)
    try:
        keys = _merchant_per_shard(server, 2)
        # The folder no shard process can start on: every start again fails at once.
        _kill(shard_folder(data, 0))
        (shard_folder(data, 0) / "journal" / "data.mdb").write_bytes(b"not an LMDB file")
        _wait_for(lambda: any("shard 0: gave up" in line for line in server.output), "serve never gave up",
                  server, timeout_s=60)
        started = time.monotonic()
        refused = server.request("POST", "/v1/orders", ORDER, key=keys[0])
        assert time.monotonic() - started < FAST_S
        assert (refused.status, refused.json()["error"]["code"]) == (503, "shard_unavailable")
        assert refused.json()["error"]["type"] == "api_error" and refused.headers["Retry-After"] == "1"
        assert server.request("POST", "/v1/orders", ORDER, key=keys[1]).status == 200
        assert server.process.poll() is None
    finally:
        server.stop()


def _roles(data: pathlib.Path) -> set[str]:
    return {running_role(folder) for folder in (shard_folder(data, 0), shard_folder(data, 0, replica=True))}


def _paired_and_equal(data: pathlib.Path) -> bool:
    """Both folders run, one as primary and one as its replica, and both hold the same state."""
    if _roles(data) != {"primary", "replica"}:
        return False

    try:
        return len(state_hashes(data)) == 1
    except Exception:  # a process still starting: not yet
        return False


def _primary_folder(data: pathlib.Path) -> pathlib.Path:
    return next(folder for folder in (shard_folder(data, 0), shard_folder(data, 0, replica=True))
                if running_role(folder) == "primary")


def test_after_a_promotion_the_old_primary_follows_the_new_one(tmp_path):
    data = tmp_path / "data"
    server = _serve(data, "--replica", "--auto-promote-ms", "1000", shards=1)
    ids: list[str] = []
    try:
        for round_ in range(2):  # the second kill takes down the primary that the first one promoted
            _wait_for(lambda: _paired_and_equal(data), f"round {round_}: no replica beside the primary", server)
            for _ in range(3):
                _wait_for(lambda: _try_order(server, ids), f"round {round_}: no write went through", server)
            _kill(_primary_folder(data))
            _wait_for(lambda: _try_order(server, ids), f"round {round_}: writes did not resume", server)
        _wait_for(lambda: _paired_and_equal(data), "no replica after the second promotion", server)
        _wait_for(lambda: _try_order(server, ids), "no write went through at the end", server)
        _assert_readable(server, server.demo_key, ids)
        assert server.process.poll() is None, "".join(server.output)
    finally:
        server.stop()
