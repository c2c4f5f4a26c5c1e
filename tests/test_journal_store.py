"""The LMDB journal and its snapshot files: round trips, damage found and named, torn tails, pruning, growth.

Every test builds a small journal in `tmp_path`: batch 1 creates the accounts,
each later batch holds a few transfers whose ids (`needle-s005-t2`) are
distinctive bytes, so a test can find an entry's payload inside `data.mdb` and
damage it there. Expected states come from engines fed the same encoded batches
directly, decoded afresh per engine (the engine takes ownership of its structs).
"""

import concurrent.futures
import contextlib
import os
import pathlib
import random
import shutil
import subprocess
import sys

import lmdb
import pytest

from edge_harness import Server
from engine import Account, Batch, CreateAccounts, CreateTransfers, Engine, Transfer
from journal.recovery import batch_decoder, batch_encoder, recover, replay_from_scratch
from journal.store import (GENESIS_HASH, HASH_BYTES, SNAPSHOT_HEADER, CorruptionError, Entry, Journal, Snapshots,
                           chained_entries, entry_hash)

T0 = 1_700_000_000 * 10**9
ACCOUNTS = ("cash", "alice", "bob", "carol")
BATCHES = 8
TRANSFERS_PER_BATCH = 5
ENTRIES_PER_APPEND = 3


def needle(sequence: int, index: int = 0) -> bytes:
    return f"needle-s{sequence:03d}-t{index}".encode()


def batch_payloads(count: int = BATCHES) -> list[bytes]:
    """`count` encoded batches: the accounts, then transfers from cash whose ids name their batch."""
    payloads = [batch_encoder.encode(Batch(1, T0, [CreateAccounts([Account(name, "USD") for name in ACCOUNTS])]))]
    for sequence in range(2, count + 1):
        transfers = [Transfer(needle(sequence, index).decode(), "cash", ACCOUNTS[1 + index % 3], 100 * sequence + index,
                              "USD") for index in range(TRANSFERS_PER_BATCH)]
        payloads.append(batch_encoder.encode(Batch(sequence, T0 + sequence, [CreateTransfers(transfers)])))
    return payloads


def engine_through(payloads: list[bytes], sequence: int) -> Engine:
    engine = Engine()
    for payload in payloads[:sequence]:
        engine.apply(batch_decoder.decode(payload))
    return engine


@contextlib.contextmanager
def opened(folder: pathlib.Path, **options):
    """A Journal on `folder`, always closed: LMDB must not be opened twice in one process."""
    journal = Journal(folder, **options)
    try:
        yield journal
    finally:
        journal.close()


def build_journal(folder: pathlib.Path, count: int = BATCHES, snapshot_at: tuple[int, ...] = ()) -> list[bytes]:
    """Append `count` batches, a few per transaction, and snapshot the engine at each of `snapshot_at`."""
    payloads = batch_payloads(count)
    with opened(folder) as journal:
        for start in range(1, count + 1, ENTRIES_PER_APPEND):
            sequences = range(start, min(start + ENTRIES_PER_APPEND, count + 1))
            journal.append([(sequence, payloads[sequence - 1]) for sequence in sequences])
        for sequence in snapshot_at:
            engine = engine_through(payloads, sequence)
            Snapshots(folder).write(sequence, journal.entry_hash_at(sequence), engine.snapshot())
    return payloads


def recover_folder(folder: pathlib.Path):
    with opened(folder) as journal:
        return recover(journal, Snapshots(folder))


def flip_byte(data: bytes, offset: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def flip_every(path: pathlib.Path, marker: bytes) -> None:
    """Flip the first byte of every occurrence of `marker` in the file (LMDB leaves stale copies of rewritten pages)."""
    data = path.read_bytes()
    assert marker in data, marker
    path.write_bytes(data.replace(marker, flip_byte(marker, 0)))


def journal_file(folder: pathlib.Path) -> pathlib.Path:
    return folder / "journal" / "data.mdb"


def run_cli(command: str, folder: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", command, "--data", str(folder)],
                          capture_output=True, text=True, timeout=60, cwd=pathlib.Path(__file__).parent.parent)


def run_verify(folder: pathlib.Path) -> subprocess.CompletedProcess:
    return run_cli("verify", folder)


# Round trip


def test_round_trip_keeps_payloads_head_and_chain_across_reopen(tmp_path):
    payloads = build_journal(tmp_path)
    hashes = [GENESIS_HASH]
    for sequence, payload in enumerate(payloads, 1):
        hashes.append(entry_hash(hashes[-1], sequence, payload))
    with opened(tmp_path) as journal:
        assert (journal.head_sequence, journal.head_hash) == (BATCHES, hashes[-1])
        entries = journal.read(1, 100)
        assert entries == list(journal.scan(1, GENESIS_HASH))
        assert [entry.payload for entry in entries] == payloads
        assert [entry.sequence for entry in entries] == list(range(1, BATCHES + 1))
        assert [(entry.previous_hash, entry.hash) for entry in entries] == list(zip(hashes, hashes[1:]))
        assert journal.read(3, 2) == entries[2:4]
        assert journal.read_records(1, 100, 1 << 20) == [entry.record() for entry in entries]
    engine, report = recover_folder(tmp_path)
    assert engine.state_hash() == engine_through(payloads, BATCHES).state_hash()
    assert (engine.sequence, report.replayed_batches) == (BATCHES, BATCHES)
    assert report.replayed_transfers == (BATCHES - 1) * TRANSFERS_PER_BATCH


# Damage inside the journal


@pytest.mark.parametrize("damaged", [2, BATCHES // 2, BATCHES - 1])
def test_damaged_entry_before_the_tail_stops_recovery_and_verify_naming_it(tmp_path, damaged):
    build_journal(tmp_path)
    flip_every(journal_file(tmp_path), needle(damaged))
    with pytest.raises(CorruptionError, match=rf"journal entry {damaged}\b") as raised:
        recover_folder(tmp_path)
    assert raised.value.sequence == damaged
    verify = run_verify(tmp_path)
    assert verify.returncode != 0
    assert "FAILED" in verify.stdout and f"journal entry {damaged}:" in verify.stdout
    # Nothing repaired: the damage and every entry after it are still there.
    assert flip_byte(needle(damaged), 0) in journal_file(tmp_path).read_bytes()
    with opened(tmp_path) as journal:
        assert journal.head_sequence == BATCHES


def test_damage_in_entries_a_snapshot_covers_still_stops_recovery(tmp_path):
    """Start-up replays only after the newest snapshot, but checks every entry before it too."""
    build_journal(tmp_path, snapshot_at=(6,))
    flip_every(journal_file(tmp_path), needle(3))
    with pytest.raises(CorruptionError, match=r"journal entry 3\b"):
        recover_folder(tmp_path)


def cut_in_header(folder: pathlib.Path) -> None:
    _rewrite_last_record(folder, lambda record: record[: HASH_BYTES + 5])


def cut_in_payload(folder: pathlib.Path) -> None:
    _rewrite_last_record(folder, lambda record: record[:-7])


def _rewrite_last_record(folder: pathlib.Path, change) -> None:
    environment = lmdb.open(str(folder / "journal"), max_dbs=4)
    try:
        entries = environment.open_db(b"entries")
        with environment.begin(write=True, db=entries) as transaction:
            cursor = transaction.cursor()
            assert cursor.last()
            assert cursor.put(cursor.key(), change(cursor.value()))
    finally:
        environment.close()


def flip_payload_byte(folder: pathlib.Path) -> None:
    flip_every(journal_file(folder), needle(BATCHES))



@pytest.mark.parametrize("snapshot_at", [pytest.param((), id="from-scratch"),
                                         pytest.param((BATCHES - 1,), id="snapshot-before-tail")])
@pytest.mark.parametrize("tear", [cut_in_header, cut_in_payload, flip_payload_byte])
def test_torn_last_entry_is_dropped_and_its_sequence_reused(tmp_path, tear, snapshot_at):
    payloads = build_journal(tmp_path, snapshot_at=snapshot_at)
    tear(tmp_path)
    with opened(tmp_path) as journal:
        engine, report = recover(journal, Snapshots(tmp_path))
        assert report.dropped_tail_entries == 1
        assert engine.sequence == journal.head_sequence == BATCHES - 1
        assert engine.state_hash() == engine_through(payloads, BATCHES - 1).state_hash()
        assert journal.head_hash == journal.entry_hash_at(BATCHES - 1)
        journal.append([(BATCHES, payloads[-1])])
    engine, report = recover_folder(tmp_path)
    assert (engine.sequence, report.dropped_tail_entries) == (BATCHES, 0)


def test_a_damaged_last_entry_whose_result_is_stored_stops_recovery(tmp_path):
    """Its result says the batch was applied (and maybe answered): no torn write, so not dropped but named."""
    build_journal(tmp_path)
    with opened(tmp_path) as journal:
        journal.write_results([(BATCHES, b"its result")])
    flip_payload_byte(tmp_path)
    with pytest.raises(CorruptionError, match=f"journal entry {BATCHES}"):
        recover_folder(tmp_path)
    with opened(tmp_path) as journal:
        assert journal.head_sequence == BATCHES  # nothing dropped


# Snapshots

SNAPSHOT_NAME_AT = "snapshot-{:020d}.bin".format

@pytest.mark.parametrize("offset", [
    pytest.param(0, id="magic"),
    pytest.param(15, id="sequence"),
    pytest.param(20, id="durable-sequence"),
    pytest.param(30, id="entry-hash"),
    pytest.param(60, id="payload-hash"),
    pytest.param(SNAPSHOT_HEADER.size + 10, id="payload"),
])
def test_snapshot_with_a_flipped_byte_fails_to_load_naming_the_file(tmp_path, offset):
    build_journal(tmp_path, snapshot_at=(4,))
    path = Snapshots(tmp_path).path_for(4)
    path.write_bytes(flip_byte(path.read_bytes(), offset))
    with pytest.raises(CorruptionError, match=SNAPSHOT_NAME_AT(4)):
        Snapshots(tmp_path).load(path)


@pytest.mark.parametrize("snapshot_at, used", [((3, 6), 3), ((6,), 0)], ids=["older-snapshot", "full-journal"])
def test_recovery_skips_a_damaged_snapshot_and_falls_back(tmp_path, snapshot_at, used):
    payloads = build_journal(tmp_path, snapshot_at=snapshot_at)
    path = Snapshots(tmp_path).path_for(6)
    path.write_bytes(flip_byte(path.read_bytes(), -1))
    engine, report = recover_folder(tmp_path)
    assert report.skipped_snapshots == [f"snapshot {path.name}: checksum mismatch"]
    assert (report.snapshot_sequence, report.replayed_batches) == (used, BATCHES - used)
    assert engine.state_hash() == engine_through(payloads, BATCHES).state_hash()


def test_a_snapshot_of_batches_whose_results_were_never_written_is_skipped(tmp_path):
    """A kill -9 after a snapshot but before its batches' results reached the disk: recovery starts from an older
    state and writes those results, so readers of results (the followers) never stall at a gap."""
    payloads = build_journal(tmp_path, snapshot_at=(3, 6))
    with opened(tmp_path) as journal:
        journal.write_results([(sequence, b"result") for sequence in range(1, 5)])  # 5 and later never written
    engine, report = recover_folder(tmp_path)
    assert (report.snapshot_sequence, report.replayed_batches) == (3, BATCHES - 3)
    assert any("results" in reason for reason in report.skipped_snapshots), report.skipped_snapshots
    assert engine.state_hash() == engine_through(payloads, BATCHES).state_hash()
    with opened(tmp_path) as journal:
        assert [entry.sequence for entry, _ in journal.read_results(1, 100)] == list(range(1, BATCHES + 1))


def other_batch(sequence: int) -> bytes:
    """A batch that could have taken `sequence`'s number after a crash lost the first one."""
    transfer = Transfer(f"other-{sequence}", "cash", "alice", 1, "USD")
    return batch_encoder.encode(Batch(sequence, T0 + sequence, [CreateTransfers([transfer])]))


def snapshot_at(folder: pathlib.Path, payloads: list[bytes], durable_sequence: int,
                durable_hash: bytes | None = None) -> None:
    """A snapshot of the engine after the last of `payloads`, chained to the journal's entry before it, taken when
    the journal was durable through `durable_sequence` (whose hash is the journal's there unless given)."""
    sequence = len(payloads)
    with opened(folder) as journal:
        chained = entry_hash(journal.entry_hash_at(sequence - 1), sequence, payloads[-1])
        if durable_hash is None:
            durable_hash = chained if durable_sequence == sequence else journal.hash_through(durable_sequence)
    Snapshots(folder).write(sequence, chained, engine_through(payloads, sequence).snapshot(),
                            (durable_sequence, durable_hash))


@pytest.mark.parametrize("number_reused", [False, True], ids=["journal-ends-before-it", "another-batch-took-it"])
def test_a_snapshot_of_a_batch_that_never_committed_is_skipped(tmp_path, number_reused):
    """A snapshot forked after its batch was applied but before it was durable, then kill -9: the batch is lost, and
    after the restart the journal ends before it or another batch has its number. Recovery skips the snapshot, and
    verify takes it for a crash leftover."""
    payloads = build_journal(tmp_path)
    if number_reused:
        payloads.append(other_batch(BATCHES + 1))
        with opened(tmp_path) as journal:
            journal.append([(BATCHES + 1, payloads[-1])])
    snapshot_at(tmp_path, batch_payloads(BATCHES + 1), durable_sequence=BATCHES)
    engine, report = recover_folder(tmp_path)
    reason = "not in this journal (its batch never committed; another took its number)" if number_reused else \
        "ahead of the journal (its batch never committed)"
    assert report.skipped_snapshots == [f"snapshot {SNAPSHOT_NAME_AT(BATCHES + 1)}: {reason}"]
    head = BATCHES + number_reused
    assert (report.snapshot_sequence, engine.sequence) == (0, head)
    assert engine.state_hash() == engine_through(payloads, head).state_hash()
    assert run_verify(tmp_path).returncode == 0


@pytest.mark.parametrize("durable", [(BATCHES + 1, None), (BATCHES, bytes(HASH_BYTES))],
                         ids=["its-batch-was-durable", "entries-it-knew-durable-differ"])
def test_a_snapshot_whose_durable_entries_the_journal_does_not_hold_fails_verify(tmp_path, durable):
    """Its batch was durable when it was taken, or the entries that were then differ from the journal's: a journal
    with another batch at its number is not its journal (or lost acknowledged entries), never a crash leftover."""
    build_journal(tmp_path)
    with opened(tmp_path) as journal:
        journal.append([(BATCHES + 1, other_batch(BATCHES + 1))])
    snapshot_at(tmp_path, batch_payloads(BATCHES + 1), *durable)
    _, report = recover_folder(tmp_path)
    assert report.skipped_snapshots == [f"snapshot {SNAPSHOT_NAME_AT(BATCHES + 1)}: not in this journal"]
    verified = run_verify(tmp_path)
    assert verified.returncode == 1 and "not in this journal" in verified.stdout, verified.stdout


@pytest.mark.parametrize("kept", [0, 3], ids=["journal-emptied", "journal-cut-short"])
def test_a_journal_that_ends_before_a_snapshot_was_durable_stops_recovery_and_verify(tmp_path, kept):
    """A snapshot remembers how far the journal was durable when it was taken: a journal that ends before that
    lost acknowledged entries, and nothing starts from it."""
    build_journal(tmp_path, snapshot_at=(6,))
    snapshot = Snapshots(tmp_path).path_for(6).read_bytes()
    shutil.rmtree(tmp_path / "journal")
    build_journal(tmp_path, count=kept)
    Snapshots(tmp_path).path_for(6).write_bytes(snapshot)
    with pytest.raises(CorruptionError, match="entries were lost"):
        recover_folder(tmp_path)
    verified = run_verify(tmp_path)
    assert verified.returncode == 1 and "entries were lost" in verified.stdout, verified.stdout


def test_verify_passes_a_folder_whose_snapshot_matches_the_replay(tmp_path):
    payloads = build_journal(tmp_path, snapshot_at=(5,))
    verify = run_verify(tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"ok batches={BATCHES} state_hash={engine_through(payloads, BATCHES).state_hash()}" in verify.stdout


def test_verify_fails_naming_a_damaged_snapshot(tmp_path):
    build_journal(tmp_path, snapshot_at=(5,))
    path = Snapshots(tmp_path).path_for(5)
    flip_every(path, needle(3))
    verify = run_verify(tmp_path)
    assert verify.returncode != 0
    assert f"FAILED snapshot {path.name}: checksum mismatch" in verify.stdout


# Pruning


def test_pruned_journal_recovers_from_the_snapshot_at_the_pruning_point(tmp_path):
    payloads = build_journal(tmp_path, snapshot_at=(5,))
    with opened(tmp_path) as journal:
        journal.prune_before(5)
    engine, report = recover_folder(tmp_path)
    assert (report.snapshot_sequence, report.replayed_batches) == (5, BATCHES - 5)
    assert engine.state_hash() == engine_through(payloads, BATCHES).state_hash()
    with opened(tmp_path) as journal:
        assert (journal.first_sequence(), journal.head_sequence) == (5, BATCHES)
        assert [entry.sequence for entry in journal.read(1, 100)] == list(range(5, BATCHES + 1))
        with pytest.raises(CorruptionError, match="pruned"):
            replay_from_scratch(journal)


@pytest.mark.parametrize("snapshot_at", [(), (3,)], ids=["no-snapshot", "snapshot-of-pruned-entry"])
def test_pruned_journal_without_a_covering_snapshot_refuses_to_recover(tmp_path, snapshot_at):
    build_journal(tmp_path, snapshot_at=snapshot_at)
    with opened(tmp_path) as journal:
        journal.prune_before(5)
    with pytest.raises(CorruptionError, match="no valid snapshot") as raised:
        recover_folder(tmp_path)
    assert raised.value.sequence == 5


# Results, map growth, replication, epoch


def test_truncate_after_removes_the_results_beside_the_entries(tmp_path):
    payloads = batch_payloads()
    with opened(tmp_path) as journal:
        journal.append(list(enumerate(payloads, 1)), [b"result-%d" % sequence for sequence in range(1, BATCHES + 1)])
        assert journal.truncate_after(5) == BATCHES - 5
    with opened(tmp_path) as journal:
        assert journal.head_sequence == 5
        assert [(entry.sequence, result) for entry, result in journal.read_results(1, 100)] == [
            (sequence, b"result-%d" % sequence) for sequence in range(1, 6)]
        assert journal.read_results(6, 100) == []
        journal.append([(6, payloads[5])])
        assert journal.read_results(6, 100) == []  # no result yet: readers wait for it
        journal.write_results([(6, b"result-6")])
        assert journal.read_results(6, 100)[0][1] == b"result-6"


def test_full_map_grows_instead_of_failing(tmp_path):
    payloads = [bytes([sequence]) * 4096 for sequence in range(1, 65)]  # 256 KiB against a 64 KiB map
    with opened(tmp_path, map_size_bytes=64 * 1024) as journal:
        journal.append(list(enumerate(payloads[:32], 1)))
        for sequence in range(33, 65):
            journal.append([(sequence, payloads[sequence - 1])])
    with opened(tmp_path) as journal:
        assert [entry.payload for entry in journal.scan(1, GENESIS_HASH)] == payloads


def appended(journal, first_sequence: int, records: list[bytes]) -> list[Entry]:
    """Records appended as replication does: checked against the hash the sender's chain ends at, then prepared."""
    entries = chained_entries(first_sequence, records, records[-1][:HASH_BYTES])
    journal.append_entries(entries)
    return entries


def test_appended_records_copy_another_journal_exactly(tmp_path):
    build_journal(tmp_path / "primary")
    with opened(tmp_path / "primary") as primary, opened(tmp_path / "replica") as replica:
        while replica.head_sequence < primary.head_sequence:
            start = replica.head_sequence + 1
            replica.write(appended(replica, start, primary.read_records(start, ENTRIES_PER_APPEND, 1 << 20)))
        assert replica.read(1, 100) == primary.read(1, 100)
        assert (replica.head_sequence, replica.head_hash) == (primary.head_sequence, primary.head_hash)


def forked_record() -> bytes:
    """A well-formed entry 2 whose previous hash is not entry 1's."""
    previous = b"\x01" * HASH_BYTES
    return Entry(2, entry_hash(previous, 2, b"fork"), previous, b"fork").record()


@pytest.mark.parametrize("first_sequence, bad_records", [
    pytest.param(3, lambda records: [records[2]], id="gap"),
    pytest.param(2, lambda records: [forked_record()], id="fork"),
])
def test_appending_what_does_not_extend_the_head_is_refused(tmp_path, first_sequence, bad_records):
    build_journal(tmp_path / "primary", count=3)
    with opened(tmp_path / "primary") as primary, opened(tmp_path / "replica") as replica:
        records = primary.read_records(1, 100, 1 << 20)
        replica.write(appended(replica, 1, records[:1]))
        with pytest.raises(CorruptionError):
            appended(replica, first_sequence, bad_records(records))
        assert replica.head_sequence == 1
        replica.write(appended(replica, 2, records[1:]))
        assert replica.head_hash == primary.head_hash


@pytest.mark.parametrize("bad_records", [
    pytest.param(lambda records: [flip_byte(records[1], -1)], id="flipped"),
    pytest.param(lambda records: [records[1][:HASH_BYTES]], id="truncated"),
    pytest.param(lambda records: [records[1], flip_byte(records[2], -1)], id="flipped-after-good"),
    pytest.param(lambda records: [records[2], records[1]], id="out-of-order"),
    pytest.param(lambda records: [records[1]], id="not-the-last-named"),
])
def test_only_the_chain_that_ends_at_the_hash_named_is_taken(tmp_path, bad_records):
    """Records damaged, reordered or other than those whose last hash the sender named (and its tag covers) are no
    proof of anything: refused (None)."""
    build_journal(tmp_path / "primary", count=3)
    with opened(tmp_path / "primary") as primary:
        records = primary.read_records(1, 100, 1 << 20)
    assert chained_entries(2, bad_records(records), records[2][:HASH_BYTES]) is None
    assert [entry.record() for entry in chained_entries(2, records[1:], records[2][:HASH_BYTES])] == records[1:]


def test_epoch_persists_across_reopen(tmp_path):
    with opened(tmp_path) as journal:
        assert journal.epoch == 0
        journal.epoch = 7
        assert journal.epoch == 7
    with opened(tmp_path) as journal:
        assert journal.epoch == 7


# The operator commands on a damaged folder: one line naming the folder and the damage, exit 1, nothing written

LMDB_PAGE_BYTES = 4096  # the OS page size LMDB used on the machines these tests run on
# A page's 16-byte header ends here; its nodes' offsets in the page (2 bytes each, little-endian) follow.
FIRST_NODE_POINTER = 16


def flip_in_lmdb_pages(folder: pathlib.Path, byte: int = FIRST_NODE_POINTER, marker: bytes = needle(BATCHES)) -> None:
    """Flip `byte` of every page holding `marker` (by default, the last entry): LMDB's own B-tree, not our record, is
    hurt.

    The first node pointer's low byte moves the node within its page (LMDB reads a bad node and says so); its high
    byte moves it tens of KiB on, past the file's end, where LMDB's C code dies of SIGBUS."""
    path = journal_file(folder)
    data = bytearray(path.read_bytes())
    pages = {offset // LMDB_PAGE_BYTES for offset in range(len(data)) if data.startswith(marker, offset)}
    assert pages
    for page in pages:
        data[page * LMDB_PAGE_BYTES + byte] ^= 0xFF
    path.write_bytes(bytes(data))


def crash_lmdb(folder: pathlib.Path) -> None:
    flip_in_lmdb_pages(folder, FIRST_NODE_POINTER + 1)


def empty_journal_folder(folder: pathlib.Path) -> None:
    for path in (folder / "journal").iterdir():
        path.unlink()


def foreign_lmdb(folder: pathlib.Path) -> None:
    """A valid LMDB file without the journal's tables."""
    empty_journal_folder(folder)
    lmdb.open(str(folder / "journal"), max_dbs=4).close()


DAMAGE = [
    pytest.param(lambda folder: flip_every(journal_file(folder), needle(4)), "journal entry 4: checksum mismatch",
                 id="entry"),
    pytest.param(flip_in_lmdb_pages, "LMDB file is damaged", id="lmdb-page"),
    pytest.param(crash_lmdb, "journal/data.mdb: reading it crashed LMDB (SIG", id="lmdb-crash"),
    pytest.param(lambda folder: os.truncate(journal_file(folder), 0), "data.mdb (0 bytes) is truncated", id="empty"),
    pytest.param(lambda folder: os.truncate(journal_file(folder), 8192), "data.mdb is truncated: 8192 bytes",
                 id="truncated"),
    pytest.param(empty_journal_folder, "data.mdb is missing", id="no-data-file"),
    pytest.param(foreign_lmdb, "the journal's tables are missing", id="no-tables"),
]


def journal_bytes(folder: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (folder / "journal").iterdir() if path.name != "lock.mdb"}


@pytest.mark.parametrize("command", ["verify", "replay"])
@pytest.mark.parametrize("damage, message", DAMAGE)
def test_verify_and_replay_name_the_damage_exit_1_and_write_nothing(tmp_path, command, damage, message):
    build_journal(tmp_path, snapshot_at=(5,))
    damage(tmp_path)
    before = journal_bytes(tmp_path)
    result = run_cli(command, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stdout + result.stderr and str(tmp_path) in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert journal_bytes(tmp_path) == before


def test_replay_of_a_pruned_journal_says_so(tmp_path):
    build_journal(tmp_path, snapshot_at=(5,))
    with opened(tmp_path) as journal:
        journal.prune_before(5)
    result = run_cli("replay", tmp_path)
    assert result.returncode == 1
    assert f"paygate replay: {tmp_path}: journal starts at entry 5: pruned" in result.stderr
    assert "Traceback" not in result.stderr


def test_lmdb_errors_on_a_damaged_page_are_corruption_naming_the_file_and_the_entries_read(tmp_path):
    build_journal(tmp_path)
    flip_in_lmdb_pages(tmp_path)
    with opened(tmp_path, readonly=True) as journal:
        with pytest.raises(CorruptionError, match=r"^journal/data.mdb, reading entries from 1 on: the LMDB file is "
                                                  r"damaged or unreadable \(CorruptedError: ") as raised:
            list(journal.scan(1, GENESIS_HASH))
    assert (raised.value.sequence, raised.value.damaged_record) == (1, False)
    with pytest.raises(CorruptionError, match="the LMDB file is damaged"):
        recover_folder(tmp_path)  # refused, not repaired: not a torn last entry
    with opened(tmp_path, readonly=True) as journal:
        assert journal.head_sequence == BATCHES


@pytest.mark.parametrize("damage, message", [
    pytest.param(crash_lmdb, "the shard at {folder} died of SIG", id="in-the-shard"),
    pytest.param(lambda folder: flip_in_lmdb_pages(folder, FIRST_NODE_POINTER + 1, b"entries"),
                 "{folder}: journal/data.mdb: reading it crashed LMDB (SIG", id="in-serve"),
])
def test_serve_on_lmdb_pages_that_crash_lmdb_says_so_in_one_line(tmp_path, damage, message):
    """The shard's recovery (or serve's own look at the journal's head, whose table names are damaged here) dies of a
    signal: serve names the shard's folder and the signal in one line, exit 1, no traceback."""
    folder = tmp_path / "data" / "shard-0"
    build_journal(folder)
    damage(folder)
    server = Server(tmp_path / "data")
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert server.process.wait(30) == 1
    lines = [line for line in str(failed.value).splitlines() if line.startswith("paygate serve:")]
    assert len(lines) == 1 and message.format(folder=folder) in lines[0], str(failed.value)
    assert "Traceback" not in str(failed.value)


# A byte flipped anywhere in LMDB's pages: verify and replay name the damage or find none, never die of a signal

FUZZ_BATCHES = 40  # enough entries for branch pages above their leaves
FUZZ_SEED = 20261203
# A page's header and first node pointers: what LMDB's C code follows without checking.
PAGE_HEAD_BYTES = 32
FUZZ_WORKERS = 2  # commands at a time: each keeps a CPU busy


def fuzz_offsets(path: pathlib.Path, count: int) -> list[int]:
    """About `count` offsets from page 2 on (0 and 1 are LMDB's meta pages, which check_data_file reads first): half in
    the head of a page, half anywhere."""
    chance = random.Random(FUZZ_SEED)
    pages = path.stat().st_size // LMDB_PAGE_BYTES
    heads = [chance.randrange(2, pages) * LMDB_PAGE_BYTES + chance.randrange(PAGE_HEAD_BYTES)
             for _ in range(count // 2)]
    anywhere = [chance.randrange(2 * LMDB_PAGE_BYTES, pages * LMDB_PAGE_BYTES) for _ in range(count - count // 2)]
    return sorted(set(heads + anywhere))


def run_on_flipped_copies(source: pathlib.Path, command: str, offsets: list[int]) -> list:
    """(offset, folder, result) of `paygate command` on a copy of `source` per offset, that byte of data.mdb flipped."""
    def run(offset: int):
        folder = source.with_name(f"flipped-{offset}")
        shutil.copytree(source, folder)
        path = journal_file(folder)
        path.write_bytes(flip_byte(path.read_bytes(), offset))
        return offset, folder, run_cli(command, folder)

    with concurrent.futures.ThreadPoolExecutor(FUZZ_WORKERS) as pool:
        return list(pool.map(run, offsets))


@pytest.mark.parametrize("command, count", [
    ("verify", 20),
    ("replay", 6),
    pytest.param("verify", 400, marks=pytest.mark.slow),
    pytest.param("replay", 150, marks=pytest.mark.slow),
])
def test_a_flipped_byte_in_lmdb_pages_is_named_in_one_line_or_harmless_never_a_signal(tmp_path, command, count):
    source = tmp_path / "source"
    build_journal(source, FUZZ_BATCHES, snapshot_at=(FUZZ_BATCHES // 2,))
    for offset, folder, result in run_on_flipped_copies(source, command, fuzz_offsets(journal_file(source), count)):
        output = result.stdout + result.stderr
        # A negative code: a signal ended the command.
        assert result.returncode in (0, 1), (offset, result.returncode, output)
        assert "Traceback" not in output, (offset, output)
        if result.returncode:
            assert len(output.splitlines()) == 1 and str(folder) in output, (offset, output)


@pytest.mark.parametrize("size", [0, 8192])
def test_a_shard_does_not_open_a_journal_file_cut_short(tmp_path, size):
    build_journal(tmp_path)
    with open(journal_file(tmp_path), "r+b") as file:
        file.truncate(size)
    with pytest.raises(CorruptionError, match="truncated"):
        Journal(tmp_path)
    assert journal_file(tmp_path).stat().st_size == size  # left as found, for an operator to look at


@pytest.mark.parametrize("durable, failed", [(BATCHES, False), (BATCHES + 1, True)])
def test_verify_judges_a_snapshot_ahead_of_the_journal_by_how_far_the_journal_was_durable(tmp_path, durable, failed):
    """Ahead of the journal, but taken while it was durable no further than its end: a crash leftover. Taken when
    the journal was durable further than its end: the journal lost entries."""
    payloads = build_journal(tmp_path)
    sequence = BATCHES + 3
    with opened(tmp_path) as journal:
        durable_hash = journal.hash_through(durable) or bytes(HASH_BYTES)  # none there when durable is past the end
    Snapshots(tmp_path).write(sequence, bytes(HASH_BYTES), engine_through(payloads, BATCHES).snapshot(),
                              (durable, durable_hash))
    verify = run_verify(tmp_path)
    assert verify.returncode == (1 if failed else 0), verify.stdout + verify.stderr
    assert ("entries were lost" in verify.stdout) == failed, verify.stdout
