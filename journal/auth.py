"""Proof that a message between paygate's own processes comes from one of them: an HMAC-SHA256 of the message's
bytes under a key kept in the data folder (0600, made on first start), put before the bytes and checked in constant
time before anything decodes them. A message that fails is dropped, counted, and logged at most once a second.

The key changes without a stop (`rotate_key_file`, `paygate rotate-internal-key`): the key file then lists both
keys, with when each starts sealing and until when it is accepted. Every process looks at its key file again at
most `RELOAD_S` after a change, so receivers accept the new key well before any sender seals with it
(`SWITCH_S` later); the old key is accepted for a grace period after that, then refused.
"""

import hashlib
import hmac
import logging
import os
import pathlib
import stat
import struct
import tempfile
import time

import msgspec

log = logging.getLogger("paygate.auth")
KEY_FILE = "internal.key"
# The data folder's other key files: merchants' derived secrets, and the key that seals their rotated ones.
GATEWAY_KEY_FILE = "gateway.key"
CREDENTIALS_KEY_FILE = "credentials.key"
KEY_BYTES = 32
TAG_BYTES = 32  # SHA-256
SHA256_BLOCK_BYTES = 64
HEAD_SIZE = struct.Struct(">I")  # the length of a message's head, where its tag covers the head alone
DROP_LOG_INTERVAL_S = 1.0
RELOAD_S = 1.0  # a process takes up a rewritten key file this soon
SWITCH_S = 3 * RELOAD_S  # from a new key's arrival to senders sealing with it: every receiver has it by then
DEFAULT_GRACE_S = 60.0  # the old key accepted after the switch: messages sealed just before, and their retries
MAX_RING_KEYS = 4
MAX_KEY_FILE_BYTES = 4096


class KeyFileError(Exception):
    """The key file is missing, of the wrong size, or readable by others; the message names it."""


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, its two padded keys hashed once: a message costs two copies of a hash
    state and its own bytes, not the key schedule and OpenSSL's digest lookup of each hmac.new or hmac.digest."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > SHA256_BLOCK_BYTES:
            key = hashlib.sha256(key).digest()
        padded = key.ljust(SHA256_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def _outer_of(self, message: bytes | memoryview):
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer

    def digest(self, message: bytes | memoryview) -> bytes:
        return self._outer_of(message).digest()

    def hexdigest(self, message: bytes | memoryview) -> str:
        return self._outer_of(message).hexdigest()


class KeyEntry(msgspec.Struct, kw_only=True):
    """One key of a key file being rotated: it seals from `seal_from` and is accepted until `accept_until` (wall-clock
    seconds; 0: always)."""

    secret: str  # hex
    seal_from: float = 0.0
    accept_until: float = 0.0

    def accepted_at(self, now: float) -> bool:
        return not self.accept_until or now < self.accept_until


class KeyEntries(msgspec.Struct):
    keys: list[KeyEntry]


_ring_encoder = msgspec.json.Encoder()
_ring_decoder = msgspec.json.Decoder(KeyEntries)


class MessageKeys:
    """The keys of one key file as they stand now: the one to seal with, and those accepted (it first). A ring read
    from a file looks at the file again at most once every RELOAD_S, and when its keys change roles."""

    def __init__(self, keys: list[KeyEntry], path: pathlib.Path | None = None, stamp: tuple = ()) -> None:
        self.path = path
        self.stamp = stamp  # the file's identity, size and time when read: a rewrite changes it
        self.keys = keys
        self.state: tuple[HmacSha256, list[HmacSha256]] = (HmacSha256(b""), [])  # (sealing, accepted), replaced whole
        self.check_at = 0.0  # monotonic
        self._settle(time.monotonic())

    @classmethod
    def fixed(cls, secret: bytes) -> "MessageKeys":
        if len(secret) != KEY_BYTES:
            raise KeyFileError(f"a message key has {KEY_BYTES} bytes, not {len(secret)}")
        return cls([KeyEntry(secret=secret.hex())])

    def current(self) -> tuple[HmacSha256, list[HmacSha256]]:
        """(the key to seal with, the keys to accept), as they stand now, each ready to tag."""
        now = time.monotonic()
        if now >= self.check_at:
            self._reload()
            self._settle(now)
        return self.state

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            keys, stamp = read_key_file(self.path)
        except (KeyFileError, OSError) as error:  # keep the keys in hand: a broken file must not stop messages
            log.warning("%s: keeping the message keys read before: %s", self.path, error)
            return
        if stamp != self.stamp:
            self.keys, self.stamp = keys, stamp
            log.info("%s: message keys read again (%d)", self.path, len(keys))

    def _settle(self, monotonic_now: float) -> None:
        now = time.time()
        accepted = [key for key in self.keys if key.accepted_at(now)] or self.keys[-1:]
        sealing = max((key for key in accepted if key.seal_from <= now), default=accepted[0],
                      key=lambda key: key.seal_from)
        macs = {key.secret: HmacSha256(bytes.fromhex(key.secret)) for key in [sealing, *accepted]}
        self.state = (macs[sealing.secret],
                      [macs[key.secret] for key in [sealing, *(key for key in accepted if key is not sealing)]])
        changes = [moment - now for key in self.keys for moment in (key.seal_from, key.accept_until) if moment > now]
        self.check_at = monotonic_now + min([RELOAD_S if self.path is not None else float("inf"), *changes])


class MessageKey:
    """Seals and opens messages under a key ring; each receiver holds its own MessageKey, so its drops are its own."""

    def __init__(self, secret: bytes | MessageKeys, receiver: str = "") -> None:
        self._ring = secret if isinstance(secret, MessageKeys) else MessageKeys.fixed(secret)
        self.receiver = receiver
        self.dropped = 0
        self._logged_at = -DROP_LOG_INTERVAL_S
        self._dropped_at_log = 0

    def for_receiver(self, receiver: str) -> "MessageKey":
        """The same keys with a drop count of its own."""
        return MessageKey(self._ring, receiver)

    def seal(self, body: bytes) -> bytes:
        return self._ring.current()[0].digest(body) + body

    def open(self, message: bytes) -> memoryview | None:
        """The body of a message whose tag proves one of the accepted keys (a view of `message`: a batch's megabyte
        is not copied); None (dropped, counted) otherwise."""
        view = memoryview(message)
        if len(view) >= TAG_BYTES and self._proven(view[:TAG_BYTES], view[TAG_BYTES:]):
            return view[TAG_BYTES:]
        self.drop()
        return None

    def seal_head(self, head: bytes, rest: list[bytes]) -> bytes:
        """A message whose tag covers its head alone, for a rest that the head binds by a hash its receiver checks
        anyway (a replication message's records, by the hash their chain ends at): the rest is hashed once, not
        once more for the tag."""
        framed = HEAD_SIZE.pack(len(head)) + head
        return b"".join([self._ring.current()[0].digest(framed), framed, *rest])

    def open_head(self, message: bytes) -> tuple[memoryview, memoryview] | None:
        """The head and the rest of a message from `seal_head` whose tag proves one of the accepted keys (views, not
        copies); None (dropped, counted) otherwise. The receiver drops the message (`drop`) if the rest is not what
        the head binds."""
        view = memoryview(message)
        start = TAG_BYTES + HEAD_SIZE.size
        if len(view) >= start:
            end = start + HEAD_SIZE.unpack_from(view, TAG_BYTES)[0]
            if end <= len(view) and self._proven(view[:TAG_BYTES], view[TAG_BYTES:end]):
                return view[start:end], view[end:]
        self.drop()
        return None

    def _proven(self, tag: memoryview, tagged: memoryview) -> bool:
        return any(hmac.compare_digest(tag, mac.digest(tagged)) for mac in self._ring.current()[1])

    def drop(self) -> None:
        """Count a message without the key's proof, and log the count at most once a second."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._logged_at >= DROP_LOG_INTERVAL_S:
            log.warning("%s: %d message(s) without the data folder's key dropped", self.receiver or "a socket",
                        self.dropped - self._dropped_at_log)
            self._logged_at = now
            self._dropped_at_log = self.dropped

    def __repr__(self) -> str:  # never the secret, in a log line or a traceback
        return f"MessageKey({self.receiver!r})"


def key_path(data: pathlib.Path) -> pathlib.Path:
    return data / KEY_FILE


def create_file_once(path: pathlib.Path, data: bytes) -> bool:
    """Writes `data` to a new 0600 file at `path`, whole or not at all; False when the file already exists (another
    process won: racing processes all end up reading one complete file)."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = _written_beside(path, data)
    try:
        os.link(temporary, path)  # atomic and never overwrites
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)


def replace_file(path: pathlib.Path, data: bytes) -> None:
    """`data` in place of `path`'s content, all at once for every reader, 0600, durable when this returns."""
    temporary = _written_beside(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _written_beside(path: pathlib.Path, data: bytes) -> str:
    """A new 0600 file in `path`'s folder holding `data`, on disk: its name."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp makes it 0600
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def read_or_create_key(path: pathlib.Path, size: int) -> bytes:
    """The bytes of a key file, made (`size` random bytes, 0600) by whichever process reads it first."""
    create_file_once(path, os.urandom(size))
    return path.read_bytes()


def ensure_key_file(path: pathlib.Path) -> None:
    """Creates the key file (0600) unless it exists."""
    create_file_once(path, os.urandom(KEY_BYTES))


def read_key_file(path: str | os.PathLike) -> tuple[list[KeyEntry], tuple]:
    """The keys in `path` (32 bytes: one key, always; else a ring being rotated) and the file's stamp; refused when
    others may read it or it holds no key."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read the message key ({error.strerror})") from None
    try:
        status = os.fstat(descriptor)
        if stat.S_IMODE(status.st_mode) & 0o077:
            raise KeyFileError(f"{path}: the message key is readable by others (mode {stat.S_IMODE(status.st_mode):o})")
        data = os.read(descriptor, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(descriptor)
    stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
    if len(data) == KEY_BYTES:
        return [KeyEntry(secret=data.hex())], stamp
    try:
        keys = _ring_decoder.decode(data).keys
        valid = 0 < len(keys) <= MAX_RING_KEYS and all(len(bytes.fromhex(key.secret)) == KEY_BYTES for key in keys)
    except (msgspec.DecodeError, ValueError):
        valid = False
    if not valid:
        raise KeyFileError(f"{path}: not a message key ({len(data)} bytes, neither {KEY_BYTES} nor a key ring)")
    return keys, stamp


def load_key(path: str | os.PathLike, receiver: str = "") -> MessageKey:
    """The keys in `path`, looked at again as the file changes; refused when others may read it or it is no key."""
    keys, stamp = read_key_file(path)
    return MessageKey(MessageKeys(keys, pathlib.Path(path), stamp), receiver)


def rotate_key_file(path: pathlib.Path, grace_s: float = DEFAULT_GRACE_S) -> tuple[float, float]:
    """Adds a new key to the key file: accepted at once, sealing from SWITCH_S on; the old key accepted `grace_s`
    after that, then refused. Returns both moments (wall-clock seconds). Refused while a rotation is under way."""
    if grace_s < 0:
        raise KeyFileError(f"the grace period cannot be negative ({grace_s:g} s)")
    keys, _ = read_key_file(path)
    now = time.time()
    live = [key for key in keys if key.accepted_at(now)]
    if len(live) != 1 or live[0].seal_from > now:
        ends = max((key.accept_until for key in live), default=now)
        raise KeyFileError(f"{path}: a rotation is under way: its old key is accepted until "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ends))}; rotate again after that")
    switch_at = now + SWITCH_S
    refused_at = switch_at + grace_s
    old = KeyEntry(secret=live[0].secret, accept_until=refused_at)
    new = KeyEntry(secret=os.urandom(KEY_BYTES).hex(), seal_from=switch_at)
    replace_file(path, _ring_encoder.encode(KeyEntries([old, new])))
    return switch_at, refused_at
