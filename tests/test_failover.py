"""Failover across serve restarts and process deaths: roles follow the data, and a shard that lost one process of
its pair serves on and gets it back.

The unit tests build small journals by hand (the payloads are opaque bytes to the journal); the others run a real
`paygate serve` (without Ray) and speak HTTP to it.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from edge_harness import Server
from shard_harness import state_hashes
from journal.processes import running_role, shard_folder, shard_roles
from journal.store import Journal

ORDER = {"name": "Coffee", "amount": 1999, "currency": "usd"}
WAIT_S = 30  # the longest any step may take before the test fails (a loaded 2-core machine restarts processes slowly)


def _journal(folder: pathlib.Path, payloads: list[bytes], epoch: int = 0) -> None:
    journal = Journal(folder)
    try:
        journal.append(list(enumerate(payloads, start=1)))
        journal.epoch = epoch
    finally:
        journal.close()


def test_fresh_data_keeps_the_usual_roles(tmp_path):
    assert shard_roles(tmp_path, 0, replica=True) == (shard_folder(tmp_path, 0), shard_folder(tmp_path, 0, True))
    assert shard_roles(tmp_path, 0, replica=False) == (shard_folder(tmp_path, 0), None)


def test_the_higher_epoch_leads_then_the_longer_journal(tmp_path):
    usual, other = shard_folder(tmp_path, 0), shard_folder(tmp_path, 0, replica=True)
    _journal(usual, [b"a", b"b", b"c"])
    _journal(other, [b"a", b"b"], epoch=1)
    assert shard_roles(tmp_path, 0, replica=False) == (other, None)
    _journal(tmp_path / "second", [b"a", b"b"])
    _journal(shard_folder(tmp_path / "second", 0, replica=True), [b"a", b"b", b"c"])
    assert shard_roles(tmp_path / "second", 0, replica=True)[0].name == "shard-0-replica"


def test_a_stale_primary_whose_entries_are_all_in_the_new_history_follows_it(tmp_path):
    usual, other = shard_folder(tmp_path, 0), shard_folder(tmp_path, 0, replica=True)
    _journal(usual, [b"a", b"b"])
    _journal(other, [b"a", b"b", b"c"], epoch=1)
    assert shard_roles(tmp_path, 0, replica=True) == (other, usual)


@pytest.mark.parametrize("stale", [[b"a", b"b", b"x"], [b"a", b"b", b"c", b"d"]])
def test_a_stale_primary_that_wrote_after_the_failover_is_refused(tmp_path, stale):
    usual, other = shard_folder(tmp_path, 0), shard_folder(tmp_path, 0, replica=True)
    _journal(usual, stale)
    _journal(other, [b"a", b"b", b"c"], epoch=1)
    with pytest.raises(SystemExit, match="Move it aside"):
        shard_roles(tmp_path, 0, replica=True)
    # Alone, the newer history serves; the stale folder waits untouched.
    assert shard_roles(tmp_path, 0, replica=False) == (other, None)


def _serve(data: pathlib.Path, *options: str) -> Server:
    return Server(data, extra=("--order-ip-limit", "0", *options)).start()


def _create_order(server: Server) -> str:
    response = server.request("POST", "/v1/orders", ORDER, key=server.demo_key)
    assert response.status == 200, response.body[:300]
    return response.json()["id"]


def _try_order(server: Server, ids: list[str]) -> bool:
    """One order create; its id joins `ids` if it was acknowledged."""
    response = server.request("POST", "/v1/orders", ORDER, key=server.demo_key)
    if response.status == 200:
        ids.append(response.json()["id"])
    return response.status == 200


def _assert_orders(server: Server, ids: list[str]) -> None:
    for order_id in ids:
        response = server.request("GET", f"/v1/orders/{order_id}", key=server.demo_key)
        assert response.status == 200, (order_id, response.body[:300])


def _promote(folder: pathlib.Path) -> None:
    promoted = subprocess.run([sys.executable, "-m", "edge.cli", "promote", "--data", str(folder)],
                              capture_output=True, text=True, timeout=WAIT_S)
    assert "epoch=1" in promoted.stdout, promoted.stdout + promoted.stderr


def _kill(folder: pathlib.Path) -> None:
    os.kill(json.loads((folder / "shard.json").read_text())["pid"], signal.SIGKILL)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)




def test_serve_after_a_promotion_starts_the_newer_history_as_primary(tmp_path):
    data = tmp_path / "data"
    server = _serve(data, "--replica")
    try:
        ids = [_create_order(server)]
        _promote(shard_folder(data, 0, replica=True))
        # Fenced before the next write, so the old primary holds nothing the new one lacks; then serve starts it
        # again as the new primary's replica.
        _wait_for(lambda: running_role(shard_folder(data, 0)) in ("fenced", "replica"), "the old primary was not fenced")
        _wait_for(lambda: _try_order(server, ids), "writes did not resume after the promotion")
    finally:
        server.stop()
    alone = _serve(data)
    try:
        _assert_orders(alone, ids)
        ids.append(_create_order(alone))
    finally:
        alone.stop()
    paired = _serve(data, "--replica")
    try:
        _assert_orders(paired, ids)
        _create_order(paired)
        _wait_for(lambda: len(state_hashes(data)) == 1, "the replica did not reach the primary's state")
    finally:
        paired.stop()


def test_serve_keeps_serving_when_the_primary_shard_process_dies(tmp_path):
    data = tmp_path / "data"
    server = _serve(data, "--replica", "--auto-promote-ms", "1000")
    try:
        ids = [_create_order(server) for _ in range(3)]
        _kill(shard_folder(data, 0))
        _wait_for(lambda: _try_order(server, ids), "writes did not resume after the primary died")
        _assert_orders(server, ids)
        # The old primary's folder follows the promoted one: the shard has a replica again.
        _wait_for(lambda: running_role(shard_folder(data, 0)) == "replica", "the old primary did not follow")
        _wait_for(lambda: len(state_hashes(data)) == 1, "the old primary did not catch up")
        assert server.process.poll() is None, "".join(server.output)
    finally:
        server.stop()


def test_serve_starts_a_dead_replica_again_and_it_catches_up(tmp_path):
    data = tmp_path / "data"
    server = _serve(data, "--replica")
    try:
        ids = [_create_order(server)]
        _kill(shard_folder(data, 0, replica=True))
        # Sync replication: a write is acknowledged only once the restarted replica holds it.
        _wait_for(lambda: _try_order(server, ids), "writes did not resume after the replica died")
        _assert_orders(server, ids)
        _wait_for(lambda: len(state_hashes(data)) == 1, "the restarted replica did not catch up")
        assert any("-replica again in" in line for line in server.output), "".join(server.output)
    finally:
        server.stop()


def test_serve_on_a_damaged_journal_says_so_in_one_line_and_starts_nothing(tmp_path):
    """A flipped byte in an entry that was answered: the shard names it and stops; serve says which shard, and exits
    1 without a traceback."""
    data = tmp_path / "data"
    server = _serve(data)
    try:
        ids = [_create_order(server) for _ in range(3)]
    finally:
        server.stop()
    path = shard_folder(data, 0) / "journal" / "data.mdb"
    content = path.read_bytes()
    # Not the last entry: a damaged last entry whose result is not stored yet reads as a torn write and is dropped.
    marker = ids[0].encode()
    assert marker in content
    path.write_bytes(content.replace(marker, b"X" + marker[1:]))
    with pytest.raises(RuntimeError) as failed:
        Server(data).start()
    output = str(failed.value)
    assert "paygate serve: the shard at" in output and "stopped while starting" in output, output
    assert "cannot start on" in output and "journal entry" in output, output
    assert "Traceback" not in output, output
