"""The LMDB write-ahead journal and the snapshot files beside it.

Journal entries are keyed by sequence number (big-endian, so LMDB keeps them in
order and appends cheaply). Each value is `hash | previous hash | payload`,
where hash = BLAKE2b-256(previous hash | key | payload): one digest is both the
entry's checksum and a link in the hash chain. One `append` is one write
transaction and one fsync, whatever the number of entries in it.
"""

import contextlib
import gc
import hashlib
import multiprocessing
import os
import pathlib
import signal
import struct

import lmdb
import msgspec

from engine.check import check

HASH_BYTES = 32
GENESIS_HASH = bytes(HASH_BYTES)
HEADER_BYTES = 2 * HASH_BYTES
KEY = struct.Struct(">Q")
# A sparse file: the map only costs disk as it fills. Grown by doubling when full.
DEFAULT_MAP_SIZE_BYTES = 1 << 34
MAX_DATABASES = 4
SNAPSHOT_MAGIC = b"PGSNAP3\n"
# magic, sequence, the journal's durable head when it was taken, journal entry hash, the durable head's entry hash,
# checksum
SNAPSHOT_HEADER = struct.Struct(">8sQQ32s32s32s")
DATA_FILE = "data.mdb"
# LMDB 0.9's meta page (lmdb/mdb.c, 64-bit): a 16-byte page header, then MDB_meta's magic and version (offset 16),
# the page size (mm_dbs[FREE_DBI].md_pad, 40), the last page in use (mm_last_pg, 136) and the txn id (144).
LMDB_META = struct.Struct("<16xII16xI92xQQ")
LMDB_MAGIC = 0xBEEFC0DE
LMDB_META_PAGES = 2
# A child that answered, or died, is gone within this; one still there is killed.
CHILD_EXIT_TIMEOUT_S = 5.0
# Fork, not spawn: the child needs no imports and no pickled arguments, and starts in milliseconds.
FORK = multiprocessing.get_context("fork")


class CorruptionError(RuntimeError):
    """Stored data fails its checksum or its chain; the message names where."""

    def __init__(self, message: str, sequence: int = 0, damaged_record: bool = False) -> None:
        super().__init__(message)
        self.sequence = sequence
        # The record itself is cut short or fails its checksum (as a torn write would).
        self.damaged_record = damaged_record


class Entry(msgspec.Struct, frozen=True):
    sequence: int
    hash: bytes
    previous_hash: bytes
    payload: bytes

    def record(self) -> bytes:
        """The stored value; replicas receive exactly these bytes."""
        return self.hash + self.previous_hash + self.payload


def entry_hash(previous_hash: bytes, sequence: int, payload: bytes) -> bytes:
    digest = hashlib.blake2b(previous_hash, digest_size=HASH_BYTES)
    digest.update(KEY.pack(sequence))
    digest.update(payload)
    return digest.digest()


def unpack_sequence(stored: bytes) -> int:
    """A stored sequence number (a key, the pruning point, the epoch); a damaged LMDB page can give any length."""
    if len(stored) != KEY.size:
        raise CorruptionError(f"the journal holds a sequence number of {len(stored)} bytes: its LMDB file is damaged")
    return KEY.unpack(stored)[0]


def decode_record(sequence: int, record: bytes) -> Entry:
    """Split a stored value and check its checksum."""
    if len(record) < HEADER_BYTES:
        raise CorruptionError(f"journal entry {sequence}: truncated record of {len(record)} bytes", sequence, True)
    entry = Entry(sequence, bytes(record[:HASH_BYTES]), bytes(record[HASH_BYTES:HEADER_BYTES]), bytes(record[HEADER_BYTES:]))
    if entry_hash(entry.previous_hash, sequence, entry.payload) != entry.hash:
        raise CorruptionError(f"journal entry {sequence}: checksum mismatch", sequence, True)
    return entry


def chained_entries(first_sequence: int, records: list, last_hash: bytes) -> list[Entry] | None:
    """Records from another journal as entries, if every record's checksum holds, each follows the one before and the
    last one's hash is `last_hash`: the records a replication message's tag was made for (it covers that hash).
    None otherwise."""
    entries = []
    previous_hash = None
    for offset, record in enumerate(records):
        try:
            entry = decode_record(first_sequence + offset, record)
        except CorruptionError:
            return None
        if previous_hash is not None and entry.previous_hash != previous_hash:
            return None
        previous_hash = entry.hash
        entries.append(entry)
    return entries if entries and previous_hash == last_hash else None


class Journal:
    """Append-only, hash-chained entries in LMDB; opened once per process."""

    def __init__(self, folder: pathlib.Path, map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES, readonly: bool = False) -> None:
        """`readonly` (verify, replay) never creates or changes a file but LMDB's reader table (lock.mdb)."""
        self.data_file = folder / "journal" / DATA_FILE
        if readonly or self.data_file.exists():  # a shard too must not start on a file cut short (or map past its end)
            check_data_file(self.data_file)
        if not readonly:
            folder.mkdir(parents=True, exist_ok=True)
        with self._lmdb_damage_named():
            self.environment = lmdb.open(
                str(folder / "journal"),
                map_size=map_size_bytes,
                max_dbs=MAX_DATABASES,
                sync=True,
                metasync=True,
                writemap=False,
                readahead=False,
                readonly=readonly,
                create=not readonly,
            )
        try:
            self.entries, self.meta, self.results = self._open_tables(readonly)
            self._reset_heads()
        except CorruptionError:
            self.environment.close()  # LMDB must not be opened twice in one process: leave nothing open
            raise

    def _open_tables(self, readonly: bool) -> tuple:
        with self._lmdb_damage_named():
            try:
                return tuple(self.environment.open_db(name, create=not readonly)
                             for name in (b"entries", b"meta", b"results"))
            except lmdb.NotFoundError:
                raise CorruptionError("the journal's tables are missing: damaged or not a journal") from None

    @contextlib.contextmanager
    def _lmdb_damage_named(self, sequence: int = 0):
        """LMDB's own errors (a damaged page, a page not found) become one CorruptionError naming the file, and the
        entries read when `sequence` is known."""
        try:
            yield
        except lmdb.Error as error:
            reading = f", reading entries from {sequence} on" if sequence else ""
            raise CorruptionError(f"{name_data_file(self.data_file)}{reading}: the LMDB file is damaged or unreadable "
                                  f"({type(error).__name__}: {error})", sequence) from None

    @contextlib.contextmanager
    def _reading(self, database=None, sequence: int = 0):
        """A read transaction whose LMDB errors are named as damage (see _lmdb_damage_named)."""
        with self._lmdb_damage_named(sequence), self.environment.begin(db=database) as transaction:
            yield transaction

    def _reset_heads(self) -> None:
        # head: durable on disk; prepared: chained in memory, possibly not yet written.
        self.head_sequence, self.head_hash = self._read_head()
        self.prepared_sequence, self.prepared_hash = self.head_sequence, self.head_hash

    def close(self) -> None:
        self.environment.close()

    def _read_head(self) -> tuple[int, bytes]:
        with self._reading(self.entries) as transaction:
            cursor = transaction.cursor()
            if not cursor.last():
                return self.first_sequence() - 1, self._pruned_hash(transaction)
            sequence = unpack_sequence(cursor.key())
            return sequence, bytes(cursor.value()[:HASH_BYTES])

    def _pruned_hash(self, transaction) -> bytes:
        value = transaction.get(b"pruned_hash", db=self.meta)
        return bytes(value) if value else GENESIS_HASH

    def first_sequence(self) -> int:
        """The lowest sequence the journal can still serve (1 unless pruned)."""
        value = self.get_meta(b"first_sequence")
        return unpack_sequence(value) if value else 1

    # Writing

    def prepare(self, sequence: int, payload: bytes) -> Entry:
        """Chain the next entry in memory; `write` makes it durable later, in order."""
        check(sequence == self.prepared_sequence + 1, f"entry {sequence} prepared after {self.prepared_sequence}")
        entry = Entry(sequence, entry_hash(self.prepared_hash, sequence, payload), self.prepared_hash, payload)
        self.prepared_sequence = sequence
        self.prepared_hash = entry.hash
        return entry

    def append(self, payloads: list[tuple[int, bytes]], results: list[bytes] | None = None) -> list[Entry]:
        """Prepare and write consecutive (sequence, payload) pairs, and each one's result if given, in one transaction."""
        entries = [self.prepare(sequence, payload) for sequence, payload in payloads]
        self.write(entries, [] if results is None else list(zip((entry.sequence for entry in entries), results, strict=True)))
        return entries

    def append_entries(self, entries: list[Entry]) -> None:
        """Prepare entries exactly as another journal holds them (replication), checked by `chained_entries`;
        CorruptionError, changing nothing, unless they follow this journal's head."""
        first = entries[0]
        if first.sequence != self.prepared_sequence + 1 or first.previous_hash != self.prepared_hash:
            raise CorruptionError(f"journal entry {first.sequence}: does not follow this journal's head", first.sequence)
        self.prepared_sequence, self.prepared_hash = entries[-1].sequence, entries[-1].hash

    def write(self, entries: list[Entry], results: list[tuple[int, bytes]] = ()) -> None:
        """Store prepared entries and encoded results (of these entries or earlier ones) in one transaction and one fsync."""
        if not entries and not results:
            return
        check(not entries or entries[0].sequence == self.head_sequence + 1,
              f"entries written from {entries[0].sequence if entries else 0} after {self.head_sequence}")
        last = entries[-1].sequence if entries else self.head_sequence
        check(all(sequence <= last for sequence, _ in results), f"a result past entry {last}")
        while True:
            try:
                with self.environment.begin(write=True, db=self.entries) as transaction:
                    for entry in entries:
                        appended = transaction.put(KEY.pack(entry.sequence), entry.record(), append=True)
                        check(appended, f"journal entry {entry.sequence} is there already")
                    for sequence, result in results:
                        transaction.put(KEY.pack(sequence), result, db=self.results)
                break
            except lmdb.MapFullError:
                self._grow()
        if entries:
            self.head_sequence = entries[-1].sequence
            self.head_hash = entries[-1].hash

    def write_results(self, results: list[tuple[int, bytes]]) -> None:
        """Store the encoded results of entries already written (a replica applies after it acknowledges)."""
        self.write([], results)

    def last_result_sequence(self) -> int:
        """The highest entry with a stored result, 0 if none: results are written in order, so all below it have one."""
        with self._reading(self.results) as transaction:
            cursor = transaction.cursor()
            return unpack_sequence(cursor.key()) if cursor.last() else 0

    def has_result(self, sequence: int) -> bool:
        with self._reading(self.results, sequence) as transaction:
            return transaction.get(KEY.pack(sequence)) is not None

    def _grow(self) -> None:
        self.environment.set_mapsize(self.environment.info()["map_size"] * 2)

    def truncate_after(self, sequence: int) -> int:
        """Drop every entry above `sequence` (a torn tail); returns how many went."""
        dropped = 0
        with self.environment.begin(write=True) as transaction:
            for database in (self.entries, self.results):
                cursor = transaction.cursor(db=database)
                if cursor.set_range(KEY.pack(sequence + 1)):
                    while cursor.delete():
                        dropped += database is self.entries
        self._reset_heads()
        return dropped

    def prune_before(self, sequence: int) -> None:
        """Delete entries below `sequence`; the chain restarts from the last deleted hash."""
        with self.environment.begin(write=True) as transaction:
            cursor = transaction.cursor(db=self.entries)
            last_hash = None
            while cursor.first() and unpack_sequence(cursor.key()) < sequence:
                last_hash = bytes(cursor.value()[:HASH_BYTES])
                transaction.delete(cursor.key(), db=self.results)
                cursor.delete()
            if last_hash is not None:
                transaction.put(b"pruned_hash", last_hash, db=self.meta)
                transaction.put(b"first_sequence", KEY.pack(sequence), db=self.meta)

    # Reading

    def read(self, start_sequence: int, limit: int) -> list[Entry]:
        """Up to `limit` checked entries from `start_sequence` on."""
        return [decode_record(sequence, record) for sequence, record in self._raw(start_sequence, limit)]

    def read_records(self, start_sequence: int, limit: int, max_bytes: int) -> list[bytes]:
        """Stored values as they are, for replication, bounded in count and size."""
        return [record for _, record in self._raw(start_sequence, limit, max_bytes)]

    def _raw(self, start_sequence: int, limit: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        check(limit > 0, "a read of journal entries needs a limit above zero")
        records = []
        size = 0
        with self._reading(self.entries, start_sequence) as transaction:
            cursor = transaction.cursor()
            if not cursor.set_range(KEY.pack(start_sequence)):
                return records
            for key, value in cursor:
                if max_bytes is not None and records and size + len(value) > max_bytes:
                    break
                records.append((unpack_sequence(key), value))
                size += len(value)
                if len(records) == limit:
                    break
        return records

    def scan(self, start_sequence: int, previous_hash: bytes, chunk: int = 256):
        """Yield checked entries from `start_sequence`, following the hash chain.

        Raises CorruptionError naming the first entry whose checksum or link is
        wrong, or a gap in the sequence numbers.
        """
        expected = start_sequence
        while True:
            records = self._raw(expected, chunk)
            if not records:
                return
            # Checked one at a time, so every good entry before a damaged one is yielded first.
            for sequence, record in records:
                entry = decode_record(sequence, record)
                if entry.sequence != expected:
                    raise CorruptionError(f"journal entry {expected}: missing (next is {entry.sequence})", expected)
                if entry.previous_hash != previous_hash:
                    raise CorruptionError(f"journal entry {entry.sequence}: hash chain broken", entry.sequence)
                yield entry
                previous_hash = entry.hash
                expected += 1

    def check_through(self, sequence: int) -> None:
        """Check every entry from the first kept through `sequence` (checksums and links), applying nothing:
        CorruptionError names the first damaged one."""
        first = self.first_sequence()
        if sequence < first:
            return
        with self._reading() as transaction:
            previous_hash = self._pruned_hash(transaction)
        for entry in self.scan(first, previous_hash):
            if entry.sequence >= sequence:
                return

    def read_results(self, start_sequence: int, limit: int) -> list[tuple[Entry, bytes]]:
        """Up to `limit` checked entries from `start_sequence` on, each with its encoded result."""
        pairs = []
        with self._reading(sequence=start_sequence) as transaction:
            cursor = transaction.cursor(db=self.entries)
            if not cursor.set_range(KEY.pack(start_sequence)):
                return pairs
            for key, value in cursor:
                result = transaction.get(key, db=self.results)
                if result is None:
                    break  # a replica has not applied it yet
                pairs.append((decode_record(unpack_sequence(key), value), bytes(result)))
                if len(pairs) == limit:
                    break
        return pairs

    def entry_hash_at(self, sequence: int) -> bytes | None:
        with self._reading(self.entries, sequence) as transaction:
            value = transaction.get(KEY.pack(sequence))
            return bytes(value[:HASH_BYTES]) if value is not None else None

    def hash_through(self, sequence: int) -> bytes | None:
        """The chain's hash through entry `sequence` (GENESIS_HASH through none); None if the journal lacks it."""
        return self.entry_hash_at(sequence) if sequence else GENESIS_HASH

    # Metadata (epoch, pruning point)

    def get_meta(self, key: bytes) -> bytes | None:
        with self._reading(self.meta) as transaction:
            value = transaction.get(key)
            return bytes(value) if value is not None else None

    def set_meta(self, key: bytes, value: bytes) -> None:
        with self.environment.begin(write=True, db=self.meta) as transaction:
            transaction.put(key, value)

    @property
    def epoch(self) -> int:
        value = self.get_meta(b"epoch")
        return unpack_sequence(value) if value else 0

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_meta(b"epoch", KEY.pack(epoch))


def read_in_child(folder: pathlib.Path, timeout_s: float, read, *args, readonly: bool = False):
    """`read(journal, *args)` on the folder's journal in a forked child; returns what it returns, raises what it raises.

    LMDB's C code reading a damaged page can die of SIGSEGV or SIGBUS: then only the child dies, and that is a
    CorruptionError naming the file. A child still reading after `timeout_s` is killed (TimeoutError).
    """
    name = name_data_file(folder / "journal" / DATA_FILE)
    receiver, sender = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_answer, args=(sender, folder, readonly, read, args), daemon=True)
    # The child must never free what it inherited: a pynng socket closed in a forked child makes nng panic.
    gc.freeze()
    try:
        child.start()
    finally:
        gc.unfreeze()
    sender.close()  # the child's end alone stays open: its death reads as the end of the pipe here
    try:
        if not receiver.poll(timeout_s):
            child.kill()
            raise TimeoutError(f"{name}: still reading it after {timeout_s:g} s; stopped")
        returned, value = receiver.recv()
    except EOFError:
        child.join(CHILD_EXIT_TIMEOUT_S)
        if child.exitcode is not None and child.exitcode < 0:
            raise CorruptionError(f"{name}: reading it crashed LMDB ({signal_name(-child.exitcode)}): its pages are "
                                  "damaged; restore the folder from a replica or a backup") from None
        raise ChildProcessError(f"{name}: the process reading it ended without an answer "
                                f"(exit code {child.exitcode})") from None
    finally:
        receiver.close()
        child.join(CHILD_EXIT_TIMEOUT_S)
        child.kill()  # a no-op once it has exited
        child.join()
    if returned:
        return value
    raise value


def _answer(sender, folder: pathlib.Path, readonly: bool, read, args: tuple) -> None:
    try:
        with contextlib.closing(Journal(folder, readonly=readonly)) as journal:
            answer = (True, read(journal, *args))
    except BaseException as error:  # raised again in the parent, as if no child had run
        answer = (False, error)
    sender.send(answer)


def signal_name(number: int) -> str:
    """A signal's name (SIGBUS); a real-time signal, which has none, by its number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def check_data_file(path: pathlib.Path) -> None:
    """Refuse a data.mdb shorter than its meta pages say: LMDB maps it whole and would die of SIGBUS past its end."""
    name = name_data_file(path)
    try:
        size = path.stat().st_size
        metas = _lmdb_metas(path)
    except FileNotFoundError:
        raise CorruptionError(f"{name} is missing: the journal is gone") from None
    if len(metas) < LMDB_META_PAGES or any(magic != LMDB_MAGIC for magic, *_ in metas):
        raise CorruptionError(f"{name} ({size} bytes) is truncated or not an LMDB file")
    _, _, page_size, last_page, _ = max(metas, key=lambda meta: meta[4])  # LMDB reads the newer meta
    if page_size < LMDB_META.size or page_size & (page_size - 1):
        raise CorruptionError(f"{name}: its meta page is damaged (page size {page_size})")
    if size < (last_page + 1) * page_size:
        raise CorruptionError(f"{name} is truncated: {size} bytes, its pages need {(last_page + 1) * page_size}")


def name_data_file(path: pathlib.Path) -> str:
    """How messages name a data.mdb: journal/data.mdb, beside the shard folder each message names first."""
    return f"{path.parent.name}/{path.name}"


def _lmdb_metas(path: pathlib.Path) -> list[tuple]:
    """LMDB's meta pages, as many as the file holds whole: the second starts one page (the first's page size) in."""
    metas = []
    with open(path, "rb") as file:
        for _ in range(LMDB_META_PAGES):
            data = file.read(LMDB_META.size)
            if len(data) < LMDB_META.size:
                break
            metas.append(LMDB_META.unpack(data))
            file.seek(metas[0][2])
    return metas


class SnapshotInfo(msgspec.Struct, frozen=True):
    path: pathlib.Path
    sequence: int
    entry_hash: bytes
    # A snapshot may run a few batches ahead of the disk, never behind it: a journal that ends before this lost
    # entries it had made durable, and one whose entry there has another hash than durable_hash is not its journal.
    durable_sequence: int
    durable_hash: bytes


class Snapshots:
    """Engine snapshots as files `snapshot-<sequence>.bin`, written atomically."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder / "snapshots"

    def path_for(self, sequence: int) -> pathlib.Path:
        return self.folder / f"snapshot-{sequence:020d}.bin"

    def write(self, sequence: int, entry_hash: bytes, payload: bytes,
              durable: tuple[int, bytes] | None = None) -> pathlib.Path:
        """Write, fsync, then rename into place: a reader never sees half a snapshot. `durable` (default: `sequence`
        and `entry_hash`) is the journal's durable head when the engine was copied, and that entry's hash."""
        durable_sequence, durable_hash = (sequence, entry_hash) if durable is None else durable
        check(durable_sequence <= sequence, f"snapshot {sequence} durable through {durable_sequence}, later")
        path = self.path_for(sequence)
        self.folder.mkdir(parents=True, exist_ok=True)  # here, not on opening: verify only reads
        fields = (sequence, durable_sequence, entry_hash, durable_hash)
        header = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, *fields, _snapshot_hash(*fields, payload))
        write_atomically(path, header + payload)
        return path

    def paths(self) -> list[pathlib.Path]:
        """Snapshot files, newest first."""
        return sorted(self.folder.glob("snapshot-*.bin"), reverse=True)

    def load(self, path: pathlib.Path) -> tuple[SnapshotInfo, bytes]:
        """Read and check one snapshot; CorruptionError names the file if it is damaged."""
        data = path.read_bytes()
        if len(data) < SNAPSHOT_HEADER.size:
            raise CorruptionError(f"snapshot {path.name}: truncated")
        magic, *fields, payload_hash = SNAPSHOT_HEADER.unpack_from(data)
        payload = data[SNAPSHOT_HEADER.size :]
        if magic != SNAPSHOT_MAGIC or _snapshot_hash(*fields, payload) != payload_hash:
            raise CorruptionError(f"snapshot {path.name}: checksum mismatch")
        sequence, durable_sequence, journal_hash, durable_hash = fields
        return SnapshotInfo(path, sequence, journal_hash, durable_sequence, durable_hash), payload

    def remove_older_than(self, keep: int) -> list[pathlib.Path]:
        """Keep the newest `keep` snapshots; returns the paths removed."""
        removed = self.paths()[keep:]
        for path in removed:
            path.unlink()
        for temporary in self.folder.glob("*.tmp"):
            temporary.unlink()
        return removed


def _snapshot_hash(sequence: int, durable_sequence: int, entry_hash: bytes, durable_hash: bytes,
                   payload: bytes) -> bytes:
    """Covers the header's fields too, so a damaged sequence, durable head or hash is caught."""
    digest = hashlib.blake2b(KEY.pack(sequence) + KEY.pack(durable_sequence), digest_size=HASH_BYTES)
    digest.update(entry_hash)
    digest.update(durable_hash)
    digest.update(payload)
    return digest.digest()


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Readers see the old file or the new one, whole, even after a crash: a temporary file, fsynced, renamed over
    the old one, and the rename made durable too."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: pathlib.Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
